"""``cli.py study`` end to end on the embedded model, with a chat-completions server on 127.0.0.1.

One study (layers 2–5, 5 neurons each, 6 prompts per neuron to keep it short) runs uninterrupted; a second
one, with the same settings and its own LLM cache, is interrupted with SIGINT after a few neurons and then
resumed. The tests recompute every aggregate of study.json from the per-neuron records with numpy and scipy,
check one record against a separate ``cli.py trace --json``, check the explanations and scores against
what the fake LLM answered, compare the two studies (equal but for their ``run`` timings) and count the
requests (the resumed study sends each request once, and no more than the uninterrupted one), and open the
site in headless Chromium (no request, no console error, every link resolves to a file).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import scipy.stats

from test_explain_cli import ROOT, env_for, expected_score, explanation_for, fake_answer
from test_llm import FakeServer

from minitf.explain.driver import HeadExamples, explain_messages

ARGS = ["--layers", "2-5", "--per-layer", "5", "--n-prompts", "6", "--ablate", "0", "--llm", "fake-model",
        "--protocol", "minitf", "--no-progress"]


def study_cmd(out: Path, server: FakeServer, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "study", "--out", str(out), *ARGS, "--base-url", server.url,
            "--cache-dir", str(cache), *extra]


def run(cmd: list[str], key: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env_for(key), timeout=900)


def one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), \
        out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, out.stderr


def without_run(obj):
    """The study minus what may differ between two runs of it (the "run" timings and counters)."""
    if isinstance(obj, dict):
        return {k: without_run(v) for k, v in obj.items() if k != "run"}
    if isinstance(obj, list):
        return [without_run(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def server():
    yield from FakeServer.serving(fake_answer)


@pytest.fixture(scope="module")
def studies(server, tmp_path_factory):
    """(uninterrupted out, its requests, interrupted-then-resumed out, its requests before and after)."""
    base = tmp_path_factory.mktemp("study")
    a, b = base / "a", base / "b"
    start = len(server.requests)
    done = run(study_cmd(a, server, base / "cache-a", "--json"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    requests_a = server.requests[start:]

    start = len(server.requests)
    proc = subprocess.Popen(study_cmd(b, server, base / "cache-b"), cwd=ROOT, env=env_for(None),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while len(list((b / "neurons").glob("*.json"))) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert "rerun the same command to continue" in stderr and "Traceback" not in stderr, stderr
    assert not (b / "study.json").exists()
    n_saved = len(list((b / "neurons").glob("*.json")))
    assert 4 <= n_saved < 20
    before = server.requests[start:]
    resumed = run(study_cmd(b, server, base / "cache-b"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {n_saved} of 20 neurons already done" in resumed.stderr
    after = server.requests[start + len(before):]
    return {"a": a, "b": b, "json": json.loads(done.stdout), "requests_a": requests_a,
            "requests_b": (before, after), "stdout_b": resumed.stdout}


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "neurons").glob("*.json")}


# ---------------------------------------------------------------------------------- aggregates


def dist(x) -> dict:
    x = np.asarray(x, float)
    return {"count": x.size, "mean": x.mean() if x.size else None, "std": x.std(ddof=1) if x.size > 1 else None,
            "median": np.median(x) if x.size else None}


def expected_aggregate(recs: list[dict]) -> dict:
    traced = [r for r in recs if "trace" in r]
    diff = [r["trace"]["differential_heads"] for r in traced]
    pairs = [(r, h) for r in traced for h in r["trace"]["differential_heads"]]
    distance = {}
    for r, h in pairs:
        gap = r["layer"] - int(h[1:].split("H")[0])
        distance[str(gap)] = distance.get(str(gap), 0) + 1
    pooled = {}
    for key in ("dp", "dpost"):
        act = [v for r, h in pairs for v, a in zip(r["ablation_samples"][h][key], r["ablation_samples"][h]["active"]) if a]
        ina = [v for r, h in pairs for v, a in zip(r["ablation_samples"][h][key], r["ablation_samples"][h]["active"])
               if not a]
        pooled[key] = (act, ina)
    ba = [r["explanations"][h]["balanced_accuracy"] for r, h in pairs
          if r["explanations"][h]["balanced_accuracy"] is not None]
    return {"neurons": len(recs), "with": sum(1 for d in diff if d), "per": dist([len(d) for d in diff]),
            "distance": distance, "pooled": pooled, "ba": ba, "ba_skipped": len(pairs) - len(ba)}


def close(a, b):
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-9 * max(1, abs(b)))


def check_aggregate(got: dict, recs: list[dict]) -> None:
    want = expected_aggregate(recs)
    assert got["neurons"] == want["neurons"]
    assert got["neurons_with_differential_heads"] == want["with"]
    for k in ("count", "mean", "std", "median"):
        assert close(got["differential_heads_per_neuron"][k], want["per"][k])
    assert got["layer_distance"] == want["distance"]
    for key, (act, ina) in want["pooled"].items():
        g = got["ablation"][key]
        for side, x in (("active", act), ("inactive", ina)):
            for k in ("count", "mean", "median"):
                assert close(g[side][k], dist(x)[k]), (key, side, k)
        if act and ina:
            ref = scipy.stats.ks_2samp(act, ina, method="asymp")
            assert abs(g["ks"]["statistic"] - ref.statistic) < 1e-12
            ne = len(act) * len(ina) / (len(act) + len(ina))  # the Stephens-corrected λ, series via scipy
            lam = (np.sqrt(ne) + 0.12 + 0.11 / np.sqrt(ne)) * ref.statistic
            assert abs(g["ks"]["p_value"] - min(1.0, scipy.special.kolmogorov(lam))) < 1e-9
    sc = got["scores"]["balanced_accuracy"]
    for k in ("count", "mean", "std", "median"):
        assert close(sc[k], dist(want["ba"])[k]), k
    assert sc["n_skipped"] == want["ba_skipped"]
    counts, _ = np.histogram(want["ba"], bins=10, range=(0, 1))
    assert [b["count"] for b in sc["histogram"]] == counts.tolist()


def test_aggregates_are_recomputed_from_the_neuron_records(studies):
    study = json.loads((studies["a"] / "study.json").read_text())
    assert study == studies["json"]  # --json printed the file
    recs = records(studies["a"])
    assert sorted(recs) == sorted(study["settings"]["neurons"]) and len(recs) == 20
    by_layer = {}
    for r in recs.values():
        by_layer.setdefault(str(r["layer"]), []).append(r)
    assert sorted(study["aggregates"]["layers"]) == ["2", "3", "4", "5"]
    for layer, group in by_layer.items():
        assert len(group) == 5
        check_aggregate(study["aggregates"]["layers"][layer], group)
    check_aggregate(study["aggregates"]["all"], list(recs.values()))
    assert study["aggregates"]["all"]["differential_heads"] > 0  # the test means something


def test_ablation_samples_are_the_drops_when_the_head_is_removed(studies):
    """Each differential head's per-prompt Δp and Δpost, recomputed here one prompt at a time with plain runs
    (the head's z replaced by its constant part, as --scores paper removes a head, or not), and their means
    against the trace's own ablation summary."""
    import minitf
    from minitf.attribution import head_value_constant

    model = minitf.load("tiny")
    n = 0
    for r in sorted(records(studies["a"]).values(), key=lambda r: r["neuron"]):
        for head in r.get("trace", {}).get("heads", []):
            if not head["differential"]:
                continue
            s = r["ablation_samples"][head["head"]]
            prompts = r["trace"]["prompts"]
            assert s["active"] == [head["head"] in p["active_heads"] for p in prompts]
            act = [v for v, a in zip(s["dp"], s["active"]) if a]
            assert abs(np.mean(act) - head["ablation"]["mean_dp_active"]) < 1e-6
            if n < 3:  # the first few heads, prompt by prompt
                token = r["trace"]["neuron"]["token"]["id"]
                for i, p in enumerate(prompts):
                    ids = [model.bos] + model.encode(p["text"])
                    assert len(ids) == len(p["tokens"])
                    got = []
                    assert r["trace"]["settings"]["scores"] == "paper"
                    removed = minitf.Intervention(head["head"], head_value_constant(model, head["layer"])[head["index"]])
                    for zero in ([], [removed]):
                        run_ = model.run([ids], logits="last", keep={("post", r["layer"])}, interventions=zero)
                        logits = run_.logits[0].astype(np.float64)
                        prob = np.exp(logits - logits.max())
                        got.append((run_["post", r["layer"]][0, -1, r["index"]], prob[token] / prob.sum()))
                    assert abs((got[0][1] - got[1][1]) - s["dp"][i]) < 1e-5 * max(1.0, got[0][1])
                    assert abs((got[0][0] - got[1][0]) - s["dpost"][i]) < 1e-4
            n += 1
    assert n >= 3


def test_a_neuron_record_equals_a_separate_trace(studies):
    recs = records(studies["a"])
    name = next(k for k, r in sorted(recs.items()) if r.get("trace", {}).get("differential_heads"))
    out = run([sys.executable, str(ROOT / "cli.py"), "trace", "--neuron", name, "--n-prompts", "6", "--ablate", "0",
               "--protocol", "minitf", "--json"])
    assert out.returncode == 0, out.stderr
    separate = json.loads(out.stdout)
    ours = recs[name]["trace"]
    for p in ours["prompts"]:
        assert len(p.pop("positions")) == len(p["tokens"])  # the site's per-token detail, not in trace --json
    assert ours == separate


def test_explanations_and_scores_are_the_llms(studies):
    recs = records(studies["a"])
    n = 0
    for r in recs.values():
        t = r.get("trace")
        for h in (t or {}).get("differential_heads", []):
            e = r["explanations"][h]
            if e["explanation"] is None:
                assert e["skipped"] and e["skip_reason"]
                continue
            prompts = t["prompts"]
            train = HeadExamples(r["neuron"], h, t["neuron"]["token"]["str"],
                                 [p["text"] for p in prompts if h in p["active_heads"]],
                                 [p["text"] for p in prompts if h not in p["active_heads"]])
            assert e["explanation"] == explanation_for(explain_messages(train)[-1]["content"])
            labels, answers = [i["label"] for i in e["items"]], [i["answer"] for i in e["items"]]
            answered = {y for y, a in zip(labels, answers) if a != "Maybe"}
            if answered != {0, 1}:  # all answered prompts one label: balanced accuracy undefined
                assert e["skipped"] and e["balanced_accuracy"] is None, e
                continue
            for k, v in expected_score(labels, answers).items():
                assert close(e[k], v), (r["neuron"], h, k)
            n += 1
    assert n > 0


def test_interrupted_and_resumed_equals_uninterrupted_and_repeats_no_request(studies):
    a = json.loads((studies["a"] / "study.json").read_text())
    b = json.loads((studies["b"] / "study.json").read_text())
    assert without_run(a) == without_run(b)
    assert a["run"]["started"] and b["run"]["seconds"] > 0
    before, after = studies["requests_b"]
    bodies = [json.dumps(r["body"], sort_keys=True) for r in before + after]
    assert before and len(set(bodies)) == len(bodies)  # no request sent twice
    assert sorted(bodies) == sorted(json.dumps(r["body"], sort_keys=True) for r in studies["requests_a"])
    assert studies["stdout_b"].splitlines()[-1].startswith("all ")


def test_a_changed_setting_is_refused_and_nothing_is_written(studies, server, tmp_path):
    out = studies["a"]
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    refused = run(study_cmd(out, server, tmp_path / "c", "--rule", "top3"))
    one_line_error(refused, "rule", "--restart")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp


@pytest.mark.parametrize("extra, fragment", [
    (["--layers", "9"], "--layers 9"),
    (["--per-layer", "0"], "--per-layer 0"),
    (["--exclude", "L2N99999"], "--exclude L2N99999"),
    (["--neurons", "BAD"], "line 2"),
])
def test_bad_input_is_one_line_and_writes_nothing(extra, fragment, tmp_path, server):
    (tmp_path / "list.txt").write_text("L3N872\nL3N\n")
    extra = [str(tmp_path / "list.txt") if x == "BAD" else x for x in extra]
    out = tmp_path / "out"
    one_line_error(run(study_cmd(out, server, tmp_path / "c", *extra)), fragment)
    assert not out.exists()


def test_an_unwritable_out_is_one_line(tmp_path, server):
    (tmp_path / "file").write_text("x")
    one_line_error(run(study_cmd(tmp_path / "file" / "out", server, tmp_path / "c")), "--out")


def test_without_an_llm_explanations_are_skipped_in_one_line(tmp_path):
    out = tmp_path / "s"
    done = run([sys.executable, str(ROOT / "cli.py"), "study", "--out", str(out), "--layers", "3", "--per-layer",
                "1", "--n-prompts", "4", "--ablate", "0", "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("explanations skipped: no --llm, no --base-url and OPENAI_API_KEY is not set") == 1
    study = json.loads((out / "study.json").read_text())
    assert study["explanations"].startswith("skipped") and study["aggregates"]["all"]["scores"] is None
    assert (out / "index.html").is_file() and (out / "neurons" / f"{study['neurons'][0]['neuron']}.html").is_file()


# ---------------------------------------------------------------------------------- the site


def test_the_site_in_headless_chromium(studies, tmp_path_factory):
    from test_report import CHROMIUM, READY, Browser

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found")
    folder = tmp_path_factory.mktemp("chromium")
    browser = Browser(folder / "profile")
    try:
        browser.attach()
        index = studies["a"] / "index.html"
        got = browser.open(index.as_uri(), "document.documentElement.getAttribute('data-ready') === '1'")
        assert got == {"requests": [index.as_uri()], "console": [], "exceptions": [], "log": [], "dialogs": []}
        hrefs = browser.eval("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        study = json.loads((studies["a"] / "study.json").read_text())
        traced = [e["neuron"] for e in study["neurons"] if "skipped" not in e]
        assert sorted(Path(h).stem for h in hrefs) == sorted(traced) and len(traced) >= 15
        for href in hrefs:
            assert href.startswith("file://") and Path(href[len("file://"):]).is_file(), href
        assert browser.eval("document.querySelectorAll('svg').length") >= 3  # distance, per-neuron, scores
        # sorting by the number of differential heads, descending
        browser.eval("document.querySelectorAll('#neurons th')[5].click()")
        column = browser.eval("Array.from(document.querySelectorAll('#neurons tbody tr'))"
                              ".map(r => parseFloat(r.cells[5].dataset.v))")
        assert column == sorted(column, reverse=True) and len(set(column)) > 1
        for href in hrefs[:3]:  # the neuron pages are the report's, under the same policy
            got = browser.open(href, READY)
            assert got == {"requests": [href], "console": [], "exceptions": [], "log": [], "dialogs": []}
    finally:
        browser.close()


def test_max_calls_caps_the_whole_study_and_a_rerun_finishes_it(server, tmp_path):
    out, cache = tmp_path / "s", tmp_path / "cache"
    cmd = [sys.executable, str(ROOT / "cli.py"), "study", "--out", str(out), "--layers", "4", "--per-layer", "3",
           "--n-prompts", "6", "--llm", "fake-model", "--base-url", server.url, "--cache-dir", str(cache),
           "--protocol", "minitf", "--no-progress"]
    start = len(server.requests)
    capped = run(cmd + ["--max-calls", "3"])
    assert capped.returncode == 0, capped.stderr
    first = server.requests[start:]
    assert len(first) == 3
    study = json.loads((out / "study.json").read_text())
    left = sum(len(e.get("pending", [])) for e in study["neurons"])
    assert left > 0 and not study["complete"]
    assert f"--max-calls 3 reached: {left} differential heads left unexplained" in capped.stderr
    finished = run(cmd)
    assert finished.returncode == 0, finished.stderr
    second = server.requests[start + len(first):]
    bodies = [json.dumps(r["body"], sort_keys=True) for r in first + second]
    assert len(set(bodies)) == len(bodies)  # the 3 answered requests came from the cache
    study = json.loads((out / "study.json").read_text())
    assert study["complete"] and study["explanations"] == "done"
    assert not any(e.get("pending") for e in study["neurons"])


def test_a_failing_llm_server_is_one_line_and_keeps_no_half_record(studies, server, tmp_path):
    recs = records(studies["a"])
    name = next(k for k, r in sorted(recs.items()) if r.get("trace", {}).get("differential_heads"))
    (tmp_path / "list.txt").write_text(f"{name}  # one neuron with differential heads\n")
    out = tmp_path / "s"
    server.script = [("status", 401)]
    try:
        failed = run(study_cmd(out, server, tmp_path / "cache", "--neurons", str(tmp_path / "list.txt")))
    finally:
        server.script = []
    one_line_error(failed, "HTTP 401")
    assert not (out / "study.json").exists() and not (out / "neurons" / f"{name}.json").exists()
    assert [p.name for p in (out / "neurons").iterdir()] == []  # no temporary file left either
