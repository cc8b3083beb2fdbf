"""How far to trust an explanation's score: intervals, p-values and baselines (pure NumPy, no I/O).

Beside the paper's balanced accuracy (``minitf.explain.metrics``), never instead of it:

* per (neuron, head) pair: the Beta posterior of balanced accuracy (Brodersen et al. 2010) —
  its mean, an equal-tailed interval and ``P(BA ≤ ½)`` — and a permutation p-value with the
  labels shuffled (:func:`score_uncertainty` bundles both);
* over a study: a bootstrap over pairs of the mean score and of the share ≥ 0.8
  (:func:`bootstrap_study`), Benjamini–Hochberg across heads (:func:`benjamini_hochberg`) and
  the share of pairs whose interval lies above chance (:func:`share_above_chance`);
* baselines: constant answers (:func:`constant_baseline`), a random explanation drawn from
  another pair (:func:`random_explanation_donors`) and the token-only explanation
  (:func:`token_only_explanation`);
* for scorers past Yes/No: correlation and ROC-AUC with their intervals (``minitf.explain.correlation``).

Every result is a frozen record with ``to_json()`` (a JSON-ready dict of plain floats, ints,
bools, None and lists). Randomness is a ``numpy.random.Generator`` seeded by the caller's ``seed``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from minitf.explain.metrics import Confusion, balanced_accuracy, confusion
from minitf.explain.prompts import format_text

LEVEL = 0.95
"""Default coverage of every interval here (equal-tailed)."""

CHANCE = 0.5
"""Balanced accuracy (and ROC-AUC) of a classifier that ignores the prompt."""

SHARE_THRESHOLD = 0.8
"""A pair counts as well explained when its score is at least this (the study's share ≥ 0.8)."""

TOKEN_ONLY_EXPLANATION = 'the next token is "{token}"'
"""The token-only baseline explanation; ``{token}`` is the neuron's token made safe by ``format_text``."""


def _z(level: float) -> float:
    """Standard normal quantile ``Φ⁻¹((1 + level) / 2)``: 1.95996… for level 0.95."""
    _check_level(level)
    return NormalDist().inv_cdf((1.0 + level) / 2.0)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")


# --------------------------------------------------------------------------- Beta posterior of BA


@dataclass(frozen=True)
class BetaPosterior:
    """The posterior of balanced accuracy under uniform priors on TPR and TNR (Brodersen et al. 2010).

    Attributes:
        tp, fp, tn, fn: the confusion counts it was computed from.
        mean: posterior mean ``(E[TPR] + E[TNR]) / 2``.
        sd: posterior standard deviation ``sqrt(Var[TPR] + Var[TNR]) / 2``.
        low, high: equal-tailed interval, ``P(BA < low) = P(BA > high) = (1 − level) / 2``.
        level: the interval's coverage (0.95).
        p_at_most_chance: ``P(BA ≤ ½)``, the posterior probability that the explanation does no
            better than chance.
    """

    tp: int
    fp: int
    tn: int
    fn: int
    mean: float
    sd: float
    low: float
    high: float
    level: float
    p_at_most_chance: float

    @property
    def above_chance(self) -> bool:
        """The whole interval lies above ½ (``low > ½``)."""
        return self.low > CHANCE

    def to_json(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn, "mean": self.mean,
                "sd": self.sd, "low": self.low, "high": self.high, "level": self.level,
                "p_at_most_chance": self.p_at_most_chance, "above_chance": self.above_chance}


def _beta_masses(a: int, b: int, m: int) -> np.ndarray:
    """Trapezoid masses of Beta(a, b) on the nodes ``x_i = i / m``, normalised to sum 1.

    ``f(x) = x^(a−1) (1 − x)^(b−1) / B(a, b)`` with ``log B(a, b) = lgamma(a) + lgamma(b) −
    lgamma(a + b)``; mass ``w_i f(x_i) / m`` with trapezoid weights ``w_0 = w_m = ½``, else 1.
    """
    x = np.arange(m + 1, dtype=np.float64) / m  # (m+1,)
    with np.errstate(divide="ignore"):
        log_x, log_1mx = np.log(x), np.log1p(-x)  # (m+1,) each, -inf at an end
    log_f = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    log_f = log_f + (0.0 if a == 1 else (a - 1) * log_x) + (0.0 if b == 1 else (b - 1) * log_1mx)  # (m+1,)
    f = np.exp(np.broadcast_to(log_f, x.shape))  # (m+1,)
    f[[0, -1]] *= 0.5
    return f / f.sum()


def _beta_sd(a: int, b: int) -> float:
    """``sqrt(ab / ((a + b)² (a + b + 1)))``."""
    return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


def ba_posterior(tp: int, fp: int, tn: int, fn: int, *, level: float = LEVEL) -> BetaPosterior:
    """Posterior of balanced accuracy ``BA = (TPR + TNR) / 2`` (Brodersen et al. 2010).

    With uniform priors, ``TPR ~ Beta(TP + 1, FN + 1)`` and ``TNR ~ Beta(TN + 1, FP + 1)``,
    independent. Mean and sd are closed-form: ``E[Beta(a, b)] = a / (a + b)``,
    ``Var = ab / ((a + b)² (a + b + 1))``, ``E[BA] = (E[TPR] + E[TNR]) / 2``,
    ``Var[BA] = (Var[TPR] + Var[TNR]) / 4``.

    The distribution of ``S = TPR + TNR`` is the convolution ``f_S(s) = ∫ f_TPR(x) f_TNR(s − x) dx``,
    computed on the grid ``x_i = i / m`` (trapezoid masses, FFT convolution) with
    ``m ≥ 4096`` and at least 64 nodes per sd of the narrower Beta, so that the interval and
    ``P(BA ≤ ½)`` are accurate to ~1e-5. The CDF of S is piecewise linear, each node's mass
    spread over the cell of width ``1/m`` around it; ``P(BA ≤ ½) = P(S ≤ 1)`` and
    ``low, high = F_S⁻¹((1 ∓ level) / 2) / 2``.

    With no positives (or no negatives) TPR (or TNR) is its uniform prior; the paper's balanced
    accuracy is undefined there, and :func:`score_uncertainty` gives no posterior for such a pair.
    """
    for name, value in (("tp", tp), ("fp", fp), ("tn", tn), ("fn", fn)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value}")
    tp, fp, tn, fn = int(tp), int(fp), int(tn), int(fn)
    _check_level(level)
    a1, b1, a2, b2 = tp + 1, fn + 1, tn + 1, fp + 1
    sd1, sd2 = _beta_sd(a1, b1), _beta_sd(a2, b2)
    m = int(min(max(4096, math.ceil(64 / min(sd1, sd2))), 1 << 22))
    p1, p2 = _beta_masses(a1, b1, m), _beta_masses(a2, b2, m)  # (m+1,) each
    n_fft = 1 << (2 * m + 1 - 1).bit_length()
    s = np.fft.irfft(np.fft.rfft(p1, n_fft) * np.fft.rfft(p2, n_fft), n_fft)[: 2 * m + 1]  # (2m+1,) mass at S = k/m
    s = np.clip(s, 0.0, None)
    s /= s.sum()
    # Piecewise-linear CDF of S: knots at 0, the cell edges (k + ½)/m, and 2.
    edges = np.concatenate([[0.0], (np.arange(2 * m) + 0.5) / m, [2.0]])  # (2m+2,)
    cdf = np.concatenate([[0.0], np.cumsum(s[:-1]), [1.0]])  # (2m+2,)
    tail = (1.0 - level) / 2.0
    low, high = (_inverse_cdf(edges, cdf, q) / 2.0 for q in (tail, 1.0 - tail))
    p_half = float(s[:m].sum() + 0.5 * s[m])  # P(S ≤ 1): the cell around S = 1 is split at its node
    mean = (a1 / (a1 + b1) + a2 / (a2 + b2)) / 2.0
    sd = math.sqrt(sd1**2 + sd2**2) / 2.0
    return BetaPosterior(tp=tp, fp=fp, tn=tn, fn=fn, mean=mean, sd=sd, low=float(low), high=float(high),
                         level=level, p_at_most_chance=min(1.0, max(0.0, p_half)))


def _inverse_cdf(knots: np.ndarray, cdf: np.ndarray, q: float) -> float:
    """``F⁻¹(q)`` for the piecewise-linear CDF through ``(knots, cdf)`` (cdf non-decreasing, 0 → 1)."""
    i = int(np.searchsorted(cdf, q, side="left"))  # first knot with cdf ≥ q
    i = min(max(i, 1), len(cdf) - 1)
    c0, c1 = cdf[i - 1], cdf[i]
    t = 0.0 if c1 <= c0 else (q - c0) / (c1 - c0)
    return float(knots[i - 1] + t * (knots[i] - knots[i - 1]))


# --------------------------------------------------------------------------- permutation test


@dataclass(frozen=True)
class PermutationTest:
    """One-sided permutation test of balanced accuracy with the labels shuffled.

    Attributes:
        statistic: the observed balanced accuracy.
        p_value: ``P(BA_perm ≥ BA_obs)`` under random relabeling (see :func:`ba_permutation_test`).
        n_perm: relabelings counted: all distinct ones when ``exact``, else the random draws.
        exact: True when every distinct relabeling was enumerated.
        seed: the Generator seed of the draws (None when exact).
    """

    statistic: float
    p_value: float
    n_perm: int
    exact: bool
    seed: int | None

    def to_json(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "p_value": self.p_value, "n_perm": self.n_perm,
                "exact": self.exact, "seed": self.seed}


def ba_permutation_test(
    labels: Sequence[int],
    predictions: Sequence[int | None],
    *,
    n_perm: int = 10_000,
    seed: int = 0,
    max_exact: int = 100_000,
) -> PermutationTest | None:
    """p-value of the observed balanced accuracy against the labels shuffled among the answered items.

    Items whose prediction is None (malformed answers) are left out first, as in the balanced
    accuracy itself. With P positive labels, N negative ones and K predicted Yes among the n = P + N
    answered items, a relabeling with TP true positives has
    ``BA = (TP/P + (N − K + TP)/N) / 2`` — increasing in TP, so ``BA_perm ≥ BA_obs ⇔ TP_perm ≥ TP_obs``
    (compared as integers, no rounding).

    Exact when the ``C(n, P)`` distinct relabelings number at most ``max_exact``: all are
    enumerated (each is equally likely under a uniform shuffle) and
    ``p = #{relabelings with BA ≥ BA_obs} / C(n, P)`` (the observed one is among them; this is
    the hypergeometric upper tail, Fisher's exact test, one-sided). Otherwise ``n_perm`` shuffles
    drawn with ``numpy.random.default_rng(seed)`` and ``p = (1 + #{BA_perm ≥ BA_obs}) / (1 + n_perm)``.

    None when the answered items lack a positive or a negative label (balanced accuracy undefined).
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if n_perm < 1:
        raise ValueError(f"n_perm must be at least 1, got {n_perm}")
    kept = [(int(y), int(p)) for y, p in zip(labels, predictions) if p is not None]
    y = np.array([k[0] for k in kept], dtype=np.int64)  # (n,)
    pred = np.array([k[1] for k in kept], dtype=np.int64)  # (n,)
    n, n_pos = y.size, int(y.sum())
    observed = balanced_accuracy(y.tolist(), pred.tolist())
    if observed is None:
        return None
    tp_obs = int((y * pred).sum())
    n_relabel = math.comb(n, n_pos)
    if n_relabel <= max_exact:
        positives = np.array(list(itertools.combinations(range(n), n_pos)), dtype=np.int64)  # (C, P)
        tp = pred[positives].sum(axis=1)  # (C,)
        return PermutationTest(statistic=observed, p_value=float((tp >= tp_obs).sum() / n_relabel),
                               n_perm=n_relabel, exact=True, seed=None)
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 4096):
        rows = min(4096, n_perm - start)
        shuffled = rng.permuted(np.broadcast_to(y, (rows, n)), axis=1)  # (rows, n)
        hits += int(((shuffled * pred).sum(axis=1) >= tp_obs).sum())
    return PermutationTest(statistic=observed, p_value=(1 + hits) / (1 + n_perm),
                           n_perm=n_perm, exact=False, seed=seed)


# --------------------------------------------------------------------------- one pair, bundled


@dataclass(frozen=True)
class ScoreUncertainty:
    """A balanced accuracy with what says how far to trust it.

    Attributes:
        confusion: TP/FP/TN/FN over the answered items.
        balanced_accuracy: the paper's ``(TPR + TNR) / 2``; None when a class is absent.
        posterior: :func:`ba_posterior` of the counts; None when balanced_accuracy is.
        permutation: :func:`ba_permutation_test`; None when balanced_accuracy is.
    """

    confusion: Confusion
    balanced_accuracy: float | None
    posterior: BetaPosterior | None
    permutation: PermutationTest | None

    def to_json(self) -> dict[str, Any]:
        c = self.confusion
        return {"tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn, "balanced_accuracy": self.balanced_accuracy,
                "posterior": None if self.posterior is None else self.posterior.to_json(),
                "permutation": None if self.permutation is None else self.permutation.to_json()}


def score_uncertainty(
    labels: Sequence[int],
    predictions: Sequence[int | None],
    *,
    level: float = LEVEL,
    n_perm: int = 10_000,
    seed: int = 0,
) -> ScoreUncertainty:
    """The balanced accuracy of ``predictions`` (None = malformed, left out) with its posterior and p-value."""
    c = confusion(labels, predictions)
    ba = balanced_accuracy(labels, predictions)
    if ba is None:
        return ScoreUncertainty(confusion=c, balanced_accuracy=None, posterior=None, permutation=None)
    return ScoreUncertainty(
        confusion=c, balanced_accuracy=ba,
        posterior=ba_posterior(c.tp, c.fp, c.tn, c.fn, level=level),
        permutation=ba_permutation_test(labels, predictions, n_perm=n_perm, seed=seed),
    )


# --------------------------------------------------------------------------- study aggregates


@dataclass(frozen=True)
class BootstrapInterval:
    """A statistic over pairs with its percentile-bootstrap interval.

    Attributes:
        estimate: the statistic on the pairs themselves.
        low, high: the ``(1 ∓ level) / 2`` quantiles of the statistic over ``n_boot`` resamples.
        level, n_boot, seed: how it was drawn; n: number of pairs.
    """

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    seed: int
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "n_boot": self.n_boot, "seed": self.seed, "n": self.n}


@dataclass(frozen=True)
class StudyBootstrap:
    """Bootstrap over (neuron, head) pairs of the mean score and of the share of pairs ≥ ``threshold``."""

    mean: BootstrapInterval
    share: BootstrapInterval
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.to_json(), "share": self.share.to_json(), "threshold": self.threshold}


def bootstrap_study(
    scores: Sequence[float],
    *,
    threshold: float = SHARE_THRESHOLD,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
) -> StudyBootstrap | None:
    """Percentile bootstrap over pairs of ``mean(x)`` and ``share = #{x_i ≥ threshold} / n``.

    Each of ``n_boot`` resamples draws n pairs with replacement (indices from
    ``numpy.random.default_rng(seed)``); both statistics are computed on the same resamples and
    the interval is their ``(1 − level)/2`` and ``(1 + level)/2`` quantiles (``numpy.quantile``,
    linear). ``scores`` are the pairs' scores (skipped pairs left out by the caller). None when
    there are none.
    """
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    x = np.asarray(scores, dtype=np.float64)  # (n,)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_study: scores must be a flat sequence of finite numbers")
    n = x.size
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    means, shares = np.empty(n_boot), np.empty(n_boot)  # (n_boot,) each
    hit = (x >= threshold).astype(np.float64)  # (n,)
    rows = max(1, (1 << 20) // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # (rows, n)
        means[start:stop] = x[idx].mean(axis=1)
        shares[start:stop] = hit[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0

    def interval(estimate: float, replicates: np.ndarray) -> BootstrapInterval:
        low, high = np.quantile(replicates, [tail, 1.0 - tail])
        return BootstrapInterval(estimate=estimate, low=float(low), high=float(high), level=level,
                                 n_boot=n_boot, seed=seed, n=n)

    return StudyBootstrap(mean=interval(float(x.mean()), means), share=interval(float(hit.mean()), shares),
                          threshold=threshold)


@dataclass(frozen=True)
class FDRControl:
    """Benjamini–Hochberg across heads.

    Attributes:
        q_values: BH-adjusted p-values, in the input order.
        rejected: ``q ≤ fdr`` per input, the heads called better than chance.
        fdr: the false discovery rate controlled.
    """

    q_values: tuple[float, ...]
    rejected: tuple[bool, ...]
    fdr: float

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected)

    def to_json(self) -> dict[str, Any]:
        return {"q_values": list(self.q_values), "rejected": list(self.rejected), "fdr": self.fdr,
                "n_rejected": self.n_rejected}


def benjamini_hochberg(p_values: Sequence[float], *, fdr: float = 0.05) -> FDRControl:
    """Benjamini–Hochberg step-up over m p-values.

    With ``p_(1) ≤ … ≤ p_(m)`` sorted, ``q_(i) = min_{j ≥ i} min(1, m p_(j) / j)``; a head is
    rejected when ``q ≤ fdr`` — the same as rejecting ``p_(1) … p_(k)`` for the largest k with
    ``p_(k) ≤ k · fdr / m``.
    """
    if not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must be between 0 and 1, got {fdr}")
    p = np.asarray(p_values, dtype=np.float64)  # (m,)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("benjamini_hochberg: p-values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")  # (m,)
    scaled = p[order] * m / np.arange(1, m + 1)  # (m,)
    q_sorted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])  # (m,)
    q = np.empty(m)
    q[order] = q_sorted
    return FDRControl(q_values=tuple(float(v) for v in q), rejected=tuple(bool(v <= fdr) for v in q), fdr=fdr)


def share_above_chance(posteriors: Sequence[BetaPosterior | None]) -> float | None:
    """Share of pairs whose posterior interval lies wholly above ½ (``low > ½``), over pairs with a
    posterior (None entries left out); None when there are none."""
    kept = [p for p in posteriors if p is not None]
    return sum(p.above_chance for p in kept) / len(kept) if kept else None


# --------------------------------------------------------------------------- baselines


def constant_answers(n: int, answer: int) -> list[int]:
    """``n`` identical predictions: 1 (always Yes) or 0 (always No)."""
    if answer not in (0, 1):
        raise ValueError(f"answer must be 0 or 1, got {answer}")
    return [answer] * n


def constant_baseline(labels: Sequence[int], answer: int, **kwargs: Any) -> ScoreUncertainty:
    """:func:`score_uncertainty` of answering ``answer`` (1 = Yes, 0 = No) to every item.

    With both classes present, always Yes gives TPR = 1, TNR = 0 and always No the reverse, so
    ``BA = ½`` exactly and the permutation p-value is 1 (every relabeling ties). With one class
    absent the balanced accuracy is undefined: ``balanced_accuracy``, ``posterior`` and
    ``permutation`` are None, as for the pair itself. ``kwargs`` go to :func:`score_uncertainty`.
    """
    return score_uncertainty(labels, constant_answers(len(labels), answer), **kwargs)


def random_explanation_donors(explanations: Sequence[str | None], *, seed: int) -> list[int | None]:
    """For each pair, the index of the other pair whose explanation it is scored with as a baseline.

    Only pairs with an explanation (not None) take part, as donors and as receivers. With at
    least two of them the assignment is a uniformly random derangement of them (a permutation
    with no fixed point, drawn by rejection with ``numpy.random.default_rng(seed)``): every
    explanation is used once and no pair ever gets its own. Pairs without an explanation, and the
    only one when just one has an explanation, get None. Two pairs whose explanations happen to
    read the same are still different pairs.
    """
    who = [i for i, e in enumerate(explanations) if e is not None]
    donors: list[int | None] = [None] * len(explanations)
    if len(who) < 2:
        return donors
    rng = np.random.default_rng(seed)
    ar = np.arange(len(who))
    while True:
        perm = rng.permutation(len(who))  # (k,)
        if not np.any(perm == ar):
            break
    for receiver, donor in zip(who, perm):
        donors[receiver] = who[int(donor)]
    return donors


def token_only_explanation(token: str) -> str:
    """The explanation that says only which token comes next: :data:`TOKEN_ONLY_EXPLANATION`."""
    return TOKEN_ONLY_EXPLANATION.format(token=format_text(token))
