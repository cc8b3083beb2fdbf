#!/usr/bin/env python3
"""Throughput of ``minitf index``: tokens/s and the fraction of this machine's float32 GEMM rate it reaches.

    python bench/index_throughput.py                    # a GPT-2-small-shaped random model, 1 and 2 workers
    python bench/index_throughput.py --model tiny       # a real model folder (or name under weights/)
    python bench/index_throughput.py --docs 8 --layers 11 --workers 2

The corpus is synthetic English-like text, every document at least a full context long, so every batch
is [TOKENS_PER_BATCH / n_ctx, n_ctx]. FLOPs count what the forward pass computes on real tokens up to the
last indexed layer's activation (the index stops there; no logits):

    per layer and document of T tokens:  2·T·(3D² + D² + D·M + M·D) + 2·2·T²·D   (QKᵀ and pattern·V, T×T)
    the last layer drops its W_out:       − 2·T·M·D

The ceiling is the best of a few [4096, D] @ [D, M] float32 GEMMs with NumPy's default BLAS threads, measured
right before and right after each workload (the better of the two: the machine may be shared).

The peer does the same work the way a torch user would (``--no-torch`` skips it): transformers' GPT2Model
with the same weights, a forward hook on every layer's MLP activation (``h[l].mlp.act``) that counts the
positive positions and the histogram and merges each document's maximum into a running top-30 per neuron
with ``torch.topk`` (streaming), torch on 2 threads, the same documents in the same [4, 1024] batches.

Where the time goes (``--profile``): the forward pass, the per-batch statistics (histogram, per-document
maxima and their first positions, the top-k merge), and the rest (tokenizing, process start-up, moving
each shard's state to the parent, merging and checkpointing shards) as the build's time minus the two.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import minitf  # noqa: E402
from minitf import Model  # noqa: E402
from minitf.index.build import TOKENS_PER_BATCH, build_index, load_index  # noqa: E402
from minitf.load.weights import Config, expected_shapes  # noqa: E402

WORDS = ("the of and to in a is that for it as was with be by on not he I this are or his from at which but have an "
         "they you were her she there one all we their when been has who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now such like "
         "our over man me even most made after also did many before must through back years where much your way "
         "well down should because each just those people how too little state good very make world still own see "
         "men work long get here between both life being under never day same another know while last might us "
         "great old year off come since against go came right used take three light God earth waters heaven").split()


def random_gpt2_small(folder: Path, n_ctx: int, n_layer: int) -> Model:
    """GPT-2 small's shapes (D 768, 12 heads, M 3072, V 50257) with random weights, and GPT-2's tokenizer."""
    cfg = Config(n_layer=n_layer, n_head=12, d_model=768, n_ctx=n_ctx, d_mlp=3072, d_vocab=50257, eps=1e-5)
    rng = np.random.default_rng(0)
    weights = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            a = 1 + 0.1 * rng.standard_normal(shape, np.float32)
        elif name.endswith("bias"):
            a = 0.02 * rng.standard_normal(shape, np.float32)
        else:
            a = rng.standard_normal(shape, np.float32) * np.float32(1 / np.sqrt(shape[0]))
        weights[name] = a.astype(np.float32)
    shared = ROOT.parent / "shared" / "gpt2"
    source = shared if (shared / "vocab.json").exists() else ROOT / "tests" / "data" / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(source / name, folder / name)
    return Model(cfg, weights, folder)


def write_corpus(path: Path, model: Model, n_docs: int) -> None:
    rng = np.random.default_rng(1)
    docs = []
    for _ in range(n_docs):
        text = ""
        while len(model.encode(text)) < model.cfg.n_ctx + 8:
            text += " ".join(rng.choice(WORDS, 200)).capitalize() + ". "
        docs.append(text.strip())
    path.write_text("\n\n".join(docs) + "\n")


def forward_flops(cfg, lengths, last_layer: int) -> float:
    D, M = cfg.d_model, cfg.d_mlp
    total = 0.0
    for T in lengths:
        per_layer = 2.0 * T * (4 * D * D + 2 * D * M) + 4.0 * T * T * D
        total += (last_layer + 1) * per_layer - 2.0 * T * M * D
    return total


def gemm_rate(D: int, M: int, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((4096, D), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((D, M), dtype=np.float32)
    out = np.empty((4096, M), np.float32)
    np.matmul(a, b, out=out)
    best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    return 2.0 * 4096 * D * M / best


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def _blas_threads() -> int | None:
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                return int(getattr(lib, name)())
    return None


def worker_blas_threads() -> int | None:
    """BLAS threads in an index worker (minitf.index.shard.one_blas_thread, as its workers and Ray actors run)."""
    from minitf.index.shard import one_blas_thread

    with one_blas_thread():
        return _blas_threads()


def torch_peer(model: Model, corpus: Path, n_layer: int, threads: int = 2, k: int = 30) -> tuple[float, int]:
    """(seconds, tokens): GPT2Model + forward hooks on every MLP activation + streaming torch.topk merge."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from minitf.corpus import read_documents, tokenize_document

    torch.set_num_threads(threads)
    cfg = model.cfg
    hf = GPT2Model(GPT2Config(n_layer=n_layer, n_head=cfg.n_head, n_embd=cfg.d_model, n_positions=cfg.n_ctx,
                              vocab_size=cfg.d_vocab, n_inner=cfg.d_mlp, activation_function="gelu_new",
                              layer_norm_epsilon=cfg.eps, attn_implementation="eager")).eval()
    state = {name: torch.from_numpy(np.ascontiguousarray(w)) for name, w in model.w.items()
             if not name.startswith("lm_head")}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(m.endswith(("attn.bias", "masked_bias")) for m in missing), (missing, unexpected)
    docs = [tokenize_document(model, d.text, True) for d in read_documents(corpus)]
    edges = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    M = cfg.d_mlp
    top = {l: (torch.full((k, M), -float("inf")), torch.full((k, M), -1, dtype=torch.long)) for l in range(n_layer)}
    counts = {l: torch.zeros(len(edges), M, dtype=torch.long) for l in range(n_layer)}
    current = {}

    def hook(layer):
        def f(module, inputs, out):  # out [B, T, M]
            acts = out[:, 1:]  # BOS left out
            for i, e in enumerate(edges):
                counts[layer][i] += (acts > e).sum((0, 1))
            doc_max, _ = acts.max(1)  # [B, M]
            vals, docs_ = top[layer]
            cand = torch.cat([vals, doc_max])  # [k + B, M]
            ids = torch.cat([docs_, current["ids"][:, None].expand(-1, M)])
            best, where = torch.topk(cand, k, dim=0)
            top[layer] = (best, torch.gather(ids, 0, where))
        return f

    for l in range(n_layer):
        hf.h[l].mlp.act.register_forward_hook(hook(l))
    B = TOKENS_PER_BATCH // cfg.n_ctx
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(docs), B):
            batch = torch.tensor(docs[i:i + B])
            current["ids"] = torch.arange(i, i + len(batch))
            hf(batch)
    return time.perf_counter() - t, sum(len(d) for d in docs)


