"""The forward pass's fast paths, kept out of ``minitf.model`` so that file reads as the math alone.

The file opens with the plain references, the formulas as one readable NumPy line or three each, in float64
(``plain_layer_norm``, ``plain_gelu``, ``plain_attention``), and ``softmax``. Below them, each fast kernel computes
exactly its reference's formula, in float32, names its reference and says why it is faster;
``tests/test_kernels.py`` checks each against its reference (random shapes, padded batches) to float32
rounding, and ``bench/kernels.py`` times each against the one-liner.

Threads: NumPy releases the GIL in its loops, so a few Python threads keep every core busy in the work BLAS
does not do (LayerNorm, softmax) and in attention's many small products. The number of threads is the
number NumPy's OpenBLAS uses (OPENBLAS_NUM_THREADS=1, as in minitf.index.build's workers, means one); while threads
run BLAS calls side by side, OpenBLAS is set to one thread each. Where OpenBLAS cannot be found (another
BLAS), everything runs on the calling thread. One caller at a time uses the pool; a concurrent caller (another
Python thread) runs its kernels on its own thread.
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

PARALLEL_MIN = 1 << 16  # elements below which elementwise work stays on one thread
ROWS_PER_CHUNK = 256  # LayerNorm rows whose temporaries stay in cache
ATTENTION_BLOCK_BYTES = 1 << 21  # scores of one block of query rows (all of a share's heads)


# ---- the plain references: the formulas the fast kernels below must equal -------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    """exp(x − max x) / Σ exp(x − max x) over the last axis, float32: logits → probabilities."""
    e = np.exp(logits - logits.max(-1, keepdims=True))  # [..., V]
    return e / e.sum(-1, keepdims=True)


def plain_layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """LN(x) = (x − mean x) / σ · γ + β, σ = √(var x + ε) over the last axis, in float64: (LN(x), σ)."""
    x = x.astype(np.float64)
    sigma = np.sqrt(x.var(-1) + eps)  # [...]
    return (x - x.mean(-1, keepdims=True)) / sigma[..., None] * g + b, sigma


def plain_gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh GELU ½x(1 + tanh(√(2/π)(x + 0.044715x³))), in float64."""
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def plain_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """softmax(q kᵀ/√Dh + causal mask) v in float64, q, k, v [B, T, H, Dh]: (z [B, T, H, Dh], pattern [B, H, T, T]).
    """
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    T, Dh = q.shape[1], q.shape[3]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(Dh) + np.triu(np.full((T, T), -np.inf), 1)  # [B, H, T, T]
    p = np.exp(s - s.max(-1, keepdims=True))  # [B, H, T, T]
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v), p


# ---- BLAS thread control and the thread pool ------------------------------------------------------------
class _Blas:
    """OpenBLAS's get/set_num_threads, found among the libraries this process has loaded (None otherwise)."""

    def __init__(self):
        self.get = self.set = None
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1].lower()})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                                   ("openblas_", "")):
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes, put.restype, put.argtypes = ctypes.c_int, [], None, [ctypes.c_int]
                    self.get, self.set = get, put
                    return

    def threads(self) -> int:
        return max(1, int(self.get())) if self.get is not None else 1


_BLAS: _Blas | None = None
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.RLock()


