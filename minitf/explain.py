"""Step 4 of Neo, Cohen & Barez (EMNLP 2024): explain when an attention head is active, and score it.

For a next-token neuron (e.g. one that promotes " Israel") and a *differential* attention head
(active on 25-75 % of the neuron's top prompts), the trace gives an active / inactive split of
prompts. An LLM

1. writes an explanation of when the head is active from the *train* examples
   (:func:`explain_messages`), and
2. answers Yes/No for each held-out *test* prompt from the explanation alone
   (:func:`score_messages`).

The explanation's score is the balanced accuracy of those answers,
``(TPR + TNR) / 2`` (:func:`balanced_accuracy`); where the server returns log-probabilities we also
report the ROC-AUC of ``P(Yes)`` (:func:`roc_auc`).

This module holds the prompts, the answer parsing and the arithmetic; it never talks to the
network itself. :func:`explain_head` and :func:`evaluate_head` drive any object with the
``complete`` / ``complete_many`` methods of :class:`minitf.llm.LLM`.

How an example is shown to the LLM (:func:`format_example`)
    The neuron's token is appended to the prompt text (``prompt + token``), exactly as the model
    would continue it. Line breaks (``\\r\\n``, ``\\r``, ``\\n``) become the visible mark ``⏎``
    (U+23CE) so that each example stays on its own ``*`` bullet line, and a ``\"\"\"`` inside a
    prompt becomes ``'''`` so that it cannot close the triple-quoted block early. Nothing else is
    changed (leading spaces are kept).

Changing any prompt text or request parameter must bump :data:`PROMPT_FORMAT_VERSION`: it is part
of the LLM cache key, so old cached answers are not reused for a new prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from minitf.errors import MinitfError
from minitf.hub import default_cache_dir  # noqa: F401  (the CLI and the report take it from here)

PROMPT_FORMAT_VERSION = "1"
"""Version of the prompt wording and request parameters; part of every LLM cache key."""

NEWLINE_MARK = "\u23ce"  # ⏎
DEFAULT_MAX_EXAMPLES = 20
"""Default number of active and of inactive examples (each) shown in the explanation prompt."""

EXPLAIN_PARAMS: dict[str, Any] = {"max_tokens": 256, "temperature": 0}
"""Request parameters for the explanation (two to three sentences)."""

SCORE_PARAMS: dict[str, Any] = {"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5}
"""Request parameters for one Yes/No answer, with the top-5 log-probabilities of the first token."""


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadExamples:
    """Prompts (decoded text) on which one head is active / inactive for one neuron.

    Attributes:
        neuron: the neuron's name, e.g. ``"L4N100"``.
        head: the head's name, e.g. ``"L2H3"``.
        token: the token the neuron promotes, e.g. ``" Israel"`` (with its leading space).
        active: prompts on which the head is active.
        inactive: prompts on which the head is inactive.
    """

    neuron: str
    head: str
    token: str
    active: list[str]
    inactive: list[str]


def split_examples(
    ex: HeadExamples, test_fraction: float = 0.5, seed: int = 0
) -> tuple[HeadExamples, HeadExamples]:
    """Shuffle each class with ``seed`` and split it into (train, test), stratified by class.

    Each class contributes ``round(len(class) * test_fraction)`` prompts to the test split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise MinitfError(f"test_fraction: must be between 0 and 1, got {test_fraction}")
    rng = random.Random(seed)

    def split(prompts: list[str]) -> tuple[list[str], list[str]]:
        shuffled = list(prompts)
        rng.shuffle(shuffled)
        n_test = round(len(shuffled) * test_fraction)
        return shuffled[n_test:], shuffled[:n_test]

    active_train, active_test = split(ex.active)
    inactive_train, inactive_test = split(ex.inactive)
    return (
        replace(ex, active=active_train, inactive=inactive_train),
        replace(ex, active=active_test, inactive=inactive_test),
    )


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def format_text(text: str) -> str:
    """Make ``text`` safe for one bullet line: line breaks → ``⏎``, ``\"\"\"`` → ``'''``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", NEWLINE_MARK)
    return text.replace('"""', "'''")


def format_example(prompt: str, token: str) -> str:
    """One example as the LLM sees it: the prompt with the neuron's token appended, made safe."""
    return format_text(prompt + token)


def _bullets(prompts: Sequence[str], token: str) -> str:
    return "\n".join(f"* {format_example(p, token)}" for p in prompts)


EXPLAIN_SYSTEM = (
    "You are an expert in the interpretability of neural language models. "
    "You explain the behaviour of model components concisely, concretely and accurately."
)

