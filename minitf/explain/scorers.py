"""Scorers of a head's explanation, each beside the paper's (``--scorers paper,detection,fuzz,simulation``).

* ``paper``: the protocol's Yes/No classification of the test prompts (``minitf.explain.driver.score_explanation``),
  its balanced accuracy with the Beta-posterior interval (``minitf.explain.uncertainty``);
* ``detection``: Yes/No on the test prompts *and* on negatives that are not top-activating (corpus contexts where
  the neuron is weak or silent), labelled by the same head rule;
* ``fuzz``: the prompt with the head's top source tokens (by context part) marked vs as many random tokens marked;
  the LLM says whether the marking fits the explanation;
* ``simulation``: the LLM predicts 0–10 how strongly the head drives the neuron on each test prompt; Pearson and
  Spearman correlation with the head's context part.

Every scorer returns a :class:`ScorerResult`; its baselines (a random explanation, constant answers, the
token-only explanation) are :class:`Baseline` records scored the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

SCORERS = ("paper", "detection", "fuzz", "simulation")
"""Every scorer's name, in the order they run and print; ``paper`` is the default and always first."""


def parse_scorers(spec: str | None) -> tuple[str, ...]:
    """``"paper,fuzz"`` → ``("paper", "fuzz")`` in :data:`SCORERS`'s order; ``paper`` is always included.

    Raises ValueError naming the unknown scorer (the CLI turns it into a usage error).
    """
    names = [s.strip() for s in (spec or "paper").split(",") if s.strip()]
    unknown = [s for s in names if s not in SCORERS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a scorer (choose from {', '.join(SCORERS)})")
    return tuple(s for s in SCORERS if s in names or s == "paper")


@dataclass(frozen=True)
class PairToScore:
    """One (neuron, head) pair a scorer scores.

    Attributes:
        head: the head's name (``L1H2``).
        explanation: the LLM's explanation of when the head is active.
        test: the test prompts (``minitf.explain.prompts.HeadExamples``: active first), labelled by the head rule.
    """

    head: str
    explanation: str
    test: Any


@dataclass(frozen=True)
class ScoringContext:
    """What every scorer of one neuron may use besides the pair (the same for all its heads).

    Attributes:
        model: the loaded model (``minitf.load``).
        neuron: the neuron's name (``L3N872``); token: its token's text.
        protocol: the protocol's name (``minitf.protocol``): its classify prompt, parameters and answers.
        seed: the seed of every random draw (``--seed``).
        train, test: the neuron's train- and test-prompt traces (``minitf.trace.Trace``; None when not at hand).
        corpus: the corpus the prompts were mined from (None: the model's); index: its loaded neuron index, or None.
    """

    model: Any
    neuron: str
    token: str
    protocol: str
    seed: int = 0
    train: Any = None
    test: Any = None
    corpus: Any = None
    index: Any = None


PLANNERS: dict[str, Callable[[ScoringContext, PairToScore], list[dict[str, Any]]]] = {}
"""Scorer name → the exact chat requests (``{"messages", **params}``) it would send for one pair, cached or not.
``score --dry-run`` and the ``--max-calls`` check count them (deduplicated, less the cached ones) before any call.
``paper`` is not here (its requests and baselines: ``minitf.explain.baselines``); detection, fuzz and simulation
register theirs."""

RUNNERS: dict[str, Callable[[Any, ScoringContext, PairToScore], "ScorerResult"]] = {}
"""Scorer name → score one pair with an LLM client (``complete`` / ``complete_many`` of
``minitf.explain.llm.LLM``), returning a :class:`ScorerResult` with its baselines. Same keys as :data:`PLANNERS`."""


@dataclass(frozen=True)
class Baseline:
    """A baseline scored like the explanation it stands beside.

    Attributes:
        name: ``random_explanation`` (another pair's explanation, drawn with the seed), ``constant_yes``,
            ``constant_no`` or ``token_only`` (``the next token is "X"``).
        value: its score in the scorer's metric (None when undefined).
        interval: its 95 % interval, when the scorer gives one.
        explanation: the explanation text scored (None for constant answers).
        source: where a random explanation came from (``L3N872/L1H2``), else None.
    """

    name: str
    value: float | None
    interval: tuple[float, float] | None = None
    explanation: str | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value,
                "interval": None if self.interval is None else list(self.interval),
                "explanation": self.explanation, "source": self.source}


@dataclass(frozen=True)
class ScorerResult:
    """One scorer's verdict on one (neuron, head) explanation.

    Attributes:
        scorer: a name of :data:`SCORERS`.
        metric: ``balanced_accuracy`` (paper, detection, fuzz) or ``pearson`` (simulation).
        value: the score in that metric; None when undefined (skip_reason says why).
        interval: its 95 % interval (Beta posterior for balanced accuracy; Fisher z for a correlation).
        p_value: the chance of a score this good with no signal (P(BA ≤ ½) under the posterior, or the
            permutation / correlation p-value; ``detail`` says which).
        roc_auc, roc_auc_interval: where the server gave log-probabilities (Hanley–McNeil interval).
        n: items scored (test prompts, prompts + negatives, marked pairs, simulated prompts).
        calls: LLM requests this scorer made or would make (cache hits included).
        baselines: the baselines scored the same way.
        skip_reason: why ``value`` is None.
        detail: scorer-specific, JSON-ready (e.g. Spearman's ρ, the negatives' source, the p-value's kind).
    """

    scorer: str
    metric: str
    value: float | None
    interval: tuple[float, float] | None = None
    p_value: float | None = None
    roc_auc: float | None = None
    roc_auc_interval: tuple[float, float] | None = None
    n: int = 0
    calls: int = 0
    baselines: tuple[Baseline, ...] = ()
    skip_reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "metric": self.metric, "value": self.value,
                "interval": None if self.interval is None else list(self.interval), "p_value": self.p_value,
                "roc_auc": self.roc_auc,
                "roc_auc_interval": None if self.roc_auc_interval is None else list(self.roc_auc_interval),
                "n": self.n, "calls": self.calls, "baselines": [b.to_json() for b in self.baselines],
                "skip_reason": self.skip_reason, "detail": self.detail}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ScorerResult":
        pair = lambda v: None if v is None else (float(v[0]), float(v[1]))  # noqa: E731
        return cls(scorer=d["scorer"], metric=d["metric"], value=d["value"], interval=pair(d["interval"]),
                   p_value=d["p_value"], roc_auc=d["roc_auc"], roc_auc_interval=pair(d["roc_auc_interval"]),
                   n=d["n"], calls=d["calls"], skip_reason=d["skip_reason"], detail=d["detail"],
                   baselines=tuple(Baseline(b["name"], b["value"], pair(b["interval"]), b["explanation"], b["source"])
                                   for b in d["baselines"]))
