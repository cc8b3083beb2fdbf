"""Scorers of a head's explanation, each beside the paper's (``--scorers paper,detection,fuzz,simulation``).

* ``paper``: the protocol's Yes/No classification of the test prompts (``minitf.explain.driver.score_explanation``),
  its balanced accuracy with the Beta-posterior interval (``minitf.explain.uncertainty``);
* ``detection``: Yes/No on the test prompts *and* on negatives that are not top-activating (corpus contexts where
  the neuron is weak or silent), labelled by the same head rule;
* ``fuzz``: the prompt with the head's top source tokens (by context part) marked vs as many random tokens marked;
  the LLM says whether the marking fits the explanation;
* ``simulation``: the LLM predicts 0–10 how strongly the head drives the neuron on each test prompt; Pearson and
  Spearman correlation with the head's context part.

Detection, fuzz and simulation show the LLM what ``minitf.explain.scorer_data`` gathers (the test prompts, weak-neuron
negatives, the head's top sources); each has ``plan_<name>`` (its requests, before any call) and ``score_<name>``,
registered in :data:`PLANNERS` / :data:`RUNNERS`; :data:`PLANNED_CALLS` counts the calls.

Every scorer returns a :class:`ScorerResult`; its baselines (a random explanation, constant answers, the
token-only explanation) are :class:`Baseline` records scored the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from minitf.explain.answers import Answer, parse_simulation
from minitf.explain.correlation import AUCEstimate, Correlation, auc_with_se, correlation_p_value, pearson, spearman
from minitf.explain.metrics import Confusion, balanced_accuracy, confusion
from minitf.explain.prompts import FUZZ_PARAMS, SIMULATION_PARAMS, fuzz_messages, simulation_messages
from minitf.explain.scorer_data import FuzzCase, ScorerData, fuzz_cases, scorer_data  # noqa: F401
from minitf.explain.uncertainty import ScoreUncertainty, ba_posterior, score_uncertainty
from minitf.heads import both_classes
from minitf.protocol import get_protocol

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
        donor, donor_source: the random-explanation baseline's explanation (another pair's, drawn with the seed)
            and where it came from (``L3N872/L1H2`` or ``L1H2``); None without ``--baselines``.
    """

    head: str
    explanation: str
    test: Any
    donor: str | None = None
    donor_source: str | None = None


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


# ======================================================================= detection, fuzz, simulation
# Each scorer: ``plan_<name>`` lists the exact requests (no call made), ``score_<name>`` sends them through an LLM
# client (``complete_many``: cached, budgeted) and scores the answers; the data comes from
# ``minitf.explain.scorer_data.scorer_data``. A random-explanation baseline is scored when a donor explanation is
# given (another pair's, never the pair's own: ``uncertainty.random_explanation_donors``).

def _unique(requests: list[dict[str, Any]]) -> int:
    """The number of distinct requests (identical ones are sent once: ``LLM.complete_many``)."""
    return len({json.dumps(r, sort_keys=True, ensure_ascii=False) for r in requests})


def _with_donor(requests_for: Callable[[str], list[dict[str, Any]]], explanation: str,
                donor: str | None) -> list[dict[str, Any]]:
    return requests_for(explanation) + (requests_for(donor) if donor else [])


# ---- detection: Yes/No on the test prompts and on weak-neuron negatives, labelled by the head rule -------------
def detection_requests(data: ScorerData, explanation: str, protocol=None) -> list[dict[str, Any]]:
    """One classify request (``driver.classify_request``, the protocol's) per test prompt, then per negative."""
    from minitf.explain.driver import classify_request

    return [classify_request(explanation, data.token, i.text, protocol) for i in data.test + data.negatives]


def plan_detection(data: ScorerData, explanation: str, protocol=None, donor: str | None = None) -> list[dict]:
    """Every request :func:`score_detection` sends: the explanation's, then the donor's."""
    return _with_donor(lambda e: detection_requests(data, e, protocol), explanation, donor)


def _answers(llm, requests: list[dict[str, Any]], protocol=None) -> list[Answer]:
    """Yes/No answers, parsed as the protocol parses them (``driver.yes_no_answers``; None: minitf's parsing)."""
    from minitf.explain.driver import yes_no_answers

    return yes_no_answers(llm, requests, protocol)


