"""For scorers past Yes/No: Pearson and Spearman correlation with a Fisher-z interval (:func:`pearson`,
:func:`spearman`) and ROC-AUC with its Hanley–McNeil standard error (:func:`auc_with_se`); records with
``to_json()``, intervals at ``minitf.explain.uncertainty.LEVEL`` by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from minitf.explain.metrics import roc_auc
from minitf.explain.uncertainty import LEVEL, _z


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient with its Fisher-z interval.

    Attributes:
        method: ``"pearson"`` or ``"spearman"``.
        r: the coefficient; None when n < 2 or a variable is constant.
        low, high: the Fisher-z interval; None when r is None or n < 4.
        level: its coverage; n: number of pairs.
    """

    method: str
    r: float | None
    low: float | None
    high: float | None
    level: float
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "r": self.r, "low": self.low, "high": self.high,
                "level": self.level, "n": self.n}


def _pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)  # (n,) each
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"x and y must be flat and of one length, got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("x and y must be finite")
    return a, b


def _correlation(method: str, a: np.ndarray, b: np.ndarray, level: float) -> Correlation:
    """``r = Σ(a − ā)(b − b̄) / sqrt(Σ(a − ā)² Σ(b − b̄)²)`` and the Fisher-z interval
    ``tanh(atanh(r) ± z_{(1+level)/2} / sqrt(n − 3))``."""
    z = _z(level)
    n = a.size
    if n < 2:
        return Correlation(method=method, r=None, low=None, high=None, level=level, n=n)
    da, db = a - a.mean(), b - b.mean()  # (n,) each
    denom = math.sqrt(float(da @ da) * float(db @ db))
    if denom == 0.0:
        return Correlation(method=method, r=None, low=None, high=None, level=level, n=n)
    r = min(1.0, max(-1.0, float(da @ db) / denom))
    if n < 4:
        return Correlation(method=method, r=r, low=None, high=None, level=level, n=n)
    if abs(r) == 1.0:
        return Correlation(method=method, r=r, low=r, high=r, level=level, n=n)
    centre, half = math.atanh(r), z / math.sqrt(n - 3)
    return Correlation(method=method, r=r, low=math.tanh(centre - half), high=math.tanh(centre + half),
                       level=level, n=n)


def pearson(x: Sequence[float], y: Sequence[float], *, level: float = LEVEL) -> Correlation:
    """Pearson's ``r = Σ(x − x̄)(y − ȳ) / sqrt(Σ(x − x̄)² Σ(y − ȳ)²)`` with the Fisher-z interval
    ``tanh(atanh(r) ± z / sqrt(n − 3))``, ``z = Φ⁻¹((1 + level)/2)``."""
    a, b = _pairs(x, y)
    return _correlation("pearson", a, b, level)


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing the mean of the ranks they span (``[5, 1, 5] → [2.5, 1, 2.5]``)."""
    a = np.asarray(x, dtype=np.float64)  # (n,)
    order = np.argsort(a, kind="stable")  # (n,)
    sorted_a = a[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]]))  # (g,) first of each tie group
    ends = np.concatenate([starts[1:], [a.size]])  # (g,) one past the last
    ranks = np.empty(a.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks start+1 … end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float], *, level: float = LEVEL) -> Correlation:
    """Spearman's ρ: Pearson's r of the :func:`average_ranks` of x and of y (ties share their mean rank),
    with the same Fisher-z interval ``tanh(atanh(ρ) ± z / sqrt(n − 3))``."""
    a, b = _pairs(x, y)
    return _correlation("spearman", average_ranks(a), average_ranks(b), level)


@dataclass(frozen=True)
class AUCEstimate:
    """ROC-AUC with its Hanley–McNeil standard error and the normal interval ``auc ± z·se`` clipped to [0, 1].

    Attributes:
        auc: Mann–Whitney ``P(s_pos > s_neg) + ½ P(s_pos = s_neg)`` (:func:`minitf.explain.metrics.roc_auc`).
        se: Hanley & McNeil (1982) standard error.
        low, high, level: the interval; n_pos, n_neg: scored positives and negatives.
    """

    auc: float
    se: float
    low: float
    high: float
    level: float
    n_pos: int
    n_neg: int

    def to_json(self) -> dict[str, Any]:
        return {"auc": self.auc, "se": self.se, "low": self.low, "high": self.high, "level": self.level,
                "n_pos": self.n_pos, "n_neg": self.n_neg}


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982): ``SE² = (A(1 − A) + (P − 1)(Q1 − A²) + (N − 1)(Q2 − A²)) / (P N)``
    with ``Q1 = A / (2 − A)`` and ``Q2 = 2A² / (1 + A)``."""
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"need a positive and a negative, got {n_pos} and {n_neg}")
    a = auc
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1.0 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(0.0, var))


def auc_with_se(labels: Sequence[int], scores: Sequence[float | None], *, level: float = LEVEL) -> AUCEstimate | None:
    """ROC-AUC of ``scores`` (None = not scored, left out) with its Hanley–McNeil SE and
    ``auc ± Φ⁻¹((1 + level)/2) · se`` clipped to [0, 1]; None when no positive or no negative is scored."""
    z = _z(level)
    auc = roc_auc(labels, scores)
    if auc is None:
        return None
    n_pos = sum(1 for y, s in zip(labels, scores) if s is not None and int(y) == 1)
    n_neg = sum(1 for y, s in zip(labels, scores) if s is not None and int(y) == 0)
    se = hanley_mcneil_se(auc, n_pos, n_neg)
    return AUCEstimate(auc=auc, se=se, low=max(0.0, auc - z * se), high=min(1.0, auc + z * se), level=level,
                       n_pos=n_pos, n_neg=n_neg)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` by its continued fraction (modified Lentz; the
    symmetry ``I_x(a, b) = 1 − I_{1−x}(b, a)`` where the fraction converges slowly), to ~1e-14."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * f / a


def correlation_p_value(r: float | None, n: int) -> float | None:
    """One-sided p-value of a correlation this large with no association, ``P(R ≥ r)`` (scipy's
    ``pearsonr(..., alternative="greater")``; Spearman's ρ by the same t approximation as ``spearmanr``).

    ``t = r · sqrt((n − 2) / (1 − r²))`` has Student's t distribution with ``n − 2`` degrees of freedom, whose
    two-sided tail is ``I_{ν/(ν+t²)}(ν/2, ½)``: ``p = ½ I`` for r > 0, ``1 − ½ I`` otherwise (0 at r = 1, 1 at
    r = −1). None when r is None or n < 3.
    """
    if r is None or n < 3:
        return None
    if r >= 1.0:
        return 0.0
    if r <= -1.0:
        return 1.0
    nu = n - 2
    t2 = r * r * nu / (1.0 - r * r)
    two_sided = _betainc(nu / 2.0, 0.5, nu / (nu + t2))
    return 0.5 * two_sided if r > 0 else 1.0 - 0.5 * two_sided