EXPLAIN_TEMPLATE = """\
We are studying attention heads in a transformer language model. The attention head we are \
looking at helps the model predict that the next token is "{token}", but it is active only in \
some documents.

Each example below is a document that ends with the token "{token}". Line breaks inside a \
document are shown as {newline}.

Examples where the head is active:
\"\"\"
{active}
\"\"\"

Examples where the head is inactive:
\"\"\"
{inactive}
\"\"\"

When is the head active? Explain what distinguishes the documents where it is active from those \
where it is inactive. Answer in two to three sentences."""


def explain_messages(ex: HeadExamples, max_examples: int = DEFAULT_MAX_EXAMPLES) -> list[dict[str, str]]:
    """System + user chat messages asking the LLM when the head is active.

    Shows the first ``max_examples`` active and the first ``max_examples`` inactive prompts
    (shuffle beforehand, e.g. with :func:`split_examples`, if the order is meaningful).
    """
    if max_examples < 1:
        raise MinitfError(f"max_examples: must be at least 1, got {max_examples}")
    if not ex.active or not ex.inactive:
        raise MinitfError(
            f"{ex.neuron} {ex.head}: need both active and inactive examples to explain the head "
            f"(got {len(ex.active)} active, {len(ex.inactive)} inactive)"
        )
    user = EXPLAIN_TEMPLATE.format(
        token=format_text(ex.token),
        newline=NEWLINE_MARK,
        active=_bullets(ex.active[:max_examples], ex.token),
        inactive=_bullets(ex.inactive[:max_examples], ex.token),
    )
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


SCORE_SYSTEM = (
    "You predict whether an attention head in a language model is active on a document, using only "
    "an explanation of when the head is active. Answer with a single word: Yes or No."
)

SCORE_TEMPLATE = """\
An attention head in a language model helps the model predict that the next token is "{token}". \
Here is an explanation of when the head is active:

{explanation}

Here is an example document, which ends with the token "{token}". Line breaks inside the \
document are shown as {newline}.
\"\"\"
* {example}
\"\"\"

Is the head active on this example? Answer Yes or No."""


