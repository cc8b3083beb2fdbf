"""The scorers past Yes/No (detection, fuzz, simulation) on the embedded model, against a loopback LLM.

The fake server (``test_llm.FakeServer``, reached through the real ``openai`` client) answers by rules this file
applies again on its own: detection says Yes iff the example has a comma in it (inverted for the "contrarian"
donor explanation); fuzzing says Yes iff a marked token is " of"; simulation answers ``len(example) % 11``, or
"seven" (malformed) when ``len(example) % 7 == 0``. Every expected score, interval and p-value is computed here
with scipy (Beta quantiles and integrals, pearsonr / spearmanr, the normal quantile of the Fisher z interval), the
negatives' weakness against a forward pass, their labels against ``minitf.trace``, and fuzzing's true marks
against the attribution identity (the sources' context parts sum to the head's context part).

Neuron L3N872 of ``weights/tiny`` promotes " course"; on its top 20 test prompts L2H4 is differential.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats

import minitf
from minitf.attribution import NEEDED, head_sources
from minitf.explain.driver import head_examples
from minitf.explain.llm import LLM
from minitf.explain.scorer_data import WEAK_FRACTION, scorer_data
from minitf.explain.scorers import (
    PLANNED_CALLS, PLANNERS, RUNNERS, PairToScore, ScorerResult, ScoringContext, fuzz_cases, pair_data, parse_simulation,
    score_detection, score_fuzz, score_simulation)
from minitf.names import Head, Neuron
from minitf.prompts import prompts_from_texts
from minitf.trace import PromptSource, TraceOptions, trace, trace_neuron
from test_llm import SECRET, FakeServer

NEURON, HEAD = Neuron(3, 872), "L2H4"
EXPLANATION = "The head is active when the document lists things, with commas."
DONOR = "A contrarian explanation from another pair."


@pytest.fixture(scope="module")
def model():
    return minitf.load("weights/tiny")


@pytest.fixture(scope="module")
def test_trace(model):
    return trace_neuron(model, NEURON, PromptSource(split="test", n_prompts=20, progress=False), TraceOptions(ablate=0))


@pytest.fixture(scope="module")
def data(model, test_trace):
    return scorer_data(model, test_trace, HEAD, seed=3, n_random=6, n_hard=6, scan_docs=16)


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# ---------------------------------------------------------------------------------- the fake LLM's rules
def example_of(user: str) -> str:
    """The example line of a request: the authors' ``Example: \"\"\"…\"\"\"`` or minitf's ``* …`` bullet."""
    m = re.search(r'Example: """\n(.*)\n"""\nAnswer: $', user, re.S) or re.search(r'\n\* (.*)\n"""', user, re.S)
    assert m, user
    return m.group(1)


def detect_rule(text: str, explanation: str) -> int:
    return int(("," in text) != ("contrarian" in explanation))


def fuzz_rule(marked: list[str]) -> int:
    return int(any(t.strip() == "of" for t in marked))


def simulate_rule(example: str) -> str:
    return "seven" if len(example) % 7 == 0 else f"Score: {len(example) % 11}"


def answer(body: dict) -> str:
    user = body["messages"][-1]["content"]
    if "Are the marked tokens" in user:
        return "Yes" if fuzz_rule(re.findall(r"<<(.*?)>>", example_of(user))) else "No"
    if "On a scale from 0" in user:
        return simulate_rule(example_of(user))
    explanation = DONOR if "contrarian" in user else EXPLANATION
    return "Yes" if detect_rule(example_of(user), explanation) else "No"


@pytest.fixture
def server():
    yield from FakeServer.serving(answer)


def make_llm(server: FakeServer, cache: Path) -> LLM:
    return LLM("test-model", server.url, cache_dir=cache, max_retries=0, timeout=10.0)


