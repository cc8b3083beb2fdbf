#!/usr/bin/env python3
"""Train the embedded tiny GPT-2 (weights/tiny/) on CPU with torch.

Inputs: the corpus split of ``tools/build_corpus.py`` (``<work>/train_docs.jsonl``,
``<work>/heldout_docs.jsonl``) and the tokenizer of ``tools/train_tokenizer.py``
(``<out>/vocab.json``, ``<out>/merges.txt``).

Model: ``transformers.GPT2LMHeadModel`` (6 layers, 8 heads, d=256, context
256, vocab 8192, gelu_new, tied embeddings).  Data: every document tokenized,
prefixed with ``<|endoftext|>``, concatenated; random 256-token windows.
AdamW, linear warmup then cosine decay.  The schedule runs on wall-clock time
(``--minutes``): progress = elapsed / budget, so the run ends on time whatever
the machine's load; ``--steps`` gives a step-based schedule instead.

Outputs (``--out``): config.json, model.safetensors (float16), and
``<work>/metrics.json`` with losses, unigram/bigram baselines, throughput
and greedy samples.  Checkpoints go to ``<work>/ckpt.pt`` every few minutes;
``--resume`` continues from there.

Usage::

    python tools/train.py --bench 30                 # measure tokens/s per mode
    python tools/train.py --minutes 47 --seed 1234   # the real run
    python tools/train.py --eval-only                # re-evaluate weights in --out
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

EOT = "<|endoftext|>"
SEQ = 256
VOCAB = 8192


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# --------------------------------------------------------------------------- data

def token_stream(work, out, split):
    """uint16 array: every document of ``split`` as [EOT] + tokens, concatenated."""
    cache = os.path.join(work, f"{split}_tokens.npy")
    vocab_path = os.path.join(out, "vocab.json")
    if os.path.exists(cache) and os.path.getmtime(cache) > os.path.getmtime(vocab_path):
        return np.load(cache)
    from train_tokenizer import tiktoken_encoding

    enc = tiktoken_encoding(out)
    eot = enc.eot_token
    with open(os.path.join(work, f"{split}_docs.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    ids = []
    for toks in enc.encode_ordinary_batch(texts, num_threads=2):
        ids.append(eot)
        ids.extend(toks)
    arr = np.asarray(ids, dtype=np.uint16)
    np.save(cache, arr)
    return arr


# --------------------------------------------------------------------------- model

def make_model(seed, dropout=0.0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=256, n_layer=6, n_head=8,
        activation_function="gelu_new", resid_pdrop=dropout, embd_pdrop=dropout,
        attn_pdrop=dropout, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(cfg)
    return model


def param_groups(model, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(progress, step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(max(progress, 0.0), 1.0)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * p))


def get_batch(data, rng, batch):
    import torch

    ix = rng.integers(0, len(data) - SEQ - 1, size=batch)
    w = np.stack([data[i:i + SEQ + 1] for i in ix]).astype(np.int64)
    w = torch.from_numpy(w)
    return w[:, :-1], w[:, 1:]


def make_step_fn(model, opt, args):
    import torch
    import torch.nn.functional as F

    def loss_fn(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
            logits = model(input_ids=x).logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    if args.compile:
        loss_fn = torch.compile(loss_fn)

    def step(x, y, lr):
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    return step


# --------------------------------------------------------------------------- eval

def model_loss(model, data, max_windows=None, seed=0, batch=16):
    """Mean cross-entropy (nats/token, float32) over non-overlapping windows of
    SEQ+1 tokens (stride SEQ: each token after the first predicted once)."""
    import torch
    import torch.nn.functional as F

    starts = np.arange(0, len(data) - 1, SEQ)
    if max_windows is not None and len(starts) > max_windows:
        starts = np.sort(np.random.default_rng(seed).choice(starts, max_windows, replace=False))
    tot, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for b in range(0, len(starts), batch):
            ws = [data[s:s + SEQ + 1].astype(np.int64) for s in starts[b:b + batch]]
            full = [w for w in ws if len(w) == SEQ + 1]
            rest = [w for w in ws if len(w) != SEQ + 1]
            groups = ([np.stack(full)] if full else []) + [w[None] for w in rest if len(w) > 1]
            for g in groups:
                t = torch.from_numpy(g)
                logits = model(input_ids=t[:, :-1]).logits.float()
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), t[:, 1:].reshape(-1),
                                       reduction="sum")
                tot += loss.item()
                n += t[:, 1:].numel()
    return tot / n, n


def baselines(train, held):
    """Unigram / bigram baselines: counts from the train stream, scored on every
    held-out token after the first -- the same targets as model_loss(held)."""
    V = VOCAB
    tr_prev, tr_next = train[:-1].astype(np.int64), train[1:].astype(np.int64)
    he_prev, he_next = held[:-1].astype(np.int64), held[1:].astype(np.int64)
    # unigram, add-one
    uni = np.bincount(train.astype(np.int64), minlength=V).astype(np.float64)
    p_uni = (uni + 1) / (uni.sum() + V)
    unigram = float(-np.log(p_uni[he_next]).mean())
    # bigram counts
    keys = tr_prev * V + tr_next
    uk, uc = np.unique(keys, return_counts=True)
    big = dict(zip(uk.tolist(), uc.tolist()))
    ctx = np.bincount(tr_prev, minlength=V).astype(np.float64)
    hk = (he_prev * V + he_next).tolist()
    c_vw = np.array([big.get(k, 0) for k in hk], dtype=np.float64)
    c_v = ctx[he_prev]
    # add-one bigram
    addone = float(-np.log((c_vw + 1) / (c_v + V)).mean())
    # interpolated Kneser-Ney bigram (absolute discount 0.75), continuation
    # unigram interpolated with the uniform distribution (never zero)
    d = 0.75
    uk_prev, uk_next = uk // V, uk % V
    n1_follow = np.bincount(uk_prev, minlength=V).astype(np.float64)  # N1+(v .)
    n1_precede = np.bincount(uk_next, minlength=V).astype(np.float64)  # N1+(. w)
    p_cont = 0.99 * n1_precede / n1_precede.sum() + 0.01 / V
    pc = p_cont[he_next]
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = np.where(c_v > 0, np.maximum(c_vw - d, 0) / np.maximum(c_v, 1), 0.0)
        lam = np.where(c_v > 0, d * n1_follow[he_prev] / np.maximum(c_v, 1), 1.0)
    p_kn = disc + lam * pc
    kn = float(-np.log(p_kn).mean())
    return {"unigram_add1": unigram, "bigram_add1": addone, "bigram_kneser_ney": kn,
            "baseline_tokens": int(len(he_next))}


def greedy_samples(model_dir, prompts, n_new=40):
    import torch
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    out = {}
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=n_new, do_sample=False,
                               pad_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
        out[p] = tok.decode(g[0].tolist())
    return out


# --------------------------------------------------------------------------- main

def save_checkpoint(path, model, opt, step, elapsed, hist, rng):
    """Resumable state without pickles: tensors (model, optimizer moments, torch RNG) in path.safetensors,
    everything else (step, schedule, param groups, NumPy RNG) in path.json; both written then renamed."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    od = opt.state_dict()
    for idx, state in od["state"].items():
        for key, v in state.items():
            tensors[f"opt.{idx}.{key}"] = v.detach().reshape(-1).contiguous() if v.dim() == 0 else v.contiguous()
    tensors["torch_rng"] = torch.get_rng_state()
    save_file(tensors, path + ".safetensors.tmp")
    meta = {"step": step, "elapsed": elapsed, "hist": hist, "rng": rng.bit_generator.state,
            "param_groups": od["param_groups"],
            "scalar_state": [f"opt.{i}.{k}" for i, s in od["state"].items() for k, v in s.items() if v.dim() == 0]}
    with open(path + ".json.tmp", "w") as f:
        json.dump(meta, f)
    os.replace(path + ".safetensors.tmp", path + ".safetensors")
    os.replace(path + ".json.tmp", path + ".json")


