"""The ``paper`` scorer's uncertainty and baselines, beside the paper's number (issue 24).

The paper's score of a (neuron, head) pair stays exactly the protocol's (``driver.score_explanation``:
``metrics.authors_score`` or minitf's balanced accuracy). Beside it, :func:`paper_result` gives a
``ScorerResult("paper", "balanced_accuracy", …)`` with

* the interval: the Beta posterior of balanced accuracy (``uncertainty.ba_posterior``, TPR ~ Beta(TP+1, FN+1),
  TNR ~ Beta(TN+1, FP+1)), its mean and 95 % equal-tailed interval, and ``P(BA ≤ ½)`` (``detail``);
* ``p_value``: the one-sided permutation p-value with the labels shuffled (``uncertainty.ba_permutation_test``,
  exact on the paper's 10 or 20 prompts);
* the baselines, each scored on the pair's own test prompts and labels, the same way:
  ``random_explanation`` (another pair's explanation, ``uncertainty.random_explanation_donors`` with the seed:
  never the pair's own), ``token_only`` (``the next token is "X"``) — both asked of the same LLM, cached and
  budgeted like the paper's requests — and ``constant_yes`` / ``constant_no`` (no call: ½ whenever the paper's
  score is defined).

:func:`count_calls` counts, before any is made, the requests each scorer and baseline would send (``score
--dry-run``, the ``--max-calls`` check): the requests deduplicated by cache key in the order listed, less the
cached ones — exactly the calls then made.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from minitf.errors import MinitfError
from minitf.protocol import get_protocol
from minitf.explain.metrics import Confusion, HeadScore, authors_score, balanced_accuracy, confusion
from minitf.explain.prompts import HeadExamples
from minitf.explain.scorers import Baseline, ScorerResult, constant_baselines, posterior_interval
from minitf.explain.uncertainty import score_uncertainty, token_only_explanation

LLM_BASELINES = ("random_explanation", "token_only")
"""The baselines asked of the LLM (``--baselines``); the constant ones cost nothing and always come."""

CONSTANT_BASELINES = ("constant_yes", "constant_no")

BASELINE_ORDER = LLM_BASELINES + CONSTANT_BASELINES
"""How the paper scorer's baselines are listed and printed."""


def protocol_score(labels: Sequence[int], predictions: Sequence[int | None], scoring: str) -> float | None:
    """A pair's score as the protocol scores it: minitf's balanced accuracy over the answered items, or
    ``authors_score`` of the confusion counts (drop-undefined, rate-fallback)."""
    if scoring == "minitf":
        return balanced_accuracy(labels, predictions)
    return authors_score(confusion(labels, predictions), scoring)


def paper_result(score: HeadScore, baselines: Sequence[Baseline] = (), *, seed: int = 0,
                 calls: int | None = None) -> ScorerResult:
    """The ``paper`` scorer's record of a scored pair: ``value`` is the paper's score (``score.balanced_accuracy``
    as the protocol computed it), ``interval`` the Beta posterior's 95 % interval, ``p_value`` the permutation
    p-value; ``detail`` holds the posterior mean and sd, ``P(BA ≤ ½)``, the confusion counts and the p-value's
    kind. The interval and p-value are None where balanced accuracy is undefined (a class unanswered)."""
    predictions = [a.prediction for a in score.answers]
    u = score_uncertainty(score.labels, predictions, seed=seed)
    c = u.confusion
    detail: dict[str, Any] = {"tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn, "n_malformed": score.n_malformed,
                              "posterior_mean": None, "posterior_sd": None, "p_at_most_chance": None,
                              "p_value_kind": None}
    if u.posterior is not None:
        detail |= {"posterior_mean": u.posterior.mean, "posterior_sd": u.posterior.sd,
                   "p_at_most_chance": u.posterior.p_at_most_chance}
    if u.permutation is not None:
        detail["p_value_kind"] = ("permutation, exact" if u.permutation.exact
                                  else f"permutation, {u.permutation.n_perm} draws (seed {u.permutation.seed})")
    return ScorerResult(
        scorer="paper", metric="balanced_accuracy", value=score.balanced_accuracy,
        interval=None if u.posterior is None else (u.posterior.low, u.posterior.high),
        p_value=None if u.permutation is None else u.permutation.p_value,
        roc_auc=score.roc_auc, n=score.n_test, calls=score.n_test if calls is None else calls,
        baselines=tuple(baselines), skip_reason=score.skip_reason if score.balanced_accuracy is None else None,
        detail=detail)


def scored_baseline(name: str, score: HeadScore, source: str | None = None) -> Baseline:
    """A baseline explanation scored like the pair's own (``driver.score_explanation`` on its test prompts)."""
    return Baseline(name, score.balanced_accuracy,
                    posterior_interval(Confusion(score.tp, score.fp, score.tn, score.fn)),
                    explanation=score.explanation, source=source)


