"""``score --scorers paper --baselines``: the paper's score with its interval, p-value and baselines, end to end.

A loopback chat-completions server (``test_llm.FakeServer`` through the real ``openai`` client) answers by a
known rule: an explanation names one word (chosen by a hash of the explain prompt) — "active when the text
contains 'W'" — and a Yes/No request is answered "Yes" exactly when the example contains the word its
explanation names ("No" for an explanation naming none, such as the token-only one). So every answer, score,
interval and p-value is recomputed here from the test labels of ``cli.py trace --json`` alone: the interval by
scipy quadrature of the Beta posterior (``test_uncertainty._quad_reference``), the p-value by brute force over
every placement of the positive labels.
"""
from __future__ import annotations

import itertools
import json
import re

import pytest

from test_explain_cli import HEADS, NEURON, assert_one_line_error, cli, h, ok_json
from test_llm import FakeServer
from test_uncertainty import _quad_reference

WORDS = [" the", " of", ",", " a", " and"]
N_TEST = 10  # neo2024's


def answer(body) -> str:
    user = body["messages"][-1]["content"]
    if "Are the marked tokens" in user:  # fuzzing (test_scorers' rules): Yes iff " of" or " the" is marked
        return "Yes" if any(t.strip() in ("of", "the") for t in re.findall(r"<<(.*?)>>", user)) else "No"
    if "On a scale from 0" in user:  # simulation: the example's length mod 11
        m = re.search(r'Example: """\n(.*)\n"""\nAnswer: $', user, re.S) or re.search(r'\n\* (.*)\n"""', user, re.S)
        return f"Score: {len(m[1]) % 11}"
    if body.get("max_tokens", 0) > 20:  # an explain request
        return f"active when the text contains '{WORDS[int(h(user)[-8:], 16) % len(WORDS)]}'"
    explanation = user.split("\n")[0]
    example = user.split('Example: """\n', 1)[1].rsplit('\n"""', 1)[0]
    word = re.search(r"contains '(.+?)'$", explanation)
    return "Yes" if word is not None and word[1] in example else "No"


@pytest.fixture(scope="module")
def server():
    yield from FakeServer.serving(answer)


@pytest.fixture(scope="module")
def test_prompts():
    """The first N_TEST prompts of the test split (their text and active heads) and the neuron's token."""
    trace = ok_json(cli("trace", "--neuron", NEURON, "--split", "test", "--n-prompts", "30", "--ablate", "0",
                        "--json"))
    return trace["prompts"][:N_TEST], trace["neuron"]["token"]["str"]