# ---------------------------------------------------------------------------------- independent references
def ba_reference(labels, predictions, level=0.95):
    """(BA, low, high, P(BA ≤ ½)) of TPR ~ Beta(TP+1, FN+1), TNR ~ Beta(TN+1, FP+1) by scipy quadrature."""
    y, p = np.array(labels), np.array(predictions)
    tp, fn = int(((y == 1) & (p == 1)).sum()), int(((y == 1) & (p == 0)).sum())
    tn, fp = int(((y == 0) & (p == 0)).sum()), int(((y == 0) & (p == 1)).sum())
    tpr, tnr = scipy.stats.beta(tp + 1, fn + 1), scipy.stats.beta(tn + 1, fp + 1)

    def cdf(b):  # P((TPR + TNR)/2 ≤ b)
        return scipy.integrate.quad(lambda x: tpr.pdf(x) * tnr.cdf(2 * b - x), 0, 1, limit=200)[0]

    lo = scipy.optimize.brentq(lambda b: cdf(b) - (1 - level) / 2, 0, 1)
    hi = scipy.optimize.brentq(lambda b: cdf(b) - (1 + level) / 2, 0, 1)
    return (tp / (tp + fn) + tn / (tn + fp)) / 2, lo, hi, cdf(0.5)


def fisher(r, n, level=0.95):
    z = scipy.stats.norm.ppf((1 + level) / 2) / math.sqrt(n - 3)
    return math.tanh(math.atanh(r) - z), math.tanh(math.atanh(r) + z)


# ---------------------------------------------------------------------------------- the data
def test_test_items_are_the_traces_first_prompts_with_its_labels(data, test_trace):
    records = test_trace.prompts[:10]  # neo2024's n_test
    active = [r.text for r in records if HEAD in r.active_heads]
    inactive = [r.text for r in records if HEAD not in r.active_heads]
    assert [i.text for i in data.test] == active + inactive
    assert [i.active for i in data.test] == [True] * len(active) + [False] * len(inactive)
    assert active and inactive and data.retokenized == 0
    paper = head_examples(test_trace, HEAD, limit=10)  # the paper scorer's test prompts: the same
    assert (paper.active, paper.inactive) == (active, inactive)
    for item in data.test:  # the head's context part and the activation are the trace's (where it lists the head)
        record = next(r for r in records if r.text == item.text)
        assert item.activation == pytest.approx(record.activation, rel=1e-5, abs=1e-6)
        listed = [h for h in record.top_heads if h.head == HEAD]
        if listed:
            assert item.context == pytest.approx(listed[0].context, rel=1e-4, abs=1e-6)


def test_sources_are_the_top_context_parts_by_the_identity(model, data):
    tokens = [p.tokens for p in prompts_from_texts(model, [i.text for i in data.test])]
    run = model.run(tokens, logits=None, keep=NEEDED, stop_at_layer=NEURON.layer)
    by_source, _ = head_sources(model, run, NEURON, Head(2, 4))  # [B, T]
    for b, item in enumerate(data.test):
        parts = by_source[b, 1:len(tokens[b])]  # BOS left out, positions as the item counts them
        assert parts.sum() + by_source[b, 0] == pytest.approx(item.context, rel=1e-4, abs=1e-6)  # Σ_s = context
        expected = sorted(range(len(parts)), key=lambda s: -parts[s])[:3]
        assert list(item.sources) == expected
        assert len(item.tokens) == len(parts)


def test_negatives_are_weak_and_labelled_by_the_head_rule(model, data, test_trace):
    assert data.weak == pytest.approx(WEAK_FRACTION * max(i.activation for i in data.test))
    kinds = [i.kind for i in data.negatives]
    assert kinds == sorted(kinds, key=["random", "hard"].index) and set(kinds) == {"random", "hard"}
    assert len(data.negatives) == 12
    prompts = prompts_from_texts(model, [i.text for i in data.negatives])
    post = [model.run(p.tokens, logits=None, keep={"post"}, stop_at_layer=NEURON.layer)["post", 3][0, -1, 872]
            for p in prompts]
    assert all(a <= data.weak for a in post)  # really weak, on a forward pass of what the LLM is shown
    assert [i.activation for i in data.negatives] == pytest.approx(post, abs=1e-5)
    traced = trace(model, NEURON, prompts, TraceOptions(ablate=0))
    assert [HEAD in r.active_heads for r in traced.prompts] == [i.active for i in data.negatives]
    last_tokens = {model.encode(i.text)[-1] for i in data.test}
    assert all(model.encode(i.text)[-1] in last_tokens for i in data.negatives if i.kind == "hard")
    assert not {i.text for i in data.negatives} & {i.text for i in data.test}
    again = scorer_data(model, test_trace, HEAD, seed=3, n_random=6, n_hard=6, scan_docs=16)
    assert again == data  # the seed decides every draw


