"""How minitf writes numbers for people, each way once: plurals, thousands, SI, bytes, durations, and "–"
where a number is missing.

    count(3, "prompt")  → "3 prompts"       thousands(12345) → "12,345"     si(5_600_000) → "5.6M"
    megabytes(4_500)    → "4.5 kB"          duration(3725)   → "1:02:05"    num(None)     → "–"
"""
from __future__ import annotations

import math

MISSING = "–"  # an en dash: no number (None, NaN, ±inf)


def count(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless n is 1: count(1, "prompt") → "1 prompt", count(3, "cache hit") → "3 cache hits"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def thousands(n: float) -> str:
    """An integer with thousands separators: ``12,345``."""
    return f"{int(n):,}"


def si(n: float) -> str:
    """A count with an SI suffix, three significant digits: 12 · 3.4k · 5.6M · 7.8G."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def megabytes(n: float) -> str:
    """A byte count: ``12.3 MB`` or ``4.5 kB``."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def num(x: float | None, spec: str = ".3f") -> str:
    """``format(x, spec)``, or "–" where there is no number (None, NaN, ±inf)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return MISSING
    return format(x, spec)
