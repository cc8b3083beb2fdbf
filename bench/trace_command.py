#!/usr/bin/env python3
"""The trace *command's* whole work, minitf vs TransformerLens 3.9 vs transformers + hooks, in one run.

    python bench/trace_command.py [--reps 3] [--folder CKPT] [--skip-cli] [--write]

A random GPT-2-small-shaped checkpoint (``common.make_checkpoint``), a layer-10 neuron (L10N1234), 32 prompts
× 64 tokens. The work timed is what ``cli.py trace --prompts FILE --json`` does once the model is loaded and
the neuron's card is known (the card — the neuron's promoted token etc. — is the same lookup for everyone and
is computed once beforehand):

* minitf: ``minitf.trace.trace`` (one run to the neuron's layer recording the effects' internals; every head's
  exact direct effect; active / differential heads; per prompt the top 5 heads with their source split;
  ablation of the top 5 heads ∪ the differential ones: Δpost and Δp(token)) and ``json.dumps`` of the result;
* TransformerLens, the paper's way: ``run_with_cache`` + ``stack_head_results`` + ``apply_ln_to_stack`` for the
  effects, each prompt's top 5 heads split over source positions from the cached pattern and v, and the same
  heads as minitf ablated with a hook zeroing ``hook_z`` (p(token) and the neuron's post read);
* transformers + hooks: one forward with hooks capturing each layer's z (c_proj's input), qkv (c_attn's
  output), LN-2's input and the neuron's activation, logits at the last position; the same effects, top heads
  and source split; the same heads ablated by a pre-hook zeroing that head's slice of c_proj's input.

Then the whole CLI process (``python cli.py trace --model CKPT --neuron L10N1234 --prompts FILE --json``):
wall time from exec to exit, with its neuron-table cache cold and warm.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository and tests/ on sys.path)
from common import ROOT, _cpu_snap  # noqa: E402

from minitf.model import Model  # noqa: E402
from minitf.names import Head, Neuron  # noqa: E402
from minitf.prompts import Prompt  # noqa: E402
from minitf.trace import NeuronCard, TraceOptions, card_record, trace  # noqa: E402

NEURON = Neuron(10, 1234)
SHAPE = (32, 64)
TOP = 5  # heads listed per prompt, and heads ablated (plus the differential ones)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def timed(fns: dict, reps: int) -> dict:
    """``reps`` rounds timing each fn in turn (warm them first); → name → (times, others' CPU %)."""
    out = {k: ([], []) for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            b0, m0 = _cpu_snap()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            b1, m1 = _cpu_snap()
            out[k][0].append(dt)
            out[k][1].append(max(0.0, (b1 - b0) - (m1 - m0)) / dt * 100)
            log(f"  {k}: {dt:.3f} s (others {out[k][1][-1]:.0f} % CPU)")
    return out


# ---- the three implementations -------------------------------------------------------------------------
def minitf_command(model: Model, tokens: np.ndarray, card: NeuronCard):
    prompts = [Prompt(t.tolist()) for t in tokens]

    def go():
        result = trace(model, NEURON, prompts, TraceOptions(top_heads=TOP, ablate=TOP), card=card)
        json.dumps(result.to_json())
        return result

    return go


def tl_command(tl, tokens: np.ndarray, token: int, ablate: list[Head]):
    import torch

    L = NEURON.layer
    tt = torch.as_tensor(tokens)
    w_in = tl.blocks[L].mlp.W_in[:, NEURON.index].detach()  # [D] (folded, centred)
    last = tokens.shape[1] - 1

    def go():
        with torch.inference_mode():
            logits, cache = tl.run_with_cache(tt)
            stack = cache.stack_head_results(layer=L, pos_slice=-1)  # [L·H, B, D]
            stack = cache.apply_ln_to_stack(stack, layer=L, mlp_input=True, pos_slice=-1)
            effects = (stack @ w_in).T  # [B, L·H]
            base_p = logits[:, -1].softmax(-1)[:, token]  # [B]
            base_post = cache[f"blocks.{L}.mlp.hook_post"][:, -1, NEURON.index]  # [B]
            scale = cache[f"blocks.{L}.ln2.hook_scale"][:, -1, 0]  # [B]
            top = effects.argsort(1, descending=True)[:, :TOP]  # [B, TOP]
            for b in range(tokens.shape[0]):  # each listed head's term split over source positions
                for j in top[b].tolist():
                    k, h = divmod(j, tl.cfg.n_heads)
                    u = tl.blocks[k].attn.W_O[h] @ w_in  # [Dh]
                    by_source = cache["pattern", k][b, h, last] * (cache["v", k][b, :, h] @ u) / scale[b]  # [T]
                    by_source.topk(3)
            out = {}
            for head in ablate:
                def zero(z, hook, h=head.head):
                    z[:, :, h] = 0
                    return z
                post = {}

                def read_post(x, hook):
                    post["x"] = x[:, -1, NEURON.index]

                ablated = tl.run_with_hooks(tt, fwd_hooks=[(f"blocks.{head.layer}.attn.hook_z", zero),
                                                           (f"blocks.{L}.mlp.hook_post", read_post)])
                out[head] = ((base_post - post["x"]).numpy(), (base_p - ablated[:, -1].softmax(-1)[:, token]).numpy())
            return effects.numpy(), out

    return go


def hf_command(hf, tokens: np.ndarray, token: int, ablate: list[Head]):
    import torch
    import workloads as wl

    L = NEURON.layer
    c = hf.config
    H, D = c.n_head, c.n_embd
    Dh = D // H
    blocks = hf.transformer.h
    u = wl.hf_head_directions(hf, NEURON)  # [L+1, H, Dh]
    tt = torch.as_tensor(tokens)
    last = tokens.shape[1] - 1

    def forward(hooks):
        handles = [module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
                   for module, fn, pre in hooks]
        try:
            hidden = hf.transformer(tt, use_cache=False).last_hidden_state[:, -1]  # [B, D]
            return hf.lm_head(hidden).softmax(-1)[:, token]  # [B]
        finally:
            for h in handles:
                h.remove()

    def go():
        cap: dict = {}

        def keep(name, pre):
            return lambda m, a, *out: cap.__setitem__(name, a[0] if pre else out[0])

        hooks = [(blocks[k].attn.c_proj, keep(("z", k), True), True) for k in range(L + 1)]
        hooks += [(blocks[k].attn.c_attn, keep(("qkv", k), False), False) for k in range(L + 1)]
        hooks += [(blocks[L].ln_2, keep("x", True), True), (blocks[L].mlp.act, keep("post", False), False)]
        with torch.inference_mode():
            base_p = forward(hooks)
            base_post = cap["post"][:, -1, NEURON.index]  # [B]
            x = cap["x"][:, -1]  # [B, D]
            sigma = torch.sqrt(x.var(-1, unbiased=False) + c.layer_norm_epsilon)  # [B]
            z = torch.stack([cap["z", k][:, -1].view(-1, H, Dh) for k in range(L)], 1)  # [B, L, H, Dh]
            effects = torch.einsum("bkhd,khd->bkh", z, u[:L]).reshape(len(tokens), -1) / sigma[:, None]  # [B, L·H]
            top = effects.argsort(1, descending=True)[:, :TOP]
            for b in range(tokens.shape[0]):
                for j in top[b].tolist():
                    k, h = divmod(j, H)
                    q, kk, v = cap["qkv", k][b].view(-1, 3, H, Dh).unbind(1)  # [T, H, Dh] each
                    pattern = (kk[:, h] @ q[last, h] / Dh ** 0.5).softmax(0)  # [T] the last query's row
                    by_source = pattern * (v[:, h] @ u[k, h]) / sigma[b]  # [T]
                    by_source.topk(3)
            out = {}
            for head in ablate:
                def zero(m, a, h=head.head):
                    zz = a[0].clone()
                    zz[..., h * Dh:(h + 1) * Dh] = 0
                    return (zz,)
                p = forward([(blocks[head.layer].attn.c_proj, zero, True),
                             (blocks[L].mlp.act, keep("post", False), False)])
                out[head] = ((base_post - cap["post"][:, -1, NEURON.index]).numpy(), (base_p - p).numpy())
            return effects.numpy(), out

    return go


# ---- the CLI process -----------------------------------------------------------------------------------
def cli_wall(folder: Path, model: Model, tokens: np.ndarray, reps: int, tmp: Path) -> dict:
    prompt_file = tmp / "prompts.txt"
    # the same random tokens as text, one prompt a line (re-encoded they need not be 64 tokens each)
    prompt_file.write_text("\n".join(model.decode(t[1:]).replace("\n", " ") for t in tokens) + "\n")
    env = dict(os.environ, MINITF_CACHE_DIR=str(tmp / "cache"))
    cmd = [sys.executable, "cli.py", "trace", "--model", str(folder), "--neuron", str(NEURON), "--prompts",
           str(prompt_file), "--json"]
    times = []
    for i in range(reps + 1):  # the first with the neuron table's cache cold
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if p.returncode:
            raise SystemExit(f"cli.py trace failed: {p.stderr[-2000:]}")
        log(f"  cli.py trace ({'cold' if i == 0 else 'warm'} cache): {times[-1]:.2f} s")
    shown = ["python", "cli.py", "trace", "--model", "CKPT", "--neuron", str(NEURON), "--prompts", "FILE", "--json"]
    return {"cold": times[0], "warm": times[1:], "cmd": " ".join(shown)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--folder", type=Path, help="reuse this GPT-2-small-shaped checkpoint (with vocab.json, merges.txt)")
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--write", action="store_true", help=f"put the table into bench/RESULTS.md ({common.TRACE_SECTION!r})")
    args = ap.parse_args(argv)
    import shutil

    import torch
    import workloads as wl
    from minitf.neurons import neuron_card

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="minitf-trace-bench-"))
    try:
        folder = args.folder
        if folder is None:
            folder = tmp / "gpt2-small-random"
            log("writing the checkpoint …")
            common.make_checkpoint(folder)
        model = Model.load(folder)
        B, T = SHAPE
        tokens = np.random.default_rng(1).integers(0, model.cfg.d_vocab, (B, T))
        tokens[:, 0] = model.bos
        os.environ.setdefault("MINITF_CACHE_DIR", str(tmp / "cache-inproc"))
        card = card_record(neuron_card(model, NEURON), model.cfg.d_mlp)
        token = card.token.id
        ours = minitf_command(model, tokens, card)
        result = ours()
        ablated = [Head(h.layer, h.index) for h in result.heads if h.ablation]
        log(f"minitf ablates {len(ablated)} heads: {', '.join(map(str, ablated))}")
        hf = wl.load_transformers(folder)
        tl = wl.load_transformer_lens(hf)
        fns = {"minitf": ours, "transformers+hooks": hf_command(hf, tokens, token, ablated),
               "TransformerLens": tl_command(tl, tokens, token, ablated)}
        # agreement: transformers' z includes the value bias, as minitf's does (TransformerLens folds it away)
        _, hf_abl = fns["transformers+hooks"]()
        rec = {h["head"]: h["ablation"] for h in result["heads"] if h["ablation"]}
        dp = max(abs(rec[str(h)]["mean_dp"] - float(hf_abl[h][1].mean())) for h in ablated)
        dpost = max(abs(rec[str(h)]["mean_dpost"] - float(hf_abl[h][0].mean())) for h in ablated)
        scale_p = max(abs(rec[str(h)]["mean_dp"]) for h in ablated)
        scale_post = max(abs(rec[str(h)]["mean_dpost"]) for h in ablated)
        log(f"agreement with transformers: max |mean Δp diff| {dp:.1e} (of {scale_p:.1e}), "
            f"max |mean Δpost diff| {dpost:.1e} (of {scale_post:.1e})")
        ours()  # warm-ups (transformers was just run; TransformerLens on two prompts)
        tl_command(tl, tokens[:2], token, ablated[:1])()
        runs = timed(fns, args.reps)
        attribution = wl.minitf_trace(model, tokens, NEURON)  # bench/run.py's trace row
        attribution()
        attribution_only = timed({"minitf attribution only": attribution}, args.reps)
        cli = None if args.skip_cli else cli_wall(folder, model, tokens, max(2, args.reps - 1), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def s(x):
        return f"{min(x):.2f} s / {float(np.median(x)):.2f} s"

    mt = runs["minitf"][0]
    others = max(max(v[1]) for v in runs.values())
    lines = [common.TRACE_SECTION, "",
             f"`python bench/trace_command.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: what `cli.py trace --prompts FILE --json` does "
             f"once the model is loaded and the neuron's card known — {B} prompts × {T} tokens, {NEURON}, every "
             f"record the JSON carries, the source split of each prompt's top {TOP} heads, {len(ablated)} heads "
             f"ablated ({', '.join(map(str, ablated))}) — against TransformerLens 3.9 the paper's way and "
             f"transformers with hooks doing the same work (see the script's docstring), timed in turn, min / median "
             f"of {args.reps}; other processes used up to {others:.0f} % of a core meanwhile.", "",
             "| implementation | time min / median | its time over minitf's (min, median) |", "|---|---:|---:|"]
    for k, (ts, _) in runs.items():
        lines.append(f"| {k} | {s(ts)} | {min(ts) / min(mt):.1f}×, {np.median(ts) / np.median(mt):.1f}× |")
    lines.append(f"| minitf, attribution only (run to the neuron's layer + every head's direct effect: "
                 f"bench/run.py's trace row) | {s(attribution_only['minitf attribution only'][0])} | |")
    lines += ["", f"Agreement with transformers + hooks over the ablated heads: max |Δ mean Δpost| {dpost:.1e} "
              f"(of {scale_post:.1e}), max |Δ mean Δp| {dp:.1e} (of {scale_p:.1e})."]
    if cli:
        lines += ["", f"The whole CLI process, `{cli['cmd']}` (load, neuron card, trace, JSON): "
                  f"{cli['cold']:.2f} s with minitf's neuron-table cache cold (the card's layer scores computed), "
                  f"{s(cli['warm'])} warm."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        path = ROOT / "bench" / "RESULTS.md"
        path.write_text(common.splice_section(path.read_text(encoding="utf-8"), text), encoding="utf-8")
        log(f"wrote the section into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