def profile(model: Model, corpus: Path, layers: list[int]) -> dict:
    """Seconds of the forward pass and of the statistics for the corpus's batches, on one BLAS thread."""
    import minitf.index.build as I
    import minitf.index.shard as S

    spec = I.ShardSpec(tuple(layers), 30, True, TOKENS_PER_BATCH)
    fwd = stats = 0.0
    real_update = S._update

    def timed_update(*args):
        nonlocal stats
        t = time.perf_counter()
        real_update(*args)
        stats += time.perf_counter() - t

    S._update = timed_update
    try:
        with S.one_blas_thread():
            t = time.perf_counter()
            for _, docs in I.iter_shards(corpus, None, I.SHARD_CHARS):
                I.index_shard(model, spec, docs)
            total = time.perf_counter() - t
    finally:
        S._update = real_update
    fwd = total - stats
    return {"seconds": total, "forward": fwd, "statistics": stats}


def bench_neurons(model: Model, tmp: Path, ceiling: float) -> dict:
    """``neurons.layer_scores`` (filter on) for every layer, uncached (memory and disk), vs the GEMM ceiling of
    its W_out W_U′ products: n_layer · 2·M·D·V FLOPs."""
    from minitf import neurons

    shutil.rmtree(tmp / "neurons-cache", ignore_errors=True)  # nothing cached on disk either
    os.environ["MINITF_CACHE_DIR"] = str(tmp / "neurons-cache")
    neurons._cache(model).allowed  # the token filter (the vocabulary tokenized) is built once per model
    cached = neurons._CACHE[model]
    t = time.perf_counter()
    for layer in range(model.cfg.n_layer):
        cached.layers.pop(layer, None)
        neurons.layer_scores(model, layer, filter=True)
    seconds = time.perf_counter() - t
    cfg = model.cfg
    flops = cfg.n_layer * 2.0 * cfg.d_mlp * cfg.d_model * cfg.d_vocab
    return {"seconds": round(seconds, 2), "gflop_per_s": round(flops / seconds / 1e9, 1),
            "fraction_of_ceiling": round(flops / seconds / ceiling, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model folder or name (default: a random GPT-2-small-shaped model)")
    ap.add_argument("--n-ctx", type=int, default=1024, help="context of the random model")
    ap.add_argument("--layers", type=int, default=None, help="index layers 0..LAYERS-1 (default: all)")
    ap.add_argument("--docs", type=int, default=16, help="documents (each a full context)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers + hooks + torch.topk peer")
    ap.add_argument("--no-neurons", action="store_true", help="skip timing neurons.layer_scores")
    ap.add_argument("--profile", action="store_true", help="also split one worker's time: forward vs statistics")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="minitf-bench-"))
    try:
        t = time.perf_counter()
        if args.model:
            model = minitf.load(args.model)
        else:
            model = random_gpt2_small(tmp / "gpt2-small-random", args.n_ctx, n_layer=args.layers or 12)
        cfg = model.cfg
        layers = list(range(args.layers or cfg.n_layer))
        corpus = tmp / "corpus.txt"
        write_corpus(corpus, model, args.docs)
        setup_s = time.perf_counter() - t
        ceiling = gemm_rate(cfg.d_model, cfg.d_mlp)
        print(f"model: L={cfg.n_layer} D={cfg.d_model} M={cfg.d_mlp} V={cfg.d_vocab} n_ctx={cfg.n_ctx}; indexing "
              f"layers 0–{layers[-1]}; {args.docs} documents; batches of {TOKENS_PER_BATCH} tokens "
              f"(setup {setup_s:.1f} s)")
        print(f"float32 GEMM ceiling at start: {ceiling / 1e9:.1f} GFLOP/s "
              f"([4096, {cfg.d_model}] @ [{cfg.d_model}, {cfg.d_mlp}], "
              f"{_blas_threads()} BLAS threads; {worker_blas_threads()} in an index worker); "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        results = []
        for workers in args.workers:
            d = tmp / f"index-w{workers}"
            before = gemm_rate(cfg.d_model, cfg.d_mlp)
            t = time.perf_counter()
            build_index(model, corpus, layers=layers, k=30, workers=workers, progress=False, index_dir=d, rebuild=True)
            seconds = time.perf_counter() - t
            ceiling = max(before, gemm_rate(cfg.d_model, cfg.d_mlp))  # the machine is shared: the ceiling around it
            idx = load_index(model, corpus, d)
            tokens = sum(idx.manifest["tokens"].values())
            lengths = [cfg.n_ctx] * idx.documents()
            flops = forward_flops(cfg, lengths, layers[-1])
            row = {"workers": workers, "seconds": round(seconds, 2), "tokens": tokens,
                   "tokens_per_s": round(tokens / seconds, 1), "gflop_per_s": round(flops / seconds / 1e9, 1),
                   "ceiling_gflop_per_s": round(ceiling / 1e9, 1), "fraction_of_ceiling": round(flops / seconds / ceiling, 3)}
            results.append(row)
            print(f"workers={workers}: {tokens} tokens in {seconds:.1f} s = {row['tokens_per_s']:,.0f} tokens/s, "
                  f"{row['gflop_per_s']} GFLOP/s = {row['fraction_of_ceiling']:.0%} of the GEMM ceiling "
                  f"({row['ceiling_gflop_per_s']} GFLOP/s, best of before and after)")
        out = {"ceiling_gflop_per_s": ceiling / 1e9, "results": results}
        if not args.no_torch and not args.model:
            seconds, tokens = torch_peer(model, corpus, layers[-1] + 1)
            best = max(results, key=lambda r: r["tokens_per_s"])
            out["torch"] = {"seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
                            "minitf_speedup": round(best["tokens_per_s"] / (tokens / seconds), 2)}
            print(f"transformers GPT2Model + MLP hooks + streaming torch.topk, 2 threads: {tokens} tokens in "
                  f"{seconds:.1f} s = {tokens / seconds:,.0f} tokens/s; minitf (workers={best['workers']}) is "
                  f"{out['torch']['minitf_speedup']:.2f}× that")
        if not args.no_neurons:
            before = gemm_rate(cfg.d_model, cfg.d_mlp)
            n = bench_neurons(model, tmp, 1.0)
            ceiling = max(before, gemm_rate(cfg.d_model, cfg.d_mlp))
            n["ceiling_gflop_per_s"] = round(ceiling / 1e9, 1)
            n["fraction_of_ceiling"] = round(n["gflop_per_s"] * 1e9 / ceiling, 3)
            out["neurons"] = n
            print(f"neurons, all {cfg.n_layer} layers (uncached): {n['seconds']:.1f} s, {n['gflop_per_s']} GFLOP/s = "
                  f"{n['fraction_of_ceiling']:.0%} of the GEMM ceiling ({n['ceiling_gflop_per_s']} GFLOP/s)")
        if args.profile:
            p = profile(model, corpus, layers)
            out["profile"] = p
            print(f"one worker, one BLAS thread: {p['seconds']:.1f} s = forward {p['forward']:.1f} s "
                  f"({p['forward'] / p['seconds']:.0%}) + statistics {p['statistics']:.1f} s "
                  f"({p['statistics'] / p['seconds']:.0%})")
        if args.json:
            print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