def threads() -> int:
    """How many threads a kernel may use now (1 when BLAS is single-threaded or not OpenBLAS)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = _Blas()
    return min(_BLAS.threads(), os.cpu_count() or 1, 8)


@contextmanager
def pool():
    """The thread count this caller may use: ``threads()`` when it holds the pool, else 1. Re-entrant, so
    ``Model.run`` holds it for a whole forward pass and its kernels inherit it."""
    locked = _POOL_LOCK.acquire(blocking=False)
    try:
        yield threads() if locked else 1
    finally:
        if locked:
            _POOL_LOCK.release()


def run_on_threads(fn, n: int, blas_one: bool = False) -> None:
    """Run fn(0) … fn(n−1) on n threads (the caller's included) and wait for all (OpenBLAS at one thread
    each meanwhile with ``blas_one``)."""
    global _POOL
    if n <= 1:
        fn(0)
        return
    if _POOL is None or _POOL._max_workers < n - 1:
        _POOL = ThreadPoolExecutor(n - 1, thread_name_prefix="minitf")
    before = _BLAS.threads() if blas_one else None
    if blas_one:
        _BLAS.set(1)
    try:
        futures = [_POOL.submit(fn, i) for i in range(1, n)]
        try:
            fn(0)
        finally:
            for f in futures:
                f.result()
    finally:
        if blas_one:
            _BLAS.set(before)


def set_blas_threads(n: int) -> int | None:
    """Set OpenBLAS (and so NumPy's products and every kernel's thread count) to n threads; the count it had,
    None where OpenBLAS is not found (then nothing changes)."""
    threads()  # finds OpenBLAS
    if _BLAS.set is None:
        return None
    before = _BLAS.threads()
    _BLAS.set(n)
    return before


def after_fork() -> None:
    """In a forked child: forget the parent's pool threads and lock (the child has none of its threads)."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.RLock()


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of ``parts`` near-equal contiguous pieces of range(n) (empty pieces dropped)."""
    edges = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


# ---- kernels --------------------------------------------------------------------------------------------
def linear(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x W + b for x [..., K], W [K, N], b [N] → [..., N].

    Reference: ``x @ W + b`` itself. Faster than it: ``@`` on a 3-D x runs one GEMM per prompt (small ones, at
    a lower rate), this runs one GEMM over all B·T rows; and b is added in place instead of into a second
    [..., N] array.
    """
    K = x.shape[-1]
    out = (x.reshape(-1, K) @ W).reshape(x.shape[:-1] + (W.shape[1],))  # [..., N]
    if b is not None:
        out += b
    return out


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """LN(x) = (x − mean x) / σ · γ + β, σ = √(var x + ε) over the last axis. Returns (LN(x) [..., D], σ [...]).

    Reference: ``plain_layer_norm``. Faster than its one-liner: rows go in chunks of ``ROWS_PER_CHUNK`` whose
    temporaries stay in cache, each step is done in place into the output, and the chunks are shared among the
    pool's threads.
    """
    D = x.shape[-1]
    rows = x.reshape(-1, D)  # [N, D]
    out = np.empty(rows.shape, np.float32)  # [N, D]
    sigma = np.empty(rows.shape[0], np.float32)  # [N]
    with pool() as n:
        pieces = split(rows.shape[0], n if rows.size >= PARALLEL_MIN else 1)

        def share(i):
            a, b = pieces[i]
            for c in range(a, b, ROWS_PER_CHUNK):
                d = min(b, c + ROWS_PER_CHUNK)
                o = out[c:d]  # [n, D]
                np.subtract(rows[c:d], rows[c:d].mean(-1, keepdims=True), out=o)  # centred
                np.sqrt(np.mean(o * o, -1) + eps, out=sigma[c:d])  # [n]  (eps: Python float → stays f32)
                o /= sigma[c:d, None]
                o *= gamma
                o += beta

        run_on_threads(share, len(pieces))
    return out.reshape(x.shape), sigma.reshape(x.shape[:-1])