def load_checkpoint(path):
    """The inverse of save_checkpoint."""
    from safetensors.torch import load_file

    tensors = load_file(path + ".safetensors")
    with open(path + ".json") as f:
        meta = json.load(f)
    scalar = set(meta["scalar_state"])
    state = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v.reshape(()) if key in scalar else v
    return {"model": {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
            "opt": {"state": state, "param_groups": meta["param_groups"]},
            "step": meta["step"], "elapsed": meta["elapsed"], "hist": meta["hist"],
            "rng": meta["rng"], "torch_rng": tensors["torch_rng"]}


def save_hf(model, out):
    """Save config.json + model.safetensors (float16) in HF layout."""
    import copy

    import torch

    m = copy.deepcopy(model).to(torch.float16)
    m.config.dtype = "float32"  # compute dtype to load with; weights are stored F16
    m.save_pretrained(out, safe_serialization=True)
    gc = os.path.join(out, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)


def bench(args, train):
    import torch

    results = {}
    modes = [("fp32", False, False), ("bf16", True, False), ("fp32+compile", False, True),
             ("bf16+compile", True, True)]
    for name, bf16, comp in modes:
        if args.modes and name not in args.modes.split(","):
            continue
        a = argparse.Namespace(**vars(args))
        a.bf16, a.compile = bf16, comp
        model = make_model(args.seed, args.dropout)
        model.train()
        opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.95))
        step = make_step_fn(model, opt, a)
        rng = np.random.default_rng(0)
        t0 = time.time()
        x, y = get_batch(train, rng, args.batch)
        step(x, y, 1e-4).item()  # warm-up / compile
        t_first = time.time() - t0
        n, t1 = 0, time.time()
        while time.time() - t1 < args.bench:
            x, y = get_batch(train, rng, args.batch)
            loss = step(x, y, 1e-4)
            n += 1
        loss.item()
        dt = time.time() - t1
        results[name] = {"tok_per_s": n * args.batch * SEQ / dt, "first_step_s": t_first, "steps": n}
        log(name, json.dumps(results[name]))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/tiny_work")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "weights", "tiny"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--minutes", type=float, default=47.0, help="wall-clock budget of the training loop")
    ap.add_argument("--steps", type=int, default=0, help="step budget instead of --minutes")
    ap.add_argument("--bf16", type=int, default=1)
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--bench", type=float, default=0.0, help="only measure tokens/s, N seconds per mode")
    ap.add_argument("--modes", default="")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--eval-windows", type=int, default=0, help="limit held-out eval windows (smoke tests)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    t_start = time.time()
    train = token_stream(args.work, args.out, "train")
    held = token_stream(args.work, args.out, "heldout")
    log(f"train tokens {len(train):,}  held-out tokens {len(held):,}")
    if args.bench:
        res = bench(args, train)
        with open(os.path.join(args.work, "bench.json"), "w") as f:
            json.dump(res, f, indent=1)
        return

    metrics_path = os.path.join(args.work, "metrics.json")
    metrics = {"command": " ".join([os.path.basename(sys.executable), "tools/train.py"] + sys.argv[1:]),
               "args": vars(args), "train_tokens": int(len(train)), "heldout_tokens": int(len(held)),
               "torch": torch.__version__}

    if not args.eval_only:
        model = make_model(args.seed, args.dropout)
        metrics["n_params"] = sum(p.numel() for p in model.parameters())
        model.train()
        opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
        rng = np.random.default_rng(args.seed)
        step_i, elapsed0, hist = 0, 0.0, []
        ckpt = os.path.join(args.work, "ckpt")  # ckpt.safetensors (tensors) + ckpt.json (the rest): no pickles
        if args.resume and os.path.exists(ckpt + ".json"):
            st = load_checkpoint(ckpt)
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            step_i, elapsed0, hist = st["step"], st["elapsed"], st["hist"]
            rng.bit_generator.state = st["rng"]
            torch.set_rng_state(st["torch_rng"])
            log(f"resumed at step {step_i}, {elapsed0 / 60:.1f} min done")
        step = make_step_fn(model, opt, args)
        budget = args.minutes * 60
        t0 = time.time() - elapsed0
        last_ckpt = time.time()
        tok_step = args.batch * SEQ
        run_loss, t_log, n_log = 0.0, time.time(), 0
        while True:
            elapsed = time.time() - t0
            progress = step_i / args.steps if args.steps else elapsed / budget
            if progress >= 1.0:
                break
            lr = lr_at(progress, step_i, args)
            x, y = get_batch(train, rng, args.batch)
            loss = step(x, y, lr)
            step_i += 1
            run_loss += loss.item()
            n_log += 1
            if step_i % 50 == 0:
                dt = time.time() - t_log
                hist.append([step_i, round(time.time() - t0, 1), run_loss / n_log, lr])
                log(f"step {step_i} loss {run_loss / n_log:.4f} lr {lr:.2e} "
                    f"{n_log * tok_step / dt:,.0f} tok/s  elapsed {(time.time() - t0) / 60:.1f} min "
                    f"progress {progress:.3f}")
                run_loss, t_log, n_log = 0.0, time.time(), 0
            if time.time() - last_ckpt > args.ckpt_minutes * 60:
                save_checkpoint(ckpt, model, opt, step_i, time.time() - t0, hist, rng)
                last_ckpt = time.time()
        train_s = time.time() - t0
        metrics.update({"steps": step_i, "tokens_seen": step_i * tok_step,
                        "train_loop_s": train_s, "tok_per_s": step_i * tok_step / train_s,
                        "epochs": step_i * tok_step / len(train), "hist": hist})
        save_checkpoint(ckpt, model, opt, step_i, train_s, hist, rng)
        save_hf(model, args.out)
        log(f"saved to {args.out}: {step_i} steps, {step_i * tok_step:,} tokens, {train_s / 60:.1f} min")
    elif os.path.exists(metrics_path):
        old = json.load(open(metrics_path))
        old.update({k: v for k, v in metrics.items() if k not in ("command", "args")})
        metrics = old

    # evaluation, float32, of the saved (float16) weights
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(args.out, dtype=torch.float32)
    held_loss, held_n = model_loss(model, held, max_windows=args.eval_windows or None)
    train_loss, train_n = model_loss(model, train, max_windows=args.eval_windows or 800, seed=0)
    metrics.update({"heldout_loss": held_loss, "heldout_eval_tokens": held_n,
                    "train_loss": train_loss, "train_eval_tokens": train_n})
    log(f"held-out loss {held_loss:.4f} ({held_n:,} tok)  train loss {train_loss:.4f} ({train_n:,} tok)")
    metrics["baselines"] = baselines(train, held)
    log("baselines", json.dumps(metrics["baselines"]))
    prompts = ["And God said", "It is a truth universally acknowledged", "To be, or not"]
    metrics["greedy"] = greedy_samples(args.out, prompts)
    for p, s in metrics["greedy"].items():
        log(repr(s))
    metrics["total_wall_s"] = time.time() - t_start
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=1)
    log(f"wrote {metrics_path}; total wall {metrics['total_wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