# ---------------------------------------------------------------------------------- the scorers
@pytest.mark.parametrize("protocol", ["neo2024", "minitf"])
def test_detection_scores_as_computed_here(server, tmp_path, data, protocol):
    items = data.test + data.negatives
    result = score_detection(make_llm(server, tmp_path), data, EXPLANATION, protocol=protocol, donor=DONOR,
                             donor_source="L3N872/L2H7", seed=0)
    labels = [int(i.active) for i in items]
    predicted = [detect_rule(i.text + data.token, EXPLANATION) for i in items]
    ba, lo, hi, p_half = ba_reference(labels, predicted)
    assert result.value == pytest.approx(ba, abs=1e-12)
    assert result.interval == pytest.approx((lo, hi), abs=2e-4)
    assert result.p_value == pytest.approx(p_half, abs=2e-4)
    assert result.n == len(items) and result.calls == 2 * len(items)
    if protocol == "minitf":  # logprobs: the answer at -0.1, the other at -2.4, so P(Yes) ranks as the answer
        assert result.roc_auc == pytest.approx(ba)  # two score levels: AUC = balanced accuracy
    else:
        assert result.roc_auc is None
    by_name = {b.name: b for b in result.baselines}
    assert by_name["constant_yes"].value == by_name["constant_no"].value == 0.5
    donor = [detect_rule(i.text + data.token, DONOR) for i in items]
    assert by_name["random_explanation"].value == pytest.approx(ba_reference(labels, donor)[0])
    assert by_name["random_explanation"].source == "L3N872/L2H7"
    assert ScorerResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_fuzz_marks_the_true_sources_against_random_ones(server, tmp_path, data):
    cases = fuzz_cases(data, seed=5)
    assert [c.item for c in cases] == [n for n, i in enumerate(data.test) if i.active]
    for c in cases:
        item = data.test[c.item]
        k = min(3, len(item.tokens) // 2)
        assert c.true == item.sources[:k] and len(c.random) == k and not set(c.true) & set(c.random)
    assert fuzz_cases(data, seed=5) == cases and fuzz_cases(data, seed=6) != cases
    result = score_fuzz(make_llm(server, tmp_path), data, EXPLANATION, seed=5)
    predicted = []
    for c in cases:
        tokens = data.test[c.item].tokens
        predicted += [fuzz_rule([tokens[p] for p in c.true]), fuzz_rule([tokens[p] for p in c.random])]
    labels = [1, 0] * len(cases)
    ba, lo, hi, p_half = ba_reference(labels, predicted)
    assert result.value == pytest.approx(ba, abs=1e-12) and result.value > 0.5
    assert result.interval == pytest.approx((lo, hi), abs=2e-4) and result.p_value == pytest.approx(p_half, abs=2e-4)
    assert result.detail["seed"] == 5 and result.detail["cases"] == [c.to_json() for c in cases]
    assert len(server.requests) == result.calls == 2 * len(cases)


def test_simulation_correlates_as_scipy_does(server, tmp_path, data):
    result = score_simulation(make_llm(server, tmp_path), data, EXPLANATION, donor=DONOR)
    examples = [(i.text + data.token) for i in data.test]
    answers = [parse_simulation(simulate_rule(e)) for e in examples]
    kept = [(a, i.context) for a, i in zip(answers, data.test) if a is not None]
    x, y = np.array([a for a, _ in kept], float), np.array([c for _, c in kept])
    assert result.detail["n_malformed"] == sum(a is None for a in answers)
    assert result.detail["predictions"] == answers
    ref = scipy.stats.pearsonr(x, y, alternative="greater")
    assert result.value == pytest.approx(ref.statistic, abs=1e-10)
    assert result.p_value == pytest.approx(ref.pvalue, abs=1e-10)
    assert result.interval == pytest.approx(fisher(ref.statistic, len(x)), abs=1e-10)
    rho = scipy.stats.spearmanr(x, y, alternative="greater")
    assert result.detail["spearman"] == pytest.approx(rho.statistic, abs=1e-10)
    assert result.detail["spearman_p"] == pytest.approx(rho.pvalue, abs=1e-10)
    (baseline,) = result.baselines  # the donor's answers are the same rule: the same correlation
    assert baseline.name == "random_explanation" and baseline.value == pytest.approx(ref.statistic, abs=1e-10)
    assert result.calls == len(server.requests) == 2 * len(data.test)


@pytest.mark.parametrize("text, value", [("7", 7), (" 10.", 10), ("Score: 0", 0), ("3/10", 3), ("7.5", None),
                                         ("11", None), ("-1", None), ("seven", None), ("", None)])
def test_parse_simulation(text, value):
    assert parse_simulation(text) == value


def test_hooks_plan_exactly_the_calls_made_and_a_rerun_makes_none(server, tmp_path, model, test_trace):
    ctx = ScoringContext(model, "L3N872", " course", "neo2024", seed=2, test=test_trace)
    pair = PairToScore(HEAD, EXPLANATION, head_examples(test_trace, HEAD, limit=10))
    assert [i.text for i in pair_data(ctx, pair).test] == pair.test.active + pair.test.inactive
    planned = {name: PLANNED_CALLS[name](ctx, pair) for name in ("detection", "fuzz", "simulation")}
    assert all(n > 0 for n in planned.values()) and not server.requests  # counted before any call
    results = {name: RUNNERS[name](make_llm(server, tmp_path), ctx, pair) for name in planned}
    assert len(server.requests) == sum(planned.values())
    assert {n: r.calls for n, r in results.items()} == planned
    assert all(r.value is not None for r in results.values())
    again = {name: RUNNERS[name](make_llm(server, tmp_path), ctx, pair) for name in planned}
    assert again == results and len(server.requests) == sum(planned.values())  # all from the cache
    assert [len(PLANNERS[n](ctx, pair)) for n in planned] == list(planned.values())


@pytest.mark.parametrize("protocol", ["neo2024", "minitf"])
def test_detection_leaves_malformed_answers_out_by_the_protocols_parsing(tmp_path, data, protocol):
    """" Yes" is Yes to minitf's parsing and malformed to the authors' exact one; "Maybe" is malformed to both."""
    def reply(body):
        example = example_of(body["messages"][-1]["content"])
        return "Maybe" if ";" in example else (" Yes" if "," in example else "No")

    srv = FakeServer()
    srv.answer = reply
    srv.start()
    try:
        result = score_detection(make_llm(srv, tmp_path), data, EXPLANATION, protocol=protocol)
    finally:
        srv.stop()
    items = data.test + data.negatives

    def expected(example):
        if ";" in example:
            return None
        if "," not in example:
            return 0
        return 1 if protocol == "minitf" else None

    predicted = [expected(i.text + data.token) for i in items]
    kept = [(int(i.active), p) for i, p in zip(items, predicted) if p is not None]
    assert result.detail["n_malformed"] == len(items) - len(kept) > 0
    ba, lo, hi, _ = ba_reference([y for y, _ in kept], [p for _, p in kept])
    assert result.value == pytest.approx(ba, abs=1e-12) and result.interval == pytest.approx((lo, hi), abs=2e-4)
    assert result.detail["answers"] == [[i.kind, i.where, int(i.active), p] for i, p in zip(items, predicted)]
