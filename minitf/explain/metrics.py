"""The arithmetic of an explanation's score (see ``minitf.explain.driver``): confusion counts, balanced accuracy
``(TPR + TNR) / 2``, ROC-AUC of ``P(Yes)``, and their distribution over heads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from minitf.errors import MinitfError
from minitf.explain.answers import Answer
from minitf.explain.prompts import HeadExamples
from minitf.heads import both_classes

@dataclass(frozen=True)
class Confusion:
    """Counts over answered items (positive = head active, label 1)."""

    tp: int
    fp: int
    tn: int
    fn: int


def confusion(labels: Sequence[int], predictions: Sequence[int | None]) -> Confusion:
    """TP/FP/TN/FN over the items whose prediction is not None."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    pairs = [(int(y), int(p)) for y, p in zip(labels, predictions) if p is not None]
    return Confusion(
        tp=sum(1 for y, p in pairs if y == 1 and p == 1),
        fp=sum(1 for y, p in pairs if y == 0 and p == 1),
        tn=sum(1 for y, p in pairs if y == 0 and p == 0),
        fn=sum(1 for y, p in pairs if y == 1 and p == 0),
    )


def balanced_accuracy(labels: Sequence[int], predictions: Sequence[int | None]) -> float | None:
    """Balanced accuracy ``(TPR + TNR) / 2`` over answered items.

    ``TPR = TP / (TP + FN)``, ``TNR = TN / (TN + FP)``. Items with prediction None (malformed
    answers) are left out. None when the answered items lack a positive or a negative label.
    A classifier answering always Yes (or always No) scores 0.5.
    """
    c = confusion(labels, predictions)
    if c.tp + c.fn == 0 or c.tn + c.fp == 0:
        return None
    tpr = c.tp / (c.tp + c.fn)
    tnr = c.tn / (c.tn + c.fp)
    return (tpr + tnr) / 2


def roc_auc(labels: Sequence[int], scores: Sequence[float | None]) -> float | None:
    """ROC-AUC as the Mann-Whitney statistic ``P(s_pos > s_neg) + ½ P(s_pos = s_neg)``.

    Over all (positive, negative) pairs of items whose score is not None: a pair counts 1 when the
    positive scores higher, ½ on a tie, 0 otherwise; AUC is the mean. None when there is no
    scored positive or no scored negative.
    """
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    pos = np.array([s for y, s in zip(labels, scores) if s is not None and int(y) == 1], dtype=float)
    neg = np.array([s for y, s in zip(labels, scores) if s is not None and int(y) == 0], dtype=float)
    if pos.size == 0 or neg.size == 0:
        return None
    diff = pos[:, None] - neg[None, :]
    wins = (diff > 0).sum() + 0.5 * (diff == 0).sum()
    return float(wins / diff.size)


@dataclass
class HeadScore:
    """How well an explanation predicts where a head is active, on the test prompts.

    Attributes:
        neuron, head, token: which (neuron, head) pair.
        explanation: the LLM's explanation (None when skipped before explaining).
        tp, fp, tn, fn: confusion counts over answered test prompts (positive = active).
        n_test: number of test prompts; n_malformed: answers that were neither Yes nor No.
        balanced_accuracy: ``(TPR + TNR) / 2`` over answered prompts, None when skipped.
        roc_auc: AUC of ``P(Yes)`` where log-probabilities were given, else None.
        skipped: True when no score could be computed; skip_reason says why.
        labels, answers: the per-prompt labels (1 = active) and parsed answers, in test order
            (active prompts first).
        prompts: the test prompts in the same order, when known (empty otherwise).
    """

    neuron: str
    head: str
    token: str
    explanation: str | None = None
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    n_test: int = 0
    n_malformed: int = 0
    balanced_accuracy: float | None = None
    roc_auc: float | None = None
    skipped: bool = False
    skip_reason: str | None = None
    labels: list[int] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def to_dict(self, items: bool = False) -> dict[str, Any]:
        """JSON-ready dict; with ``items=True`` also the per-prompt labels, answers (and prompts)."""
        d: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "neuron", "head", "token", "explanation", "tp", "fp", "tn", "fn", "n_test",
                "n_malformed", "balanced_accuracy", "roc_auc", "skipped", "skip_reason",
            )
        }
        if items:
            d["items"] = [
                {"label": y, "answer": a.text, "prediction": a.prediction, "p_yes": a.p_yes}
                for y, a in zip(self.labels, self.answers)
            ]
            for item, prompt in zip(d["items"], self.prompts):
                item["prompt"] = prompt
        return d


