"""``cli.py explain`` and ``cli.py score`` end to end, on the embedded model and a real HTTP server.

The server is ``test_llm.FakeServer`` (chat completions on 127.0.0.1, reached through the real
``openai`` client). It answers deterministically from the prompt text: an explanation names a
hash of the explain prompt; a Yes/No answer (or "Maybe", a malformed one) is a hash of that
explanation and the example line. The expected confusion counts, balanced accuracy and ROC-AUC
are recomputed here from the test split's labels, read from ``cli.py trace --split test --json``.

Neuron L3N872 of ``weights/tiny`` (the default ``--model``) promotes " course"; on its top 30
train prompts its differential heads are L2H7 and L2H4.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from minitf.explain.driver import HeadExamples, explain_messages, format_example
from minitf.explain.llm import MISSING_KEY_MESSAGE
from minitf.util.fmt import count
from test_llm import SECRET, FakeServer, dead_url

ROOT = Path(__file__).resolve().parents[1]
NEURON = "L3N872"
HEADS = ["L2H4", "L2H7"]
N_PROMPTS = "30"  # explain/score default; given to trace explicitly


# ------------------------------------------------------------------------------------- helpers


def env_for(key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MINITF_CACHE_DIR")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if key is not None:
        env["OPENAI_API_KEY"] = key
    return env


# the library's MISSING_KEY_MESSAGE names the parameter `base_url`; the CLI names the flag
NO_KEY_LINE = "error: OPENAI_API_KEY is not set: export it, or pass --base-url for a local OpenAI-compatible server\n"
assert NO_KEY_LINE == f"error: {MISSING_KEY_MESSAGE.replace('`base_url`', '--base-url')}\n"


def cli(*args: str, key: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env_for(key), timeout=120)


def ok_json(out: subprocess.CompletedProcess) -> Any:
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, out.stderr


def h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def explanation_for(explain_user_prompt: str) -> str:
    return f"The head is active in documents of kind {h(explain_user_prompt)[:8]}."


def verdict(explanation: str, example_line: str) -> str:
    """The fake LLM's Yes/No answer: a fixed hash of (explanation, example); 1 in 6 is "Maybe"."""
    v = int(h(explanation + "\x00" + example_line)[:8], 16)
    if v % 6 == 0:
        return "Maybe"
    return "Yes" if v % 2 else "No"


def fake_answer(body: dict[str, Any]) -> str:
    user = body["messages"][-1]["content"]
    if body.get("max_tokens") != 1:  # an explain request
        return explanation_for(user)
    explanation = re.search(r"The head is active in documents of kind [0-9a-f]{8}\.", user).group(0)
    example = next(line for line in user.splitlines() if line.startswith("* "))[2:]
    return verdict(explanation, example)


# p_yes the fake server's logprobs imply: the answer at -0.1, the other of Yes/No at -2.4
# (for "Maybe" the runner-up is "Yes", so P(yes | yes or no) = 1).
P_YES = {"Yes": 1 / (1 + math.exp(-2.3)), "No": math.exp(-2.3) / (1 + math.exp(-2.3)), "Maybe": 1.0}
PREDICTION = {"Yes": 1, "No": 0, "Maybe": None}


def expected_score(labels: list[int], answers: list[str]) -> dict[str, Any]:
    """Confusion counts, balanced accuracy over answered prompts and ROC-AUC, computed from scratch."""
    answered = [(y, PREDICTION[a]) for y, a in zip(labels, answers) if PREDICTION[a] is not None]
    tp = sum(1 for y, p in answered if y == 1 and p == 1)
    fn = sum(1 for y, p in answered if y == 1 and p == 0)
    tn = sum(1 for y, p in answered if y == 0 and p == 0)
    fp = sum(1 for y, p in answered if y == 0 and p == 1)
    pos = [P_YES[a] for y, a in zip(labels, answers) if y == 1]
    neg = [P_YES[a] for y, a in zip(labels, answers) if y == 0]
    auc = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp, "n_test": len(labels),
            "n_malformed": answers.count("Maybe"),
            "balanced_accuracy": (tp / (tp + fn) + tn / (tn + fp)) / 2, "roc_auc": auc}


@pytest.fixture(scope="module")
def traces() -> dict[str, dict[str, Any]]:
    """``trace --json`` of the neuron's top 30 train and test prompts (labels: ``active_heads``)."""
    out = {}
    for split in ("train", "test"):
        out[split] = ok_json(cli("trace", "--neuron", NEURON, "--split", split, "--n-prompts", N_PROMPTS,
                                 "--ablate", "0", "--protocol", "minitf", "--json"))
    assert out["train"]["neuron"]["token"]["str"] == " course"
    assert sorted(out["train"]["differential_heads"]) == HEADS
    return out


def examples(trace: dict[str, Any], head: str) -> HeadExamples:
    prompts = trace["prompts"]
    return HeadExamples(NEURON, head, trace["neuron"]["token"]["str"],
                        [p["text"] for p in prompts if head in p["active_heads"]],
                        [p["text"] for p in prompts if head not in p["active_heads"]])