def gelu_new(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh GELU: ½x(1 + tanh(√(2/π)(x + 0.044715x³))), in float32.

    Reference: ``plain_gelu``. Faster than its one-liner (which makes six temporaries of x's size): in-place
    steps in chunks of ~64 K elements, so the scratch stays in cache. On one thread: sharing the chunks among
    threads did not pay (``bench/kernels.py`` on 2 cores, [8, 128, 3072]: 2.9 ms on one thread, 4.6 ms on two,
    7.6 ms plain).
    """
    out = np.empty_like(x)  # [...]
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)  # [N]
    chunk = 1 << 16
    t = np.empty(min(chunk, flat_x.size), np.float32)  # scratch
    for c in range(0, flat_x.size, chunk):
        xs, ts = flat_x[c:c + chunk], t[:min(chunk, flat_x.size - c)]
        np.multiply(xs, xs, out=ts)  # x²
        ts *= xs
        ts *= 0.044715
        ts += xs
        ts *= math.sqrt(2.0 / math.pi)
        np.tanh(ts, out=ts)
        ts += 1.0
        ts *= 0.5  # halving is exact, so ½ may come before the product with x
        np.multiply(ts, xs, out=flat_out[c:c + chunk])
    return out


# Numerical Recipes' erfc(z) = t · exp(−z² + P(t)), t = 1/(1 + z/2), z ≥ 0: relative error < 1.2·10⁻⁷ for every z
_ERFC_P = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
           0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)  # P's coefficients, t⁰ … t⁹


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU of GPT-NeoX / Pythia: x · Φ(x) = ½x(1 + erf(x/√2)), in float32.

    NumPy has no erf, so Φ comes from erfc: with z = |x|/√2, e = ½ erfc(z) (Numerical Recipes' rational
    Chebyshev form above, relative error < 1.2·10⁻⁷), Φ(x) = e for x < 0 and 1 − e for x ≥ 0. Taking the
    tail from erfc keeps Φ's relative precision where it is tiny (x ≪ 0), which 1 + erf(x/√2) would lose.
    ``gelu_reference`` is the one-line ``math.erf`` form; ``tests/test_kernels.py`` checks the two agree.
    In chunks of ~64 K elements with in-place steps, as ``gelu_new``.
    """
    out = np.empty_like(x)  # [...]
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)  # [N]
    chunk = 1 << 16
    z, t, p = (np.empty(min(chunk, flat_x.size), np.float32) for _ in range(3))  # scratch
    for c in range(0, flat_x.size, chunk):
        xs = flat_x[c:c + chunk]
        n = xs.size
        zs, ts, ps = z[:n], t[:n], p[:n]
        np.abs(xs, out=zs)
        zs *= np.float32(1 / math.sqrt(2))  # z = |x|/√2
        np.multiply(zs, 0.5, out=ts)
        ts += 1.0
        np.reciprocal(ts, out=ts)  # t = 1/(1 + z/2)
        ps.fill(_ERFC_P[-1])
        for coefficient in _ERFC_P[-2::-1]:  # Horner: P(t)
            ps *= ts
            ps += coefficient
        zs *= zs
        ps -= zs  # −z² + P(t)
        np.exp(ps, out=ps)
        ps *= ts
        ps *= 0.5  # e = ½ erfc(z) = Φ(−|x|)
        np.subtract(1.0, ps, out=ps, where=xs >= 0)  # Φ(x)
        np.multiply(xs, ps, out=flat_out[c:c + chunk])
    return out


def gelu_reference(x: np.ndarray) -> np.ndarray:
    """½x(1 + erf(x/√2)) element by element with ``math.erf`` in float64 (slow; the reference for ``gelu``)."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + erf(x.astype(np.float64) / math.sqrt(2)))).astype(np.float32)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                     pattern: np.ndarray | None = None) -> np.ndarray:
    """z = softmax(q kᵀ / √Dh + causal mask) v for every prompt and head.

    q, k, v: [B, T, H, Dh] (views into the fused qkv are fine); returns z [B, T, H, Dh]. ``pattern``: a
    [B, H, T, T] array of zeros to receive softmax(…), or None.

    Reference: ``plain_attention``. Faster than its one-liner (which builds [B, H, T, T] scores, masks half of
    them and makes several passes over them): query rows go in blocks; a block of rows i0…i1 needs keys 0…i1
    only (the mask is added on the diagonal block), its scores stay in cache through the softmax, and nothing
    is computed for the keys a query never sees; short prompts go several at a time. Prompts (or, with fewer
    prompts than threads, heads) are shared among the pool's threads, each running its small products on one
    BLAS thread.
    """
    B, T, H, Dh = q.shape
    z = np.empty((B, T, H, Dh), np.float32)  # [B, T, H, Dh]
    scale = 1.0 / math.sqrt(Dh)
    with pool() as n:
        if B % n == 0 or B >= 4 * n:
            shares = [((b0, b1), (0, H)) for b0, b1 in split(B, n)]  # thread → (prompts, heads)
        else:
            shares = [((0, B), hs) for hs in split(H, n)]
        h_most = max(h1 - h0 for _, (h0, h1) in shares)
        block = min(T, max(16, ATTENTION_BLOCK_BYTES // (4 * T * h_most) // 16 * 16))  # query rows per block
        per = max(1, ATTENTION_BLOCK_BYTES // (4 * T * T * h_most)) if block == T else 1  # prompts per block
        mask = np.triu(np.full((block, block), -np.inf, np.float32), 1)  # [block, block]

        def share(i):
            (b_lo, b_hi), (h0, h1) = shares[i]
            scratch = np.empty((min(per, b_hi - b_lo), h1 - h0, block, T), np.float32) if pattern is None else None
            for b0 in range(b_lo, b_hi, per):
                b1 = min(b_hi, b0 + per)
                qb = q[b0:b1, :, h0:h1].transpose(0, 2, 1, 3)  # [nb, h, T, Dh]
                kb = k[b0:b1, :, h0:h1].transpose(0, 2, 3, 1)  # [nb, h, Dh, T]
                vb = v[b0:b1, :, h0:h1].transpose(0, 2, 1, 3)  # [nb, h, T, Dh]
                zb = z[b0:b1, :, h0:h1].transpose(0, 2, 1, 3)  # [nb, h, T, Dh] a view of the output
                for i0 in range(0, T, block):
                    i1 = min(T, i0 + block)
                    r = i1 - i0
                    s = (pattern[b0:b1, h0:h1, i0:i1, :i1] if pattern is not None
                         else scratch[:b1 - b0, :, :r, :i1])  # [nb, h, r, i1]
                    np.matmul(qb[:, :, i0:i1], kb[..., :i1], out=s)
                    s *= scale
                    s[..., i0:] += mask[:r, :r]  # a query never sees later keys
                    s -= s.max(-1, keepdims=True)
                    np.exp(s, out=s)
                    s /= s.sum(-1, keepdims=True)
                    np.matmul(s, vb[:, :, :i1], out=zb[:, :, i0:i1])

        run_on_threads(share, len(shares), blas_one=True)
    return z