def skip_reason_for(test: HeadExamples) -> str | None:
    """Why ``test`` cannot be scored (all prompts one label, or none: balanced accuracy undefined), else None."""
    return both_classes(len(test.active), len(test.inactive), "test prompt")


def score_head(
    labels: Sequence[int],
    answers: Sequence[Answer],
    *,
    neuron: str = "",
    head: str = "",
    token: str = "",
    explanation: str | None = None,
) -> HeadScore:
    """Score parsed answers against labels (1 = head active).

    Skipped (with a reason) when the labels are all one class, or when the answered (not
    malformed) prompts are; malformed answers are counted in ``n_malformed`` and left out of the
    confusion counts and the balanced accuracy.
    """
    if len(labels) != len(answers):
        raise ValueError(f"{len(labels)} labels but {len(answers)} answers")
    predictions = [a.prediction for a in answers]
    c = confusion(labels, predictions)
    result = HeadScore(
        neuron=neuron, head=head, token=token, explanation=explanation,
        tp=c.tp, fp=c.fp, tn=c.tn, fn=c.fn,
        n_test=len(labels),
        n_malformed=sum(1 for p in predictions if p is None),
        labels=[int(y) for y in labels],
        answers=list(answers),
    )
    n_pos = sum(1 for y in labels if int(y) == 1)
    if n_pos == 0 or n_pos == len(labels):
        result.skipped = True
        result.skip_reason = f"all {len(labels)} test prompts have label {int(n_pos > 0)}: balanced accuracy undefined"
        return result
    result.balanced_accuracy = balanced_accuracy(labels, predictions)
    if result.balanced_accuracy is None:
        result.skipped = True
        result.skip_reason = (
            f"{result.n_malformed} of {len(labels)} answers malformed and the answered prompts are "
            "all one label: balanced accuracy undefined"
        )
    result.roc_auc = roc_auc(labels, [a.p_yes for a in answers])
    return result


