"""Threads for the forward pass's elementwise work (kept out of model.py so that file reads as the math).

NumPy releases the GIL in its loops, so a few Python threads keep every core busy in the work BLAS does not
do (softmax, GELU, LayerNorm) and in attention's many small products. The number of threads is the number
of threads NumPy's OpenBLAS uses (so OPENBLAS_NUM_THREADS=1, as in minitf.index's workers, means one);
while threads run BLAS calls side by side, OpenBLAS is set to one thread each. Where OpenBLAS cannot be
found (another BLAS), everything runs on the calling thread, as it would anyway.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

class _Blas:
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
POOL_LOCK = threading.Lock()  # one run at a time uses the pool; a concurrent run works on its own thread


def threads() -> int:
    """How many threads a run may use now (1 when BLAS is single-threaded or not OpenBLAS)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = _Blas()
    return min(_BLAS.threads(), os.cpu_count() or 1, 8)


class Par:
    """Runs ``fn(part)`` for ``part`` in range(n) on n threads (the caller's included) and waits for all."""

    def __init__(self, n: int):
        global _POOL
        self.n = n
        if n > 1 and (_POOL is None or _POOL._max_workers < n - 1):
            _POOL = ThreadPoolExecutor(n - 1, thread_name_prefix="minitf")

    def __call__(self, fn, n: int | None = None, blas_one: bool = False) -> None:
        n = self.n if n is None else min(n, self.n)
        if n <= 1:
            fn(0)
            return
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



def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of ``parts`` near-equal contiguous pieces of range(n) (empty pieces dropped)."""
    edges = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
