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

The ceiling is the best of a few [4096, D] @ [D, M] float32 GEMMs with NumPy's default BLAS threads.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import multiprocessing as mp
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
from minitf.index import TOKENS_PER_BATCH, build_index, load_index  # noqa: E402
from minitf.weights import Config, expected_shapes  # noqa: E402

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


def _probe(q) -> None:
    q.put(_blas_threads())


def worker_blas_threads() -> int | None:
    """BLAS threads in a process spawned the way minitf.index spawns its workers."""
    from minitf.index import _BLAS_ENV

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    saved = {k: os.environ.get(k) for k in _BLAS_ENV}
    os.environ.update({k: "1" for k in _BLAS_ENV})
    try:
        p = ctx.Process(target=_probe, args=(q,))
        p.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    p.join()
    return q.get()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model folder or name (default: a random GPT-2-small-shaped model)")
    ap.add_argument("--n-ctx", type=int, default=1024, help="context of the random model")
    ap.add_argument("--layers", type=int, default=None, help="index layers 0..LAYERS-1 (default: all)")
    ap.add_argument("--docs", type=int, default=16, help="documents (each a full context)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", action="store_true")
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
        print(f"float32 GEMM ceiling: {ceiling / 1e9:.1f} GFLOP/s "
              f"([4096, {cfg.d_model}] @ [{cfg.d_model}, {cfg.d_mlp}], "
              f"{_blas_threads()} BLAS threads; {worker_blas_threads()} in a spawned index worker); "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        results = []
        for workers in args.workers:
            d = tmp / f"index-w{workers}"
            t = time.perf_counter()
            build_index(model, corpus, layers=layers, k=30, workers=workers, progress=False, index_dir=d, rebuild=True)
            seconds = time.perf_counter() - t
            idx = load_index(model, corpus, d)
            tokens = sum(idx.manifest["tokens"].values())
            lengths = [cfg.n_ctx] * idx.documents()
            flops = forward_flops(cfg, lengths, layers[-1])
            row = {"workers": workers, "seconds": round(seconds, 2), "tokens": tokens,
                   "tokens_per_s": round(tokens / seconds, 1), "gflop_per_s": round(flops / seconds / 1e9, 1),
                   "fraction_of_ceiling": round(flops / seconds / ceiling, 3)}
            results.append(row)
            print(f"workers={workers}: {tokens} tokens in {seconds:.1f} s = {row['tokens_per_s']:,.0f} tokens/s, "
                  f"{row['gflop_per_s']} GFLOP/s = {row['fraction_of_ceiling']:.0%} of the GEMM ceiling")
        if args.json:
            print(json.dumps({"ceiling_gflop_per_s": ceiling / 1e9, "results": results}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