def paper_constant_baselines(labels: Sequence[int], protocol=None) -> list[Baseline]:
    """Always Yes and always No on the pair's labels, scored by the protocol (``scorers.constant_baselines``)."""
    scoring = get_protocol(protocol).scoring
    return list(constant_baselines(labels, lambda y, predictions: protocol_score(y, predictions, scoring)))


def baseline_requests(test: HeadExamples, protocol=None, donor: str | None = None) -> dict[str, list[dict]]:
    """The exact requests of the LLM baselines of one pair: {"random_explanation": … (none without a donor
    explanation), "token_only": …}, as ``driver.score_explanation`` sends them."""
    return {"random_explanation": [] if donor is None else explanation_requests(donor, test, protocol),
            "token_only": explanation_requests(token_only_explanation(test.token), test, protocol)}


def explanation_requests(explanation: str, test: HeadExamples, protocol=None) -> list[dict]:
    """The Yes/No requests scoring ``explanation`` on ``test`` (active prompts first)."""
    from minitf.explain.driver import classify_request

    return [classify_request(explanation, test.token, q, protocol) for q in list(test.active) + list(test.inactive)]


def llm_baselines(llm, test: HeadExamples, protocol=None, donor: tuple[str, str] | None = None) -> list[Baseline]:
    """The LLM baselines of one pair, scored on its test prompts: the random explanation (``donor`` =
    (explanation, where it came from); absent without one) and the token-only explanation."""
    from minitf.explain.driver import score_explanation

    out = []
    if donor is not None:
        out.append(scored_baseline("random_explanation", score_explanation(llm, donor[0], test, protocol),
                                   source=donor[1]))
    out.append(scored_baseline("token_only",
                               score_explanation(llm, token_only_explanation(test.token), test, protocol)))
    return out


def with_baselines(result: ScorerResult, baselines: Sequence[Baseline]) -> ScorerResult:
    """``result`` with ``baselines`` added (one of a name replaces the earlier), in the order of ``BASELINE_ORDER``
    and with their requests counted in ``calls`` (a constant baseline costs none)."""
    kept = {b.name: b for b in result.baselines} | {b.name: b for b in baselines}
    ordered = tuple(kept[n] for n in BASELINE_ORDER if n in kept)
    extra = sum(result.n for b in baselines if b.name in LLM_BASELINES and b.name not in
                {x.name for x in result.baselines})
    return replace(result, baselines=ordered, calls=result.calls + extra)


# ---- counting the calls before any is made ---------------------------------------------------------------------
@dataclass(frozen=True)
class CallCount:
    """The requests one scorer (or baseline) would send.

    Attributes:
        name: ``paper``, ``paper/random_explanation``, ``paper/token_only``, ``detection``, …
        requests: its requests, the cached ones and those another name sends too included.
        calls: those not cached and not counted under an earlier name: the requests it will send.
    """

    name: str
    requests: int
    calls: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "requests": self.requests, "calls": self.calls}


def count_calls(llm, planned: dict[str, list[dict]]) -> list[CallCount]:
    """:class:`CallCount` per name of ``planned`` ({name: requests}, in the order they will be sent): a request is
    a call the first time its cache key comes and when its answer is not cached (``LLM.is_cached``)."""
    seen: set[str] = set()
    out = []
    for name, requests in planned.items():
        calls = 0
        for request in requests:
            key = llm.request_key(request)
            if key not in seen:
                seen.add(key)
                calls += not llm.is_cached(request)
        out.append(CallCount(name, len(requests), calls))
    return out


def check_budget(counts: Sequence[CallCount], max_calls: int | None) -> None:
    """MinitfError naming ``max_calls`` when the calls counted exceed it (said before any call is made)."""
    total = sum(c.calls for c in counts)
    if max_calls is not None and total > max_calls:
        per = ", ".join(f"{c.name} {c.calls}" for c in counts if c.calls)
        raise MinitfError(f"`max_calls` {max_calls}: this needs {total} LLM calls ({per}); nothing was sent "
                          "(raise --max-calls, or see --dry-run)", param="max_calls")


def call_lines(counts: Sequence[CallCount]) -> list[str]:
    """The dry run's text: per scorer and baseline, its requests and the calls it will make."""
    from minitf.util.fmt import count

    lines = [f"{c.name}: {count(c.calls, 'LLM call')} ({count(c.requests, 'request')}, "
             f"{c.requests - c.calls} cached or shared)" for c in counts]
    return lines + [f"total: {count(sum(c.calls for c in counts), 'LLM call')}"]


# ---- text ------------------------------------------------------------------------------------------------------
BASELINE_LABEL = {"random_explanation": "random explanation", "token_only": "token only",
                  "constant_yes": "always Yes", "constant_no": "always No"}


def interval_text(value: float | None, interval: tuple[float, float] | None) -> str:
    """``0.800 [0.541, 0.937]``, ``0.800`` without an interval, ``–`` without a value."""
    from minitf.util.fmt import num

    if value is None:
        return "–"
    return num(value) + ("" if interval is None else f" [{num(interval[0])}, {num(interval[1])}]")