def score_messages(explanation: str, token: str, prompt: str) -> list[dict[str, str]]:
    """System + user chat messages asking whether the head is active on ``prompt``.

    Send them with :data:`SCORE_PARAMS` (one token, temperature 0, top-5 log-probabilities).
    """
    user = SCORE_TEMPLATE.format(
        token=format_text(token),
        explanation=explanation.strip(),
        newline=NEWLINE_MARK,
        example=format_example(prompt, token),
    )
    return [{"role": "system", "content": SCORE_SYSTEM}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------

_STRIP = string.whitespace + string.punctuation


def normalize_answer(text: str) -> int | None:
    """``1`` for yes, ``0`` for no, ``None`` (malformed) for anything else.

    The first word of ``text`` is taken, surrounding whitespace and punctuation stripped and
    case-folded: ``" Yes"``, ``"YES."``, ``"yes,"`` → 1; ``"No"`` → 0; ``"Maybe"``, ``""``,
    ``"Y"`` → None. A malformed answer is never counted as No.
    """
    words = text.split()
    if not words:
        return None
    word = words[0].strip(_STRIP).casefold()
    return {"yes": 1, "no": 0}.get(word)


@dataclass(frozen=True)
class Answer:
    """One parsed Yes/No answer.

    Attributes:
        text: the raw text the LLM returned.
        prediction: 1 (Yes), 0 (No) or None (malformed).
        p_yes: ``P(yes) / (P(yes) + P(no))`` from the first token's top log-probabilities, or None
            when the server gave none (or none of the top tokens was yes/no).
    """

    text: str
    prediction: int | None
    p_yes: float | None


def yes_probability(top_logprobs: Sequence[dict[str, Any]]) -> float | None:
    """``P(yes) / (P(yes) + P(no))`` from a list of ``{"token": str, "logprob": float}``.

    ``P(yes)`` sums ``exp(logprob)`` over the top tokens that normalize to yes (``"Yes"``,
    ``" yes"``, ``"YES"`` …, see :func:`normalize_answer`), likewise ``P(no)``. A top list with
    yes-tokens but no no-tokens gives 1.0 (and vice versa); with neither it gives None.
    """
    p = {0: 0.0, 1: 0.0}
    for entry in top_logprobs:
        label = normalize_answer(str(entry.get("token", "")))
        logprob = entry.get("logprob")
        if label is not None and logprob is not None:
            p[label] += math.exp(float(logprob))
    total = p[0] + p[1]
    return p[1] / total if total > 0 else None


def parse_response(response: dict[str, Any]) -> Answer:
    """Turn a response of :meth:`minitf.llm.LLM.complete` (``text``, ``logprobs``) into an Answer.

    ``logprobs`` is the list of per-token entries ``{"token", "logprob", "top_logprobs"}``; the
    first entry's ``top_logprobs`` (or, lacking those, the token itself) gives ``p_yes``.
    """
    text = response.get("text") or ""
    p_yes = None
    logprobs = response.get("logprobs") or []
    if logprobs:
        first = logprobs[0]
        top = first.get("top_logprobs") or [first]
        p_yes = yes_probability(top)
    return Answer(text=text, prediction=normalize_answer(text), p_yes=p_yes)


# --------------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------------


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
    """Why ``test`` cannot be scored (all prompts one label, or none), else None."""
    if not test.active and not test.inactive:
        return "no test prompts"
    if not test.active:
        return f"all {len(test.inactive)} test prompts are inactive: balanced accuracy undefined"
    if not test.inactive:
        return f"all {len(test.active)} test prompts are active: balanced accuracy undefined"
    return None


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


# --------------------------------------------------------------------------------------------
# Driving an LLM
# --------------------------------------------------------------------------------------------


class CompletionClient(Protocol):
    """What :func:`explain_head` / :func:`evaluate_head` need (see :class:`minitf.llm.LLM`)."""

    def complete(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]: ...

    def complete_many(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]: ...


def explain_head(llm: CompletionClient, train: HeadExamples, max_examples: int = DEFAULT_MAX_EXAMPLES) -> str:
    """Ask the LLM when the head is active; the explanation text, stripped (may be empty)."""
    response = llm.complete(explain_messages(train, max_examples), **EXPLAIN_PARAMS)
    return (response.get("text") or "").strip()


def score_explanation(llm: CompletionClient, explanation: str, test: HeadExamples) -> HeadScore:
    """Ask the LLM Yes/No for every test prompt (active ones first) and score the answers."""
    prompts = list(test.active) + list(test.inactive)
    labels = [1] * len(test.active) + [0] * len(test.inactive)
    requests = [{"messages": score_messages(explanation, test.token, p), **SCORE_PARAMS} for p in prompts]
    answers = [parse_response(r) for r in llm.complete_many(requests)]
    result = score_head(
        labels, answers, neuron=test.neuron, head=test.head, token=test.token, explanation=explanation
    )
    result.prompts = prompts
    return result


def evaluate_head(
    llm: CompletionClient,
    train: HeadExamples,
    test: HeadExamples,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> HeadScore:
    """Explain the head from ``train``, then score the explanation on ``test``.

    Skips (without calling the LLM) when the test prompts are all one label or the train prompts
    lack a class, and after explaining when the explanation is empty.
    """
    skipped = HeadScore(neuron=train.neuron, head=train.head, token=train.token, skipped=True)
    reason = skip_reason_for(test)
    if reason is None and (not train.active or not train.inactive):
        reason = f"train split has {len(train.active)} active and {len(train.inactive)} inactive prompts: need both"
    if reason is not None:
        skipped.skip_reason = reason
        skipped.n_test = len(test.active) + len(test.inactive)
        return skipped
    explanation = explain_head(llm, train, max_examples)
    if not explanation:
        skipped.explanation = explanation
        skipped.skip_reason = "the LLM returned an empty explanation"
        return skipped
    return score_explanation(llm, explanation, test)


# --------------------------------------------------------------------------------------------
# Summary over heads
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# From a trace, and where the results live
# --------------------------------------------------------------------------------------------


def head_examples(trace: dict[str, Any], head: str) -> HeadExamples:
    """The active / inactive prompts (decoded text) of ``head`` in a trace (see ``minitf.trace``)."""
    if not any(h["head"] == head for h in trace["heads"]):
        raise MinitfError(f"--head {head}: not a candidate head of {trace['neuron']['name']} "
                          "(heads of earlier layers; --include-same-layer adds its own layer)")
    active = [p["text"] for p in trace["prompts"] if head in p["active_heads"]]
    inactive = [p["text"] for p in trace["prompts"] if head not in p["active_heads"]]
    return HeadExamples(trace["neuron"]["name"], head, trace["neuron"]["token"]["str"], active, inactive)


class ResultStore:
    """Explanations and scores of one model's neurons, one JSON file per neuron, written atomically:
    ``<cache_dir>/results/<model folder name>-<hash of its path>/<neuron>.json`` → {head: {...}}."""

    def __init__(self, cache_dir: Path, model_folder: Path | str, neuron: str):
        folder = Path(model_folder).resolve()
        tag = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
        self.path = Path(cache_dir) / "results" / f"{folder.name}-{tag}" / f"{neuron}.json"

    def load(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise MinitfError(f"{self.path}: unreadable results file ({e})") from None

    def update(self, head: str, **fields: Any) -> None:
        data = self.load()
        data.setdefault(head, {}).update(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)


def _traced_heads(model, neuron, split: str, head: str | None, trace_options: dict[str, Any]):
    """Trace ``neuron`` on a split's top prompts; the heads to explain (``head``, or the differential ones)."""
    from minitf.names import parse_head
    from minitf.trace import trace_neuron

    result = trace_neuron(model, neuron, split=split, ablate=0, **trace_options)
    if head:
        return result, [str(parse_head(head, model.cfg.n_layer, model.cfg.n_head))]
    return result, result["differential_heads"]


def explain_neuron(model, neuron, llm: CompletionClient | None, store: ResultStore, head: str | None = None,
                   **trace_options: Any) -> dict[str, Any]:
    """Explain each differential head of ``neuron`` (or ``head``) from its top train-split prompts.

    With ``llm=None`` (a dry run) nothing is called and each head's exact messages are returned instead.
    Returns {"token", "n_prompts", "heads": {head: {"n_active", "n_inactive", "explanation" | "messages" |
    "skip_reason"}}}; explanations are saved in ``store``.
    """
    result, heads = _traced_heads(model, neuron, "train", head, trace_options)
    out: dict[str, Any] = {"token": result["neuron"]["token"]["str"], "n_prompts": len(result["prompts"]), "heads": {}}
    for name in heads:
        examples = head_examples(result, name)
        entry: dict[str, Any] = {"n_active": len(examples.active), "n_inactive": len(examples.inactive)}
        out["heads"][name] = entry
        if not examples.active or not examples.inactive:
            entry["skip_reason"] = "the train prompts need both active and inactive examples"
        elif llm is None:
            entry["messages"] = explain_messages(examples)
        else:
            entry["explanation"] = explain_head(llm, examples)
            store.update(name, explanation=entry["explanation"], n_active=entry["n_active"],
                         n_inactive=entry["n_inactive"], rule=trace_options.get("rule", "sigma2"),
                         scores=trace_options.get("scores", "paper"), prompt_format=PROMPT_FORMAT_VERSION)
    return out


def score_neuron(model, neuron, llm: CompletionClient, store: ResultStore, head: str | None = None,
                 **trace_options: Any) -> tuple[list[HeadScore], dict[str, str]]:
    """Score the stored explanations of ``neuron``'s heads on its top test-split prompts, labelled by the same
    rule and head scores. Returns (scores, {head: skip reason}); scores are saved in ``store``."""
    stored = store.load()
    explained = {h: r["explanation"] for h, r in stored.items() if r.get("explanation")}
    for h in explained:
        # explanations stored before --scores existed were made on whole effects: "exact"
        made = {"rule": stored[h].get("rule"), "scores": stored[h].get("scores", "exact"),
                "prompt_format": stored[h].get("prompt_format")}
        now = {"rule": trace_options.get("rule", "sigma2"), "scores": trace_options.get("scores", "paper"),
               "prompt_format": PROMPT_FORMAT_VERSION}
        if made != now:
            raise MinitfError(f"{store.path}: the explanation of {h} was made with {made}, this score uses {now}: "
                              "rerun 'python cli.py explain' with the same --rule and --scores")
    if head:
        from minitf.names import parse_head

        wanted = str(parse_head(head, model.cfg.n_layer, model.cfg.n_head))
        explained = {h: e for h, e in explained.items() if h == wanted}
    if not explained:
        raise MinitfError(f"{store.path}: no explanation for {neuron}{' ' + head if head else ''}: "
                          "run 'python cli.py explain' first")
    result, _ = _traced_heads(model, neuron, "test", None, trace_options)
    scores, skipped = [], {}
    for name, explanation in sorted(explained.items()):
        test = head_examples(result, name)
        if reason := skip_reason_for(test):
            skipped[name] = reason
            continue
        s = score_explanation(llm, explanation, test)
        store.update(name, balanced_accuracy=s.balanced_accuracy, roc_auc=s.roc_auc, n_test=s.n_test,
                     n_malformed=s.n_malformed)
        scores.append(s)
    return scores, skipped