@pytest.fixture
def server():
    yield from FakeServer.serving(fake_answer)


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ------------------------------------------------------------------------------------- tests


def test_dry_run_prints_the_exact_prompts_and_calls_nothing(server: FakeServer, traces, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    expected = {head: explain_messages(examples(traces["train"], head)) for head in HEADS}
    # JSON, with a reachable server and no key: the messages, and no request
    out = ok_json(cli("explain", "--neuron", NEURON, "--dry-run", "--base-url", server.url,
                      "--cache-dir", str(cache), "--protocol", "minitf", "--json"))
    assert sorted(out["heads"]) == HEADS and out["token"] == " course" and out["n_prompts"] == 30
    for head in HEADS:
        entry = out["heads"][head]
        ex = examples(traces["train"], head)
        assert (entry["n_active"], entry["n_inactive"]) == (len(ex.active), len(ex.inactive))
        assert entry["messages"] == expected[head]
        assert "explanation" not in entry
    # text, with neither key nor base URL: every message verbatim
    text = cli("explain", "--neuron", NEURON, "--dry-run", "--cache-dir", str(cache), "--protocol", "minitf")
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    for head in HEADS:
        ex = examples(traces["train"], head)
        assert f"===== {NEURON} {head}: {len(ex.active)} active / {len(ex.inactive)} inactive train prompts" in text.stdout
        for message in expected[head]:
            assert f"--- {message['role']}\n{message['content']}\n" in text.stdout + "\n"
    assert server.requests == []
    assert files_under(cache) == []  # nothing cached, nothing stored
    # a head with no active train prompt is reported as skipped, as in a real run (not an error)
    one = ok_json(cli("explain", "--neuron", NEURON, "--dry-run", "--head", "L0H0", "--cache-dir", str(cache),
                      "--json"))
    assert one["heads"]["L0H0"]["n_active"] == 0 and "skip_reason" in one["heads"]["L0H0"]
    assert server.requests == []


def test_explain_then_score_end_to_end(server: FakeServer, traces, tmp_path: Path) -> None:
    """explain with OPENAI_API_KEY set, score with --base-url and no key, then both again from the cache."""
    cache = tmp_path / "cache"
    common = ["--neuron", NEURON, "--base-url", server.url, "--llm", "fake-model", "--cache-dir", str(cache),
              "--protocol", "minitf", "--json"]

    # ---- explain: one request per differential head, the dry-run's messages, explanations stored
    explained = cli("explain", *common, key=SECRET)
    explain_json = ok_json(explained)
    assert len(server.requests) == 2
    assert {r["authorization"] for r in server.requests} == {f"Bearer {SECRET}"}  # the key is really used
    sent = [r["body"]["messages"] for r in server.requests]
    explanations = {}
    for head in HEADS:
        messages = explain_messages(examples(traces["train"], head))
        assert messages in sent
        explanations[head] = explanation_for(messages[-1]["content"])
        assert explain_json["heads"][head]["explanation"] == explanations[head]
    assert all(r["body"]["model"] == "fake-model" for r in server.requests)
    (results_file,) = (cache / "results").glob(f"*/{NEURON}.json")
    stored = json.loads(results_file.read_text())
    assert {head: stored[head]["explanation"] for head in HEADS} == explanations
    assert {stored[head]["scores"] for head in HEADS} == {"paper"}  # which head scores made them

    # ---- score: one Yes/No request per (head, test prompt); scores recomputed from the test labels
    scored = cli("score", *common, key=None)
    score_json = ok_json(scored)
    token = traces["test"]["neuron"]["token"]["str"]
    expected = {}
    for head in HEADS:
        test = examples(traces["test"], head)
        prompts = test.active + test.inactive
        labels = [1] * len(test.active) + [0] * len(test.inactive)
        answers = [verdict(explanations[head], format_example(p, token)) for p in prompts]
        expected[head] = (expected_score(labels, answers), labels, answers, prompts)
    n_test = sum(e[0]["n_test"] for e in expected.values())
    assert n_test == 60
    assert len(server.requests) == 2 + n_test
    assert {r["authorization"] for r in server.requests[2:]} == {"Bearer none"}  # no key: a placeholder
    assert score_json["skipped"] == {}
    assert [s["head"] for s in score_json["scores"]] == HEADS
    for s in score_json["scores"]:
        want, labels, answers, prompts = expected[s["head"]]
        for field in ("tp", "fn", "tn", "fp", "n_test", "n_malformed"):
            assert s[field] == want[field], (s["head"], field)
        assert s["balanced_accuracy"] == pytest.approx(want["balanced_accuracy"])
        assert s["roc_auc"] == pytest.approx(want["roc_auc"])
        assert s["explanation"] == explanations[s["head"]] and s["skipped"] is False
        assert [i["label"] for i in s["items"]] == labels
        assert [i["answer"] for i in s["items"]] == answers
        assert [i["prompt"] for i in s["items"]] == prompts
        # malformed ("Maybe") answers: counted apart, prediction None, out of the confusion counts
        assert all(i["prediction"] is None for i in s["items"] if i["answer"] == "Maybe")
        assert s["tp"] + s["fn"] + s["tn"] + s["fp"] == s["n_test"] - s["n_malformed"]
    # the script does produce malformed answers, and counting them as No would change the score
    assert sum(e[0]["n_malformed"] for e in expected.values()) >= 1
    as_no = {head: expected_score(labels, ["No" if a == "Maybe" else a for a in answers])["balanced_accuracy"]
             for head, (_, labels, answers, _) in expected.items()}
    assert any(as_no[head] != pytest.approx(expected[head][0]["balanced_accuracy"]) for head in HEADS)
    # the summary: mean ± sample std and a 10-bin histogram over [0, 1] of the balanced accuracies
    bas = [expected[head][0]["balanced_accuracy"] for head in HEADS]
    summary = score_json["summary"]
    assert summary["count"] == 2
    assert summary["mean"] == pytest.approx(statistics.mean(bas))
    assert summary["std"] == pytest.approx(statistics.stdev(bas))
    bins = summary["histogram"]
    assert len(bins) == 10 and bins[0]["low"] == 0.0 and bins[-1]["high"] == 1.0
    assert [b["count"] for b in bins] == [
        sum(1 for x in bas if b["low"] <= x < b["high"] or (i == 9 and x == 1.0)) for i, b in enumerate(bins)]
    stored = json.loads(results_file.read_text())
    for head in HEADS:
        assert stored[head]["balanced_accuracy"] == pytest.approx(expected[head][0]["balanced_accuracy"])
        assert stored[head]["n_malformed"] == expected[head][0]["n_malformed"]

    # ---- a second explain + score: everything from the cache, same output
    n_requests = len(server.requests)
    again_explained = cli("explain", *common, key=SECRET)
    assert ok_json(again_explained) == explain_json
    again_scored = cli("score", *common, key=SECRET)
    assert ok_json(again_scored) == score_json
    # ... even with no key and the server down (text view: scores, summary; call counts on stderr)
    server.stop()
    offline = cli("score", *[a for a in common if a != "--json"], key=None)
    assert offline.returncode == 0 and "Traceback" not in offline.stderr, offline.stderr
    assert offline.stderr == f"LLM: 0 calls, {n_test} cache hits\n"
    for s in score_json["scores"]:
        assert f"{s['head']}: balanced accuracy {s['balanced_accuracy']:.3f}, ROC-AUC {s['roc_auc']:.3f}" in offline.stdout
        assert f"{count(s['n_malformed'], 'malformed answer')})" in offline.stdout
    assert f"balanced accuracy: mean {summary['mean']:.3f} ± {summary['std']:.3f} (std, N-1), n=2" in offline.stdout
    assert len(server.requests) == n_requests
    # ... but another server (here OpenAI: no --base-url) never gets this server's answers
    other = cli("score", *[a for a in common if a not in ("--base-url", server.url)], key=None)
    assert_one_line_error(other)
    assert other.stderr == NO_KEY_LINE
    # ... and a dead server fails, soon, naming only options that exist
    dead_server = dead_url()
    dead = [dead_server if a == server.url else a for a in common]
    start = time.monotonic()
    refused = cli("score", *dead, "--max-retries", "1", "--timeout", "2", key=None)
    assert time.monotonic() - start < 60
    assert_one_line_error(refused, "connection error", "gave up after 2 attempts (--max-retries 1, "
                                                       "--timeout 2 s per attempt) in ")
    help_text = cli("score", "--help", key=None).stdout
    assert all(option in help_text for option in re.findall(r"--[a-z][a-z-]+", refused.stderr))

    # ---- scoring under other head scores than the explanations' is refused, before any request
    refused = cli("score", *common, "--scores", "exact", key=None)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "--scores" in refused.stderr
    assert len(server.requests) == n_requests

    # ---- the key never reaches the cache or the results
    files = files_under(cache)
    assert len(files) == 2 + n_test + 1  # one per request, plus the results file
    for path in files:
        text = path.read_bytes().decode("utf-8")
        assert SECRET not in text and SECRET[:12] not in text and "127.0.0.1" not in text


def test_score_before_explain_says_run_explain_first(server: FakeServer, tmp_path: Path) -> None:
    out = cli("score", "--neuron", NEURON, "--base-url", server.url, "--cache-dir", str(tmp_path / "fresh"),
              "--json", key=SECRET)
    assert_one_line_error(out, f"no explanation for {NEURON}", "run 'python cli.py explain' first")
    assert out.stdout == ""
    assert server.requests == []


def test_no_key_no_base_url_no_cache_is_one_clear_line(tmp_path: Path) -> None:
    cache = tmp_path / "fresh"
    out = cli("explain", "--neuron", NEURON, "--cache-dir", str(cache), key=None)
    assert_one_line_error(out)
    assert out.stderr == NO_KEY_LINE
    assert files_under(cache) == []
