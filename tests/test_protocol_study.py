"""The paper's protocol through ``explain`` and ``study`` (issue 20), end to end on the embedded model with a
chat-completions server on 127.0.0.1.

One small study: ``--protocol neo2024 --test-corpus`` (a second corpus: the tiny corpus's last 300 documents),
``--random-neurons --seed 3`` (layers 3-4, 3 neurons each, 8 prompts). The test checks the requests (one user
message in the authors' wording, no system message, no temperature, max_tokens 200 / 1, no logprobs), recomputes
each pair's score from its recorded answers (exactly "Yes" / "No" only; a pair without both classes dropped),
and recomputes the paper's aggregates of study.json from the per-neuron records with numpy and scipy (skew,
``scipy.stats.skewtest(alternative="greater")``, ``scipy.stats.ks_2samp``'s D, the asymptotic KS p from
``scipy.special.kolmogorov``); then ``study --compare`` prints them. ``explain --dry-run`` prints the authors'
prompt under neo2024 and minitf's under minitf.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.special
import scipy.stats

from test_explain_cli import ROOT, env_for
from test_llm import FakeServer

import minitf
from minitf.explain.prompts import AUTHORS_CONTEXT, AUTHORS_EXPLANATION_TAIL, authors_explanation_prompt
from minitf.selection import find_random_neurons

N_TEST = 10  # neo2024's test prompts per pair


def h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def answer(body) -> str:
    """Explanations name a hash of the prompt; Yes/No replies are a hash of the prompt, 1 in 6 " yes" (not exact)."""
    user = body["messages"][-1]["content"]
    if body.get("max_tokens") != 1:
        return f"The head is active when the document is of kind {h(user)[:8]}."
    return ["Yes", "No", "Yes", "No", "Yes", " yes"][int(h(user)[:8], 16) % 6]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env_for(None), timeout=900)


@pytest.fixture(scope="module")
def server():
    yield from FakeServer.serving(answer)


@pytest.fixture(scope="module")
def study(server, tmp_path_factory):
    base = tmp_path_factory.mktemp("protocol-study")
    with gzip.open(ROOT / "weights" / "tiny" / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        docs = [d for d in f.read().split("\n\n") if d.strip()]
    test_corpus = base / "test-corpus.txt"
    test_corpus.write_text("\n\n".join(docs[-300:]) + "\n", encoding="utf-8")
    out = base / "study"
    done = run("study", "--out", str(out), "--layers", "3-4", "--per-layer", "3", "--random-neurons", "--seed", "3",
               "--n-prompts", "8", "--ablate", "0", "--protocol", "neo2024", "--test-corpus", str(test_corpus),
               "--llm", "fake-model", "--base-url", server.url, "--cache-dir", str(base / "cache"), "--no-progress",
               "--json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"test prompts: the top prompts of the test corpus {test_corpus}" in done.stderr
    records = [json.loads(p.read_text()) for p in sorted((out / "neurons").glob("*.json"))]
    return out, json.loads(done.stdout), records, list(server.requests)


def test_random_neurons_are_the_authors_sampler(study):
    _, result, _, _ = study
    model = minitf.load("tiny")
    want = [str(x.neuron) for x in find_random_neurons(model, [3, 4], 3, seed=3).neurons]
    assert result["settings"]["neurons"] == want
    assert result["settings"]["protocol"] == "neo2024" and result["settings"]["random_neurons"] is True


def test_requests_are_the_authors(study):
    _, _, records, requests = study
    assert requests, "the study sent no request"
    for r in requests:
        body = r["body"]
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert "temperature" not in body and "logprobs" not in body and "top_logprobs" not in body
        assert body["max_tokens"] in (200, 1)
    sent = [r["body"]["messages"][0]["content"] for r in requests if r["body"]["max_tokens"] == 200]
    n_explained = 0
    for rec in records:
        prompts = rec["trace"]["prompts"] if "trace" in rec else []
        for head, e in (rec.get("explanations") or {}).items():
            if e["explanation"] is None:
                continue
            token = rec["trace"]["neuron"]["token"]["str"]
            active = [p["text"] for p in prompts if head in p["active_heads"]]
            inactive = [p["text"] for p in prompts if head not in p["active_heads"]]
            prompt = authors_explanation_prompt("neo2024", token, active, inactive)
            assert prompt in sent
            assert e["explanation"] == f"The head is active when the document is of kind {h(prompt)[:8]}."
            n_explained += 1
    assert n_explained >= 3


def pair_score(items) -> float | None:
    """neo2024's score of a pair from its recorded answers: exact "Yes"/"No" only, dropped if TPR or TNR is
    undefined."""
    tp = sum(1 for i in items if i["label"] == 1 and i["answer"] == "Yes")
    fn = sum(1 for i in items if i["label"] == 1 and i["answer"] == "No")
    tn = sum(1 for i in items if i["label"] == 0 and i["answer"] == "No")
    fp = sum(1 for i in items if i["label"] == 0 and i["answer"] == "Yes")
    if tp + fn == 0 or tn + fp == 0:
        return None
    return (tp / (tp + fn) + tn / (tn + fp)) / 2


def test_paper_aggregates_recomputed(study):
    out, result, records, _ = study
    scores, plain, act, inact, p_clean, n_malformed = [], [], [], [], [], 0
    for rec in records:
        for head, e in (rec.get("explanations") or {}).items():
            if e["explanation"] is None:
                continue
            items = e["items"]
            assert len(items) <= N_TEST
            n_malformed += sum(1 for i in items if i["answer"] not in ("Yes", "No"))
            want = pair_score(items)
            assert (e["balanced_accuracy"] is None) == (want is None)
            if want is not None:
                assert e["balanced_accuracy"] == pytest.approx(want)
            scores.append(want)
            counted = [i for i in items if i["answer"] in ("Yes", "No")]
            if counted:
                plain.append(np.mean([(i["answer"] == "Yes") == (i["label"] == 1) for i in counted]))
        for head, s in (rec.get("test_ablation_samples") or {}).items():
            dp, a = np.array(s["dp"][:N_TEST]), np.array(s["active"][:N_TEST], bool)
            if a.any():
                act.append(dp[a].mean())
            if (~a).any():
                inact.append(dp[~a].mean())
            p_clean += s["p_clean"][:N_TEST]
    assert n_malformed >= 1  # " yes" is not an answer under neo2024
    paper = result["aggregates"]["all"]["paper"]
    x = np.array([v for v in scores if v is not None])
    sc = paper["scores"]
    assert sc["count"] == x.size >= 3
    assert sc["mean"] == pytest.approx(x.mean()) and sc["std"] == pytest.approx(x.std())
    assert sc["skew"] == pytest.approx(scipy.stats.skew(x), abs=1e-12)
    if x.size >= 8:
        want = scipy.stats.skewtest(x, alternative="greater")
        assert sc["skewtest_z"] == pytest.approx(want.statistic) and sc["skewtest_p"] == pytest.approx(want.pvalue)
    else:
        assert sc["skewtest_p"] is None
    assert sc["share_08"] == pytest.approx((x >= 0.8).mean()) and sc["share_09"] == pytest.approx((x >= 0.9).mean())
    assert paper["plain_accuracy"] == pytest.approx(np.mean(plain))
    ab = paper["ablation"]
    assert ab["prompts"] == "test" and (ab["n_active"], ab["n_inactive"]) == (len(act), len(inact))
    assert ab["mean_active"] == pytest.approx(np.mean(act)) and ab["median_inactive"] == pytest.approx(np.median(inact))
    ks = scipy.stats.ks_2samp(act, inact)
    assert ab["d"] == pytest.approx(ks.statistic)
    ne = len(act) * len(inact) / (len(act) + len(inact))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * ks.statistic
    assert ab["p"] == pytest.approx(min(1.0, scipy.special.kolmogorov(lam)))
    assert paper["p_clean_mean"] == pytest.approx(np.mean(p_clean))

    compared = run("study", "--compare", str(out))
    assert compared.returncode == 0, compared.stderr
    row = compared.stdout.splitlines()[1]
    assert row.split()[:4] == [str(out), "neo2024", "random", str(x.size)]
    assert f"{x.mean():.3f}±{x.std():.3f}" in row


def test_dry_run_prints_the_protocols_prompt(tmp_path):
    common = ["explain", "--neuron", "L3N872", "--dry-run", "--cache-dir", str(tmp_path), "--json"]
    authors = json.loads(run(*common, "--protocol", "neo2024").stdout)
    assert authors["protocol"] == "neo2024" and any("messages" in e for e in authors["heads"].values())
    for entry in authors["heads"].values():
        if "messages" in entry:
            (message,) = entry["messages"]
            assert message["role"] == "user" and message["content"].startswith(AUTHORS_CONTEXT)
            assert message["content"].endswith(AUTHORS_EXPLANATION_TAIL["neo2024"])
            assert message["content"].count("\n*") >= entry["n_active"] + entry["n_inactive"]
    own = json.loads(run(*common, "--protocol", "minitf").stdout)
    assert any("messages" in e for e in own["heads"].values())
    for entry in own["heads"].values():
        if "messages" in entry:
            assert [m["role"] for m in entry["messages"]] == ["system", "user"]


@pytest.mark.parametrize("protocol", ["neo2024", "minitf"])
def test_a_studys_neuron_traces_what_trace_gives_under_the_same_protocol(protocol, tmp_path):
    """A study (no LLM; neo2024 by default, minitf by flag) of layer 3's first neuron traces, for it, exactly
    what ``trace --neuron X --protocol P --json`` gives: the same prompt strings (neo2024: trimmed the authors'
    way, newlines replaced, re-tokenised), the same active and differential heads, the same record."""
    out = tmp_path / "s"
    flags = [] if protocol == "neo2024" else ["--protocol", protocol]
    done = run("study", "--out", str(out), "--layers", "3", "--per-layer", "1", "--ablate", "0", "--no-progress",
               *flags)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    walk = "skip" if protocol == "neo2024" else "filtered-argmax"
    assert done.stderr.count(f"study: protocol {protocol}, neuron walk {walk}; no reject list") == 1
    study = json.loads((out / "study.json").read_text())
    assert study["settings"]["protocol"] == protocol and study["settings"]["selection"]["walk"] == walk
    (name,) = study["settings"]["neurons"]
    ours = json.loads((out / "neurons" / f"{name}.json").read_text())["trace"]
    traced = run("trace", "--neuron", name, "--ablate", "0", "--protocol", protocol, "--json")
    assert traced.returncode == 0, traced.stderr
    separate = json.loads(traced.stdout)
    assert [p["text"] for p in ours["prompts"]] == [p["text"] for p in separate["prompts"]]
    assert [p["active_heads"] for p in ours["prompts"]] == [p["active_heads"] for p in separate["prompts"]]
    assert ours["differential_heads"] == separate["differential_heads"]
    for p in ours["prompts"]:
        assert len(p.pop("positions")) == len(p["tokens"])  # the site's per-token detail, not in trace --json
    assert ours == separate
    assert ours["settings"]["protocol"]["name"] == protocol and not ours["settings"]["protocol"]["overridden"]
    authors = "trimmed the authors' way" in ours["settings"]["source"]
    assert authors == (protocol == "neo2024") and len(ours["prompts"]) >= 10
    if authors:
        assert not any("\n" in p["text"] for p in ours["prompts"])  # the authors replace newlines by spaces