def _ba(labels: list[int], answers: list[Answer], seed: int) -> tuple[ScoreUncertainty, AUCEstimate | None]:
    u = score_uncertainty(labels, [a.prediction for a in answers], seed=seed)
    return u, auc_with_se(labels, [a.p_yes for a in answers])


def _interval(u: ScoreUncertainty) -> tuple[float, float] | None:
    return None if u.posterior is None else (u.posterior.low, u.posterior.high)


def posterior_interval(c: Confusion) -> tuple[float, float] | None:
    """The 95 % Beta-posterior interval of balanced accuracy from the counts; None when a class is unanswered."""
    if c.tp + c.fn == 0 or c.tn + c.fp == 0:
        return None
    post = ba_posterior(c.tp, c.fp, c.tn, c.fn)
    return (post.low, post.high)


def constant_baselines(labels: Sequence[int], score: Callable[[Sequence[int], list[int]], float | None]
                       = balanced_accuracy) -> tuple[Baseline, ...]:
    """Always Yes and always No on ``labels`` (no LLM call): ``score(labels, predictions)`` (½ with both classes
    under every scoring) and the Beta-posterior interval of their counts."""
    out = []
    for name, answer in (("constant_yes", 1), ("constant_no", 0)):
        predictions = [answer] * len(labels)
        out.append(Baseline(name, score(labels, predictions), posterior_interval(confusion(labels, predictions))))
    return tuple(out)


def _ba_result(scorer: str, labels: list[int], answers: list[Answer], donor_answers: list[Answer] | None,
               donor: str | None, donor_source: str | None, calls: int, seed: int,
               detail: dict[str, Any]) -> ScorerResult:
    """A balanced-accuracy scorer's result: the Beta interval, ``P(BA ≤ ½)`` as p-value, ROC-AUC of P(Yes), the
    constant and random-explanation baselines."""
    u, auc = _ba(labels, answers, seed)
    baselines = constant_baselines(labels)
    if donor_answers is not None:
        d, _ = _ba(labels, donor_answers, seed)
        baselines += (Baseline("random_explanation", d.balanced_accuracy, _interval(d), donor, donor_source),)
    c = u.confusion
    detail = {"tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn, "n_malformed": sum(a.prediction is None for a in answers),
              "p_value_kind": "posterior P(BA <= 1/2)",
              "permutation_p": None if u.permutation is None else u.permutation.p_value,
              "roc_auc_se": None if auc is None else auc.se, **detail}
    skip = None
    if u.balanced_accuracy is None:
        skip = both_classes(c.tp + c.fn, c.tn + c.fp, "answered item") or "balanced accuracy undefined"
    return ScorerResult(scorer=scorer, metric="balanced_accuracy", value=u.balanced_accuracy, interval=_interval(u),
                        p_value=None if u.posterior is None else u.posterior.p_at_most_chance,
                        roc_auc=None if auc is None else auc.auc,
                        roc_auc_interval=None if auc is None else (auc.low, auc.high), n=len(labels), calls=calls,
                        baselines=baselines, skip_reason=skip, detail=detail)


def score_detection(llm, data: ScorerData, explanation: str, *, protocol=None, donor: str | None = None,
                    donor_source: str | None = None, seed: int = 0) -> ScorerResult:
    """Balanced accuracy of the LLM's Yes/No over the test prompts and the negatives (label: the head rule's).

    Besides the Beta interval and ROC-AUC, ``detail`` has the test prompts' balanced accuracy alone and the
    share of negatives answered Yes, by kind (random, hard) and label."""
    items = data.test + data.negatives
    labels = [int(i.active) for i in items]
    answers = _answers(llm, detection_requests(data, explanation, protocol), protocol)
    donor_answers = _answers(llm, detection_requests(data, donor, protocol), protocol) if donor else None
    n_test = len(data.test)
    test_only = score_uncertainty(labels[:n_test], [a.prediction for a in answers[:n_test]]).balanced_accuracy
    yes_rate = {}
    for kind in ("random", "hard"):
        for label in (1, 0):
            got = [a.prediction for i, a in zip(items, answers) if i.kind == kind and int(i.active) == label
                   and a.prediction is not None]
            yes_rate[f"{kind}_{'active' if label else 'inactive'}"] = sum(got) / len(got) if got else None
    detail = {"n_test": n_test, "n_random": sum(i.kind == "random" for i in items),
              "n_hard": sum(i.kind == "hard" for i in items), "n_active": sum(labels), "weak": data.weak,
              "corpus": data.corpus, "split": data.split, "test_balanced_accuracy": test_only,
              "negatives_yes_rate": yes_rate,
              "answers": [[i.kind, i.where, int(i.active), a.prediction] for i, a in zip(items, answers)]}
    return _ba_result("detection", labels, answers, donor_answers, donor, donor_source,
                      _unique(plan_detection(data, explanation, protocol, donor)), seed, detail)