@dataclass(frozen=True)
class Summary:
    """Distribution of one metric over heads.

    Attributes:
        count: number of values (heads not skipped and with a value).
        mean: mean, None when count == 0.
        std: sample standard deviation (N − 1 denominator), None when count < 2.
        bins: ``(low, high, count)`` per histogram bin over [0, 1]; the last bin includes 1.0.
        n_skipped: heads left out (skipped or without this metric).
    """

    count: int
    mean: float | None
    std: float | None
    bins: list[tuple[float, float, int]]
    n_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: count, mean, std, n_skipped (as :func:`render_summary` counts them) and the histogram."""
        return {"count": self.count, "mean": self.mean, "std": self.std, "n_skipped": self.n_skipped,
                "histogram": [{"low": lo, "high": hi, "count": c} for lo, hi, c in self.bins]}


def summarize(values: Sequence[float], n_bins: int = 10, n_skipped: int = 0) -> Summary:
    """Mean, sample std (``sqrt(Σ(x − mean)² / (N − 1))``) and a histogram of values in [0, 1]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    x = np.asarray(values, dtype=float)
    if x.size and (np.any(x < 0) or np.any(x > 1) or not np.all(np.isfinite(x))):
        raise ValueError("summarize: values must lie in [0, 1]")
    counts, edges = np.histogram(x, bins=n_bins, range=(0.0, 1.0))
    bins = [(float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(n_bins)]
    mean = float(x.mean()) if x.size else None
    std = float(x.std(ddof=1)) if x.size >= 2 else None
    return Summary(count=int(x.size), mean=mean, std=std, bins=bins, n_skipped=n_skipped)


def summarize_scores(scores: Sequence[HeadScore], metric: str = "balanced_accuracy", n_bins: int = 10) -> Summary:
    """:func:`summarize` one metric (``"balanced_accuracy"`` or ``"roc_auc"``) over heads."""
    if metric not in ("balanced_accuracy", "roc_auc"):
        raise MinitfError(f"metric: expected balanced_accuracy or roc_auc, got {metric!r}")
    values = [getattr(s, metric) for s in scores if not s.skipped and getattr(s, metric) is not None]
    return summarize(values, n_bins=n_bins, n_skipped=len(scores) - len(values))


def render_summary(summary: Summary, label: str = "balanced accuracy", width: int = 40) -> list[str]:
    """Text lines: a header with mean ± std and count, then one ``#`` bar per histogram bin.

    Example::

        balanced accuracy: mean 0.712 ± 0.103 (std, N-1), n=12, 2 skipped
          [0.0, 0.1) |                                          0
          ...
          [0.9, 1.0] | ########################################  3
    """
    if summary.count == 0:
        header = f"{label}: no values, n=0"
    elif summary.std is None:
        header = f"{label}: mean {summary.mean:.3f} (one value), n=1"
    else:
        header = f"{label}: mean {summary.mean:.3f} ± {summary.std:.3f} (std, N-1), n={summary.count}"
    if summary.n_skipped:
        header += f", {summary.n_skipped} skipped"
    lines = [header]
    edges = [lo for lo, _, _ in summary.bins] + [hi for _, hi, _ in summary.bins[-1:]]
    digits = next((d for d in range(1, 4) if all(abs(round(e, d) - e) < 1e-9 for e in edges)), 4)
    peak = max((c for _, _, c in summary.bins), default=0)
    for i, (lo, hi, c) in enumerate(summary.bins):
        close = "]" if i == len(summary.bins) - 1 else ")"
        bar = "#" * (max(1, round(c / peak * width)) if c else 0)
        lines.append(f"  [{lo:.{digits}f}, {hi:.{digits}f}{close} | {bar:<{width}} {c:>3}")
    return lines


# --------------------------------------------------------------------------- the paper's protocols (minitf.protocol)
# notebooks/7_results.ipynb (scores) and notebooks/8_head_ablation.ipynb (ablation), neo2024 and neo2023.
def authors_answer(text: str) -> int | None:
    """1 for exactly "Yes", 0 for exactly "No", None for anything else (" Yes", "yes", "Yes." count nowhere)."""
    return {"Yes": 1, "No": 0}.get(text)


def authors_score(c: Confusion, scoring: str) -> float | None:
    """A pair's score from its confusion counts (answers exactly "Yes"/"No" only):

    "drop-undefined" (neo2024): None (the pair is dropped) when tp + fn = 0 or tn + fp = 0, else (TPR + TNR)/2;
    "rate-fallback" (neo2023): TNR when TPR is undefined, TPR when TNR is, (TPR + TNR)/2 otherwise, None when
        both are (the authors' later sort would crash on it)."""
    tpr = c.tp / (c.tp + c.fn) if c.tp + c.fn else None
    tnr = c.tn / (c.tn + c.fp) if c.tn + c.fp else None
    if scoring == "drop-undefined":
        return None if tpr is None or tnr is None else (tpr + tnr) / 2
    if scoring == "rate-fallback":
        if tpr is None:
            return tnr
        if tnr is None:
            return tpr
        return (tpr + tnr) / 2
    raise ValueError(f"unknown scoring {scoring!r}; choose drop-undefined or rate-fallback")


def plain_accuracy(c: Confusion) -> float | None:
    """(tp + tn) / (tp + tn + fp + fn), None without a counted answer."""
    n = c.tp + c.tn + c.fp + c.fn
    return (c.tp + c.tn) / n if n else None


def skew(values: Sequence[float]) -> float:
    """The biased sample skewness g₁ = m₃ / m₂^{3/2}, m_k = mean((x − x̄)^k) (scipy.stats.skew, bias=True);
    nan for no values or when all values are equal (m₂ = 0; scipy gives nan there too)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return float("nan")
    d = x - x.mean()
    m2, m3 = (d * d).mean(), (d ** 3).mean()
    return float(m3 / m2 ** 1.5) if m2 > 0 else float("nan")


def skewtest_greater(values: Sequence[float]) -> tuple[float, float]:
    """D'Agostino's skewness test, H₁: skew > 0 (scipy.stats.skewtest(x, alternative="greater")): (Z, p).
    With n values and g₁ = ``skew``:

        y  = g₁ √((n+1)(n+3) / (6(n−2)))
        β₂ = 3(n² + 27n − 70)(n+1)(n+3) / ((n−2)(n+5)(n+7)(n+9))
        W² = √(2(β₂ − 1)) − 1,   δ = 1/√(½ ln W²),   α = √(2/(W² − 1))
        Z  = δ asinh(y/α) = δ ln(y/α + √((y/α)² + 1)),   p = P(N(0,1) > Z) = ½ erfc(Z/√2)

    Needs n ≥ 8 (scipy refuses fewer): MinitfError."""
    x = np.asarray(values, np.float64)
    n = x.size
    if n < 8:
        raise MinitfError(f"skewtest needs at least 8 values, got {n}")
    b2 = skew(x)
    y = b2 * math.sqrt((n + 1) * (n + 3) / (6.0 * (n - 2)))
    beta2 = 3.0 * (n * n + 27 * n - 70) * (n + 1) * (n + 3) / ((n - 2.0) * (n + 5) * (n + 7) * (n + 9))
    W2 = -1 + math.sqrt(2 * (beta2 - 1))
    delta = 1 / math.sqrt(0.5 * math.log(W2))
    alpha = math.sqrt(2.0 / (W2 - 1))
    y = 1.0 if y == 0 else y
    z = delta * math.log(y / alpha + math.sqrt((y / alpha) ** 2 + 1))
    return float(z), 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class PaperAggregates:
    """The paper's aggregates of per-pair scores: mean and population std (np.std), biased skew, D'Agostino's
    skewtest (H₁: skew > 0; None under 8 values), and the share of scores ≥ 0.8 and ≥ 0.9 (issue 20's
    comparison table; the authors' notebooks plot histograms instead)."""

    count: int
    mean: float | None
    std: float | None
    skew: float | None
    skewtest_z: float | None
    skewtest_p: float | None
    share_08: float | None
    share_09: float | None


def paper_aggregates(values: Sequence[float]) -> PaperAggregates:
    """``PaperAggregates`` of ``values`` (None entries are left out, as the authors' dropped pairs)."""
    x = np.asarray([v for v in values if v is not None], np.float64)
    if x.size == 0:
        return PaperAggregates(0, None, None, None, None, None, None, None)
    z, p = skewtest_greater(x) if x.size >= 8 else (None, None)
    return PaperAggregates(int(x.size), float(x.mean()), float(x.std()), skew(x), z, p,
                           float((x >= 0.8).mean()), float((x >= 0.9).mean()))


@dataclass(frozen=True)
class PairAblation:
    """One (neuron, head) pair's ablation (notebook 8): mean drop of p(token) on its active and on its inactive
    prompts (None when a group is empty: the authors' NaN, dropped later)."""

    neuron: str
    head: str
    active: float | None
    inactive: float | None


def pair_ablation(neuron: str, head: str, drops: Sequence[float], active: Sequence[bool]) -> PairAblation:
    """act_diff_relevant / act_diff_irrelevant: mean(p_clean − p_ablated) over the active / inactive prompts."""
    d, a = np.asarray(drops, np.float64), np.asarray(active, bool)
    return PairAblation(neuron, head, float(d[a].mean()) if a.any() else None,
                        float(d[~a].mean()) if (~a).any() else None)


@dataclass(frozen=True)
class PairedKS:
    """The paper's ablation statistic: two-sample KS between the pairs' active means and inactive means
    (each pair's None dropped from its own side, as the authors' NaN), with their means and medians."""

    n_active: int
    n_inactive: int
    d: float | None
    p: float | None
    mean_active: float | None
    mean_inactive: float | None
    median_active: float | None
    median_inactive: float | None


def paired_ks(pairs: Sequence[PairAblation]) -> PairedKS:
    """KS across pairs (scipy.stats.ks_2samp in the authors' notebook; here ``minitf.ablation.ks_2samp``, whose
    p is the asymptotic one — scipy's default is exact for small samples)."""
    from minitf.ablation import ks_2samp

    a = np.asarray([p.active for p in pairs if p.active is not None], np.float64)
    b = np.asarray([p.inactive for p in pairs if p.inactive is not None], np.float64)
    d, pv = ks_2samp(a, b) if a.size and b.size else (None, None)

    def stat(f, x):
        return float(f(x)) if x.size else None

    return PairedKS(int(a.size), int(b.size), d, pv, stat(np.mean, a), stat(np.mean, b), stat(np.median, a),
                    stat(np.median, b))