@pytest.fixture(scope="module")
def explained(server, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    common = ["--neuron", NEURON, "--base-url", server.url, "--llm", "fake-model", "--cache-dir", str(cache)]
    out = ok_json(cli("explain", *common, "--json"))
    assert sorted(out["heads"]) == HEADS
    return common, {head: out["heads"][head]["explanation"] for head in HEADS}


def expected_pair(head, explanation, prompts, token):
    """Labels (active first, as scored) and the rule's predictions for ``explanation`` on ``head``'s prompts."""
    ordered = ([p for p in prompts if head in p["active_heads"]] + [p for p in prompts if head not in p["active_heads"]])
    labels = [int(head in p["active_heads"]) for p in ordered]
    word = re.search(r"contains '(.+?)'$", explanation)
    predictions = [int(word is not None and word[1] in p["text"] + token) for p in ordered]
    return labels, predictions


def ba(labels, predictions):
    tp = sum(y and p for y, p in zip(labels, predictions))
    tn = sum((not y) and (not p) for y, p in zip(labels, predictions))
    n_pos = sum(labels)
    return (tp / n_pos + tn / (len(labels) - n_pos)) / 2, tp, len(labels) - n_pos - tn, tn, n_pos - tp


def brute_force_p(labels, predictions) -> float:
    """Share of all ways to place the positive labels among the items whose balanced accuracy ≥ the observed one
    (each distinct relabeling as likely under a uniform shuffle)."""
    observed = ba(labels, predictions)[0]
    n, k = len(labels), sum(labels)
    placements = list(itertools.combinations(range(n), k))
    relabeled = [[int(i in set(pos)) for i in range(n)] for pos in placements]
    return sum(ba(y, predictions)[0] >= observed - 1e-12 for y in relabeled) / len(placements)


def check_scored(value, interval, labels, predictions):
    want, tp, fp, tn, fn = ba(labels, predictions)
    low, high, _ = _quad_reference(tp, fp, tn, fn)
    assert value == pytest.approx(want)
    assert interval == pytest.approx([low, high], abs=2e-4)


def test_score_prints_intervals_and_baselines_and_counts_its_calls(server, explained, test_prompts):
    common, explanations = explained
    prompts, token = test_prompts
    # ---- the dry run counts the calls and makes none
    start = len(server.requests)
    dry = ok_json(cli("score", *common, "--baselines", "--dry-run", "--json"))
    assert len(server.requests) == start
    counts = {c["name"]: c["calls"] for c in dry["calls"]}
    assert list(counts) == ["paper", "paper/random_explanation", "paper/token_only"]
    # each head's explanation on the 10 prompts; the random explanation of one head is the other's: asked already;
    # the token-only explanation is the same for both heads
    assert counts == {"paper": 2 * N_TEST, "paper/random_explanation": 0, "paper/token_only": N_TEST}
    # ---- --max-calls below the count refuses before any call
    refused = cli("score", *common, "--baselines", "--max-calls", str(sum(counts.values()) - 1))
    assert_one_line_error(refused, f"--max-calls {sum(counts.values()) - 1}: this needs {sum(counts.values())} "
                                   "LLM calls")
    assert len(server.requests) == start
    # ---- the run makes exactly the calls counted
    scored = ok_json(cli("score", *common, "--baselines", "--json"))
    assert len(server.requests) - start == sum(counts.values())
    for s in scored["scores"]:
        head = s["head"]
        other = next(x for x in HEADS if x != head)
        labels, predictions = expected_pair(head, explanations[head], prompts, token)
        paper = s["scorers"]["paper"]
        assert paper["value"] == s["balanced_accuracy"]  # the paper's number, unchanged beside its interval
        check_scored(paper["value"], paper["interval"], labels, predictions)
        _, tp, fp, tn, fn = ba(labels, predictions)
        assert paper["detail"]["p_at_most_chance"] == pytest.approx(_quad_reference(tp, fp, tn, fn)[2], abs=2e-4)
        assert paper["detail"]["posterior_mean"] == pytest.approx(((tp + 1) / (tp + fn + 2) + (tn + 1) / (tn + fp + 2)) / 2)
        assert paper["p_value"] == pytest.approx(brute_force_p(labels, predictions))
        assert paper["detail"]["p_value_kind"] == "permutation, exact"
        baselines = {b["name"]: b for b in paper["baselines"]}
        assert list(baselines) == ["random_explanation", "token_only", "constant_yes", "constant_no"]
        # the random explanation is the other head's (never the pair's own), scored on this pair's labels
        rnd = baselines["random_explanation"]
        assert rnd["source"] == other and rnd["explanation"] == explanations[other]
        check_scored(rnd["value"], rnd["interval"], labels, expected_pair(head, explanations[other], prompts, token)[1])
        # token only: the rule answers No to all; constant answers: ½ with the all-Yes / all-No posterior
        check_scored(baselines["token_only"]["value"], baselines["token_only"]["interval"], labels, [0] * len(labels))
        check_scored(baselines["constant_yes"]["value"], baselines["constant_yes"]["interval"], labels, [1] * len(labels))
        check_scored(baselines["constant_no"]["value"], baselines["constant_no"]["interval"], labels, [0] * len(labels))
        assert baselines["constant_yes"]["value"] == 0.5
    # ---- a rerun (here the text view) sends no request twice: per head the score with its interval, its baselines
    n = len(server.requests)
    text = cli("score", *common, "--baselines")
    assert text.returncode == 0, text.stderr
    for s in scored["scores"]:
        paper = s["scorers"]["paper"]
        low, high = paper["interval"]
        assert (f"  paper: balanced accuracy {paper['value']:.3f} [{low:.3f}, {high:.3f}] (95 % interval), "
                f"P(BA ≤ 0.5) {paper['detail']['p_at_most_chance']:.3f}, permutation p {paper['p_value']:.3f}") in text.stdout
    assert text.stdout.count("    baselines: random explanation (L2H") == 2
    assert text.stderr == f"LLM: 0 calls, {2 * 3 * N_TEST} cache hits\n"  # 2 heads × (paper, random, token only)
    again = ok_json(cli("score", *common, "--baselines", "--dry-run", "--json"))
    assert {c["name"]: c["calls"] for c in again["calls"]} == dict.fromkeys(counts, 0)
    assert len(server.requests) == n
    bodies = [json.dumps(r["body"], sort_keys=True) for r in server.requests]
    assert len(set(bodies)) == len(bodies)


def test_default_scorers_add_no_call_and_bad_scorers_are_refused(server, explained):
    common, _ = explained
    dry = ok_json(cli("score", *common, "--dry-run", "--json"))
    assert [c["name"] for c in dry["calls"]] == ["paper"]  # no LLM baseline unless asked
    out = ok_json(cli("score", *common, "--json"))
    for s in out["scores"]:
        assert [b["name"] for b in s["scorers"]["paper"]["baselines"]] == ["constant_yes", "constant_no"]
    bad = cli("score", *common, "--scorers", "paper,psychic")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--scorers 'psychic' is not a scorer (choose from paper, detection, fuzz, simulation)" in bad.stderr


# ------------------------------------------------------------------------------------------------ study


def bh_reference(p, level=0.05) -> int:
    """How many p-values Benjamini–Hochberg rejects: the largest k with p_(k) ≤ k·level/m."""
    p = sorted(p)
    return max([k for k in range(1, len(p) + 1) if p[k - 1] <= k * level / len(p)], default=0)


def test_study_scores_every_pair_with_its_interval_and_baselines(server, tmp_path):
    import numpy as np

    out, cache = tmp_path / "study", tmp_path / "cache"
    cmd = ["study", "--out", str(out), "--layers", "3", "--per-layer", "3", "--n-prompts", "8", "--ablate", "0",
           "--llm", "fake-model", "--no-progress", "--baselines", "--seed", "3", "--base-url", server.url,
           "--cache-dir", str(cache)]
    start = len(server.requests)
    study = ok_json(cli(*cmd, "--json"))
    n_sent = len(server.requests) - start
    assert study["settings"]["scorers"] == "paper" and study["settings"]["baselines"] is True
    assert study["settings"]["seed"] == 3
    recs = {p.stem: json.loads(p.read_text()) for p in (out / "neurons").glob("*.json")}
    pairs = [(r, h, e) for _, r in sorted(recs.items()) for h, e in sorted((r["explanations"] or {}).items())
             if e.get("scorers")]
    assert len(pairs) >= 2
    sources = []
    for r, head, e in pairs:
        paper = e["scorers"]["paper"]
        labels = [i["label"] for i in e["items"]]
        predictions = [i["prediction"] for i in e["items"]]
        assert paper["value"] == e["balanced_accuracy"]
        check_scored(paper["value"], paper["interval"], labels, predictions)
        assert paper["p_value"] == pytest.approx(brute_force_p(labels, predictions))
        rnd = next(b for b in paper["baselines"] if b["name"] == "random_explanation")
        assert rnd["source"] != f"{r['neuron']}/{head}"  # never the pair's own
        donor_neuron, donor_head = rnd["source"].split("/")
        assert rnd["explanation"] == recs[donor_neuron]["explanations"][donor_head]["explanation"]
        sources.append(rnd["source"])
        word = re.search(r"contains '(.+?)'$", rnd["explanation"])[1]
        check_scored(rnd["value"], rnd["interval"], labels, [int(word in i["prompt"] + e["token"]) for i in e["items"]])
    assert sorted(sources) == sorted(f"{r['neuron']}/{h}" for r, h, _ in pairs)  # each explanation lent once
    # ---- the aggregates over all pairs, recomputed
    agg = study["aggregates"]["all"]["scorers"]["paper"]
    values = [e["scorers"]["paper"]["value"] for _, _, e in pairs]
    assert agg["distribution"]["mean"] == pytest.approx(np.mean(values))
    assert agg["bootstrap"]["mean"]["estimate"] == pytest.approx(np.mean(values))
    assert agg["bootstrap"]["mean"]["low"] <= np.mean(values) <= agg["bootstrap"]["mean"]["high"]
    assert agg["bootstrap"]["share"]["estimate"] == pytest.approx(np.mean([v >= 0.8 for v in values]))
    assert agg["fdr"]["rejected"] == bh_reference([e["scorers"]["paper"]["p_value"] for _, _, e in pairs])
    assert agg["above_chance"]["share"] == pytest.approx(
        np.mean([e["scorers"]["paper"]["interval"][0] > 0.5 for _, _, e in pairs]))
    assert agg["baselines"]["random_explanation"]["mean"] == pytest.approx(
        np.mean([b["value"] for _, _, e in pairs for b in e["scorers"]["paper"]["baselines"]
                 if b["name"] == "random_explanation"]))
    # ---- a rerun sends no request; the table prints each scorer's interval and baselines
    n = len(server.requests)
    again = cli(*cmd)
    assert again.returncode == 0, again.stderr
    assert len(server.requests) == n and n_sent > 0
    m = agg["bootstrap"]["mean"]
    assert f"  paper: mean {m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}], share ≥ 0.8" in again.stdout
    assert "    baselines: random explanation " in again.stdout
    assert again.stdout.splitlines()[-1].startswith("all ")
    page = (out / "index.html").read_text()
    r, h, e = pairs[0]
    paper = e["scorers"]["paper"]
    assert "How far to trust the scores" in page
    assert (f"<td class=nw>{r['neuron']} {h}</td><td class=nw>{paper['value']:.3f} [{paper['interval'][0]:.3f}, "
            f"{paper['interval'][1]:.3f}]</td>") in page


def test_every_scorer_counted_before_it_runs(server, explained):
    """``--scorers paper,detection,fuzz,simulation --baselines``: the dry run's count per scorer is the calls then
    made (the scorers' own values are checked in test_scorers.py); each head prints each scorer's line."""
    common, _ = explained
    scorers = ["--scorers", "simulation,paper,fuzz,detection", "--baselines"]
    start = len(server.requests)
    dry = ok_json(cli("score", *common, *scorers, "--dry-run", "--json"))
    assert len(server.requests) == start
    names = [c["name"] for c in dry["calls"]]
    assert names == ["paper", "paper/random_explanation", "paper/token_only", "detection", "fuzz", "simulation"]
    assert all(c["calls"] > 0 for c in dry["calls"] if c["name"] in ("detection", "fuzz", "simulation"))
    text = cli("score", *common, *scorers)
    assert text.returncode == 0, text.stderr
    assert len(server.requests) - start == sum(c["calls"] for c in dry["calls"])
    for name in ("paper", "detection", "fuzz", "simulation"):
        assert text.stdout.count(f"\n  {name}: ") == len(HEADS), (name, text.stdout)


def test_scorer_aggregates_of_a_correlation_scorer():
    """A scorer whose metric is a correlation (simulation): chance is 0, the histogram spans [-1, 1], BH runs on its
    p-values and its baselines are summarised; pairs without a value are left out (recomputed with numpy)."""
    import numpy as np

    from minitf.explain.scorers import Baseline, ScorerResult
    from minitf.study.scoring import scorer_aggregates

    rng = np.random.default_rng(0)
    rows = [(float(r), (float(r) - 0.3, min(1.0, float(r) + 0.3)), float(p), float(b))
            for r, p, b in zip(rng.uniform(-1, 1, 12), rng.uniform(0, 0.2, 12), rng.uniform(-1, 1, 12))]
    records = [{"neuron": f"L3N{i}", "explanations": {"L1H1": {"scorers": {"simulation": ScorerResult(
        "simulation", "pearson", r, ci, p, baselines=(Baseline("random_explanation", b),)).to_json()}}}}
        for i, (r, ci, p, b) in enumerate(rows)]
    records.append({"neuron": "L3N99", "explanations": {"L1H1": {"scorers": {"simulation": ScorerResult(
        "simulation", "pearson", None, skip_reason="constant").to_json()}}}})
    sim = scorer_aggregates(records, seed=1)["simulation"]
    values = [r for r, _, _, _ in rows]
    assert sim["pairs"] == 13 and sim["scored"] == 12
    assert sim["distribution"]["mean"] == pytest.approx(np.mean(values))
    assert sim["distribution"]["std"] == pytest.approx(np.std(values, ddof=1))
    counts, _ = np.histogram(values, bins=10, range=(-1, 1))
    assert [b["count"] for b in sim["distribution"]["histogram"]] == counts.tolist()
    assert sim["above_chance"] == {"chance": 0.0, "with_interval": 12,
                                   "share": pytest.approx(np.mean([ci[0] > 0 for _, ci, _, _ in rows]))}
    assert sim["fdr"]["rejected"] == bh_reference([p for _, _, p, _ in rows])
    assert sim["bootstrap"]["share"]["estimate"] == pytest.approx(np.mean([v >= 0.8 for v in values]))
    assert sim["baselines"]["random_explanation"]["mean"] == pytest.approx(np.mean([b for *_, b in rows]))