# ---- source fuzzing: the head's true top sources marked vs as many random tokens -------------------------------
def fuzz_requests(data: ScorerData, explanation: str, cases: list[FuzzCase]) -> list[dict[str, Any]]:
    """Per case, the true marking's request then the random one's (``prompts.fuzz_messages``, ``FUZZ_PARAMS``)."""
    out = []
    for case in cases:
        item = data.test[case.item]
        for marked in (case.true, case.random):
            out.append({"messages": fuzz_messages(explanation, data.token, item.tokens, marked), **FUZZ_PARAMS})
    return out


def plan_fuzz(data: ScorerData, explanation: str, seed: int = 0, donor: str | None = None) -> list[dict]:
    """Every request :func:`score_fuzz` sends."""
    cases = fuzz_cases(data, seed)
    return _with_donor(lambda e: fuzz_requests(data, e, cases), explanation, donor)


def score_fuzz(llm, data: ScorerData, explanation: str, *, seed: int = 0, donor: str | None = None,
               donor_source: str | None = None) -> ScorerResult:
    """Balanced accuracy of the LLM's Yes (the marking fits) with the true marking positive, the random one negative."""
    cases = fuzz_cases(data, seed)
    if not cases:
        return ScorerResult("fuzz", "balanced_accuracy", None, skip_reason="no active test prompt to fuzz",
                            detail={"seed": seed})
    labels = [1, 0] * len(cases)
    answers = _answers(llm, fuzz_requests(data, explanation, cases))
    donor_answers = _answers(llm, fuzz_requests(data, donor, cases)) if donor else None
    detail = {"seed": seed, "cases": [c.to_json() for c in cases],
              "answers": [a.prediction for a in answers]}
    return _ba_result("fuzz", labels, answers, donor_answers, donor, donor_source,
                      _unique(plan_fuzz(data, explanation, seed, donor)), seed, detail)


# ---- simulation: a 0–10 prediction per test prompt against the head's context part ------------------------------
def simulation_requests(data: ScorerData, explanation: str) -> list[dict[str, Any]]:
    """One request per test prompt (``prompts.simulation_messages``, ``SIMULATION_PARAMS``)."""
    return [{"messages": simulation_messages(explanation, data.token, i.text), **SIMULATION_PARAMS}
            for i in data.test]


def plan_simulation(data: ScorerData, explanation: str, donor: str | None = None) -> list[dict]:
    """Every request :func:`score_simulation` sends."""
    return _with_donor(lambda e: simulation_requests(data, e), explanation, donor)


def _simulate(llm, data: ScorerData, explanation: str) -> tuple[list[int | None], Correlation, Correlation]:
    responses = llm.complete_many(simulation_requests(data, explanation))
    predicted = [parse_simulation(r.get("text") or "") for r in responses]
    kept = [(p, i.context) for p, i in zip(predicted, data.test) if p is not None]
    x, y = [float(p) for p, _ in kept], [c for _, c in kept]
    return predicted, pearson(x, y), spearman(x, y)


def score_simulation(llm, data: ScorerData, explanation: str, *, donor: str | None = None,
                     donor_source: str | None = None) -> ScorerResult:
    """Pearson's r of the LLM's 0–10 predictions with the head's context part over the test prompts (malformed
    answers left out and counted), its Fisher-z interval and one-sided p-value; Spearman's ρ in ``detail``."""
    predicted, r, rho = _simulate(llm, data, explanation)
    baselines: tuple[Baseline, ...] = ()
    if donor:
        _, dr, _ = _simulate(llm, data, donor)
        baselines = (Baseline("random_explanation", dr.r, None if dr.low is None else (dr.low, dr.high), donor,
                              donor_source),)
    detail = {"predictions": predicted, "context": [i.context for i in data.test],
              "n_malformed": sum(p is None for p in predicted), "p_value_kind": "one-sided t test of Pearson's r",
              "spearman": rho.r, "spearman_interval": None if rho.low is None else [rho.low, rho.high],
              "spearman_p": correlation_p_value(rho.r, rho.n)}
    skip = None if r.r is not None else (f"{r.n} usable predictions" if r.n < 2 else "a constant prediction or "
                                         "context part: correlation undefined")
    return ScorerResult("simulation", "pearson", r.r, None if r.low is None else (r.low, r.high),
                        correlation_p_value(r.r, r.n), n=len(data.test),
                        calls=_unique(plan_simulation(data, explanation, donor)), baselines=baselines,
                        skip_reason=skip, detail=detail)