def _p_label(kind: str | None, p: str) -> str:
    """``permutation p 0.400``, or ``p 0.982 (its kind)`` for another kind of p-value."""
    return f"permutation p {p}" if kind is None or kind.startswith("permutation") else f"p {p} ({kind})"


def result_lines(result: ScorerResult) -> list[str]:
    """Two indented lines: the scorer's value with its 95 % interval and p-values, then its baselines."""
    from minitf.util.fmt import num

    if result.value is None and result.skip_reason:
        return [f"  {result.scorer}: skipped: {result.skip_reason}"]
    d = result.detail
    chance = f", P(BA ≤ 0.5) {num(d['p_at_most_chance'])}" if d.get("p_at_most_chance") is not None else ""
    lines = [f"  {result.scorer}: {result.metric.replace('_', ' ')} {interval_text(result.value, result.interval)}"
             f" (95 % interval){chance}, {_p_label(d.get('p_value_kind'), num(result.p_value))}"]
    if result.baselines:
        parts = [f"{BASELINE_LABEL.get(b.name, b.name)}{f' ({b.source})' if b.source else ''} "
                 f"{interval_text(b.value, b.interval)}" for b in result.baselines]
        lines.append("    baselines: " + "; ".join(parts))
    return lines


# ---- the score command: every scorer of every head of one neuron -------------------------------------------------
def donors_of(explained: dict[str, str], seed: int) -> dict[str, tuple[str, str] | None]:
    """{head: (another head's explanation, that head) or None}: ``random_explanation_donors`` over the neuron's
    stored explanations in head order (the same draw whichever heads are scored)."""
    from minitf.explain.uncertainty import random_explanation_donors

    heads = list(explained)
    donors = random_explanation_donors([explained[h] for h in heads], seed=seed)
    return {h: None if d is None else (explained[heads[d]], heads[d]) for h, d in zip(heads, donors)}


def _pairs(inputs, donors: dict[str, tuple[str, str] | None]):
    """The heads to score as ``PairToScore``, each with its random-explanation donor (``donors``; {}: none)."""
    from minitf.explain.scorers import PairToScore

    return [PairToScore(h, inputs.explained[h], test, *(donors.get(h) or (None, None)))
            for h, test in inputs.tests.items()]


def plan_score(inputs, scorers: Sequence[str], ctx, *, seed: int = 0, baselines: bool = False
               ) -> dict[str, list[dict]]:
    """{scorer or ``paper/<baseline>``: the requests it sends} for ``driver.ScoreInputs``, in the order sent."""
    from minitf.explain.scorers import PLANNERS

    p = inputs.protocol
    planned = {"paper": [r for h, t in inputs.tests.items() for r in explanation_requests(inputs.explained[h], t, p)]}
    donors = donors_of(inputs.explained, seed) if baselines else {}
    if baselines:
        for name in LLM_BASELINES:
            planned[f"paper/{name}"] = [r for h, t in inputs.tests.items()
                                        for r in baseline_requests(t, p, (donors[h] or (None,))[0])[name]]
    for name in scorers:
        if name != "paper":
            planned[name] = [r for pair in _pairs(inputs, donors) for r in PLANNERS[name](ctx, pair)]
    return planned


def pair_results(llm, score: HeadScore, pair, scorers: Sequence[str], ctx, protocol, *, seed: int = 0,
                 baselines: bool = False, paper_donor: tuple[str, str] | None = None) -> dict[str, ScorerResult]:
    """{scorer: ScorerResult} of one scored pair (``pair``: a ``scorers.PairToScore``): the paper's with its
    uncertainty, its constant baselines and (``baselines``) its LLM baselines (the random explanation from
    ``paper_donor``, when given); then each other scorer of ``scorers`` (``scorers.RUNNERS``)."""
    from minitf.explain.scorers import RUNNERS

    extra = llm_baselines(llm, pair.test, protocol, paper_donor) if baselines else []
    results = {"paper": with_baselines(paper_result(score, seed=seed),
                                       extra + paper_constant_baselines(score.labels, protocol))}
    for name in scorers:
        if name != "paper":
            results[name] = RUNNERS[name](llm, ctx, pair)
    return results


def run_scorers(llm, inputs, scores: Sequence[HeadScore], scorers: Sequence[str], ctx, *, seed: int = 0,
                baselines: bool = False) -> dict[str, dict[str, ScorerResult]]:
    """{head: {scorer: ScorerResult}} for the scored heads (:func:`pair_results`; the random explanation another
    head's of the neuron, ``donors_of``)."""
    donors = donors_of(inputs.explained, seed) if baselines else {}
    by_head = {s.head: s for s in scores}
    return {pair.head: pair_results(llm, by_head[pair.head], pair, scorers, ctx, inputs.protocol, seed=seed,
                                    baselines=baselines, paper_donor=donors.get(pair.head))
            for pair in _pairs(inputs, donors)}
