#!/usr/bin/env python3
"""Each kernel of ``minitf.kernels`` against the plain NumPy line it replaces, and threaded against one thread,
at the shapes of a GPT-2-small forward (8 × 128 tokens and 1 × 1024 tokens) — which kernels pay.

    python bench/kernels.py [--reps 7]

Prints min-of-reps times in ms; all variants of one kernel are timed in alternation in one run.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minitf import kernels  # noqa: E402


def plain_layer_norm(x, g, b, eps):
    sigma = np.sqrt(x.var(-1) + eps)  # [...]
    return (x - x.mean(-1, keepdims=True)) / sigma[..., None] * g + b, sigma


def plain_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x * x * x)))


def plain_attention(q, k, v):
    T, Dh = q.shape[1], q.shape[3]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.float32(math.sqrt(Dh))  # [B, H, T, T]
    s = s + np.triu(np.full((T, T), -np.inf, np.float32), 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", s / s.sum(-1, keepdims=True), v)  # [B, T, H, Dh]


def threaded_gelu(x):
    """The chunked GELU with its chunks shared among the pool's threads (what model.py did before)."""
    out = np.empty_like(x)
    fx, fo = x.reshape(-1), out.reshape(-1)
    with kernels.pool() as n:
        pieces = kernels.split(fx.size, n)

        def share(i):
            a, b = pieces[i]
            fo[a:b] = kernels.gelu_new(fx[a:b])

        kernels._parallel(share, len(pieces))
    return out


def one_thread(fn):
    def go(*a):
        saved = kernels.threads
        kernels.threads = lambda: 1
        try:
            return fn(*a)
        finally:
            kernels.threads = saved
    return go


def time_variants(variants: dict, args, reps: int) -> dict:
    best = {k: math.inf for k in variants}
    for fn in variants.values():
        fn(*args)  # warm-up
    for _ in range(reps):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn(*args)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    D, H, Dh, M = 768, 12, 64, 3072
    print(f"{kernels.threads()} threads")
    for B, T in [(8, 128), (1, 1024)]:
        x = rng.standard_normal((B, T, D), np.float32)
        g, b = rng.standard_normal(D, np.float32), rng.standard_normal(D, np.float32)
        pre = rng.standard_normal((B, T, M), np.float32)
        q, k, v = (rng.standard_normal((B, T, H, Dh), np.float32) for _ in range(3))
        W, bias = rng.standard_normal((D, M), np.float32), rng.standard_normal(M, np.float32)
        rows = {
            "layer_norm [B,T,768]": time_variants({"plain": plain_layer_norm, "kernel, 1 thread": one_thread(kernels.layer_norm),
                                                   "kernel, threaded": kernels.layer_norm}, (x, g, b, 1e-5), args.reps),
            "gelu_new [B,T,3072]": time_variants({"plain": plain_gelu, "kernel, 1 thread": kernels.gelu_new,
                                                  "kernel chunks, threaded": threaded_gelu}, (pre,), args.reps),
            "causal_attention": time_variants({"plain": plain_attention, "kernel, 1 thread": one_thread(kernels.causal_attention),
                                               "kernel, threaded": kernels.causal_attention}, (q, k, v), args.reps),
            "linear [B,T,768]@[768,3072]+b": time_variants({"plain x @ W + b": lambda x, W, b: x @ W + b,
                                                             "kernel": kernels.linear}, (x, W, bias), args.reps),
        }
        for name, t in rows.items():
            print(f"{B}x{T} {name}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