# ---- the hooks score/study call (PLANNERS / RUNNERS above): data from the context's test trace -------------------
_DATA: dict[tuple, tuple[Any, ScorerData]] = {}


def pair_data(ctx: ScoringContext, pair: PairToScore) -> ScorerData | None:
    """``scorer_data`` of the pair from ``ctx`` (its test trace, model, seed; negatives from the test prompts' corpus,
    else ``ctx.corpus``; the test prompts ``pair.test``'s, else the protocol's first n_test),
    gathered once per (trace, head, seed, corpus) and kept while the trace lives; None without a test trace."""
    if ctx.test is None:
        return None
    test = pair.test  # the paper scorer's test prompts (HeadExamples), when given: the same ones here
    texts = None if test is None else tuple(test.active) + tuple(test.inactive)
    key = (id(ctx.test), pair.head, ctx.seed, str(ctx.corpus), ctx.protocol, texts)
    hit = _DATA.get(key)
    if hit is None or hit[0] is not ctx.test:
        if len(_DATA) >= 64:
            _DATA.clear()
        origin = ctx.test.settings.origin.corpus  # the test prompts' corpus (a --test-corpus too), where it is
        corpus = origin if origin and Path(origin).is_file() else ctx.corpus
        hit = _DATA[key] = (ctx.test, scorer_data(ctx.model, ctx.test, pair.head, seed=ctx.seed, corpus=corpus,
                                                  n_test=get_protocol(ctx.protocol).n_test, texts=texts))
    return hit[1]


def _donor(pair: PairToScore) -> tuple[str | None, str | None]:
    return getattr(pair, "donor", None), getattr(pair, "donor_source", None)


def _planner(plan: Callable[..., list[dict]]):
    def planner(ctx: ScoringContext, pair: PairToScore) -> list[dict[str, Any]]:
        data = pair_data(ctx, pair)
        return [] if data is None else plan(ctx, data, pair.explanation, _donor(pair)[0])
    return planner


def _runner(name: str, run: Callable[..., ScorerResult]):
    def runner(llm, ctx: ScoringContext, pair: PairToScore) -> ScorerResult:
        data = pair_data(ctx, pair)
        if data is None:
            return ScorerResult(name, "pearson" if name == "simulation" else "balanced_accuracy", None,
                                skip_reason="no test-prompt trace at hand")
        donor, source = _donor(pair)
        return run(llm, ctx, data, pair.explanation, donor, source)
    return runner


PLANNERS["detection"] = _planner(lambda ctx, d, e, donor: plan_detection(d, e, ctx.protocol, donor))
PLANNERS["fuzz"] = _planner(lambda ctx, d, e, donor: plan_fuzz(d, e, ctx.seed, donor))
PLANNERS["simulation"] = _planner(lambda ctx, d, e, donor: plan_simulation(d, e, donor))
RUNNERS["detection"] = _runner("detection", lambda llm, ctx, d, e, donor, src: score_detection(
    llm, d, e, protocol=ctx.protocol, donor=donor, donor_source=src, seed=ctx.seed))
RUNNERS["fuzz"] = _runner("fuzz", lambda llm, ctx, d, e, donor, src: score_fuzz(
    llm, d, e, seed=ctx.seed, donor=donor, donor_source=src))
RUNNERS["simulation"] = _runner("simulation", lambda llm, ctx, d, e, donor, src: score_simulation(
    llm, d, e, donor=donor, donor_source=src))

PLANNED_CALLS: dict[str, Callable[[ScoringContext, PairToScore], int]] = {
    name: (lambda ctx, pair, name=name: _unique(PLANNERS[name](ctx, pair)))
    for name in ("detection", "fuzz", "simulation")}
"""Scorer name → the LLM calls it makes for one pair on an empty cache (its distinct requests), before any call."""
