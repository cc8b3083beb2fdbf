"""``trace --paths`` (minitf.paths wired into the trace) on weights/tiny: the direct path with σ frozen is the
head's own term (context part under --scores paper), the total is the ablation's own record, the text table
and the schema; --ablate-with mean runs."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minitf.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "trace.schema.json").read_text())
NEURON = "L3N27"  # two differential heads on its top 10 train prompts (L2H0, L1H0): a joint removal too
ARGS = ("trace", "--model", "tiny", "--neuron", NEURON, "--n-prompts", "10", "--no-progress", "--paths")


def cli(*args):
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module", params=["paper", "exact"])
def traced(request):
    return request.param, json.loads(cli(*ARGS, "--scores", request.param, "--json"))


def close(a, b, rel=1e-4, abs_=1e-6):
    return a is not None and b is not None and abs(a - b) <= abs_ + rel * abs(b)


def test_direct_frozen_is_the_heads_term_and_total_is_the_ablation(traced):
    scores, result = traced
    paths = result["paths"]
    diff = result["differential_heads"]
    assert len(diff) >= 2 and [h["head"] for h in paths["heads"]] == diff
    assert paths["removal"] == ("replaced" if scores == "paper" else "zero") and paths["ablate_with"] == "zero"
    selects = "mean_context" if scores == "paper" else "mean_effect"  # what the ablation removes (minitf.scores)
    for hp in paths["heads"]:
        head = next(h for h in result["heads"] if h["head"] == hp["head"])
        # Δ = clean − removed: removing the head's term takes exactly that term off the pre-activation
        assert close(hp["direct"]["frozen"]["mean_dpre"], head[selects]), (hp["direct"]["frozen"], head[selects])
        ab = head["ablation"]  # the trace's own ablation of the same head, removed the same way
        for key in ("mean_dpost", "mean_dp", "mean_dpost_active", "mean_dpost_inactive"):
            assert close(hp["total"][key], ab[key], abs_=1e-6 if key.startswith("mean_dpost") else 1e-8), key
        frac = hp["mediated_fraction"]["dpost"]
        assert frac is None or close(frac, hp["direct"]["recomputed"]["mean_dpost"] / hp["total"]["mean_dpost"])
    joint = paths["joint"]
    assert joint["heads"] == diff
    assert close(joint["sum_alone"]["mean_dpost"], sum(h["total"]["mean_dpost"] for h in paths["heads"]))


def test_paths_follow_the_schema_and_read_back(traced):
    jsonschema = pytest.importorskip("jsonschema")
    _, result = traced
    jsonschema.validate(result, SCHEMA)
    assert Trace.from_json(result).to_json() == result


def test_text_table_html_and_mean_ablation(tmp_path):
    text = cli(*ARGS)
    assert f"paths of {NEURON}: each differential head's effect by path" in text
    for row in ("direct, σ frozen", "direct, LN₂ recomputed", "via MLP 1", "via the heads of layer 3",
                "total (the ablation)", "mediated fraction direct / total: Δpost", "largest via MLP: MLP",
                "removed at once vs the sum of each alone"):
        assert row in text, row
    mean = json.loads(cli(*ARGS, "--ablate-with", "mean", "--json"))
    assert mean["paths"]["removal"] == "mean" and mean["paths"]["ablate_with"] == "mean"
    zero = json.loads(cli(*ARGS, "--json", "--html", str(tmp_path / "r.html")))
    assert mean["paths"]["heads"][0]["total"]["mean_dpost"] != zero["paths"]["heads"][0]["total"]["mean_dpost"]
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<section id=paths>" in page and "mediated Δpost" in page
    data = json.loads(re.search(r'<script type="application/json" id="minitf-data">(.*?)</script>', page, re.S)[1])
    assert data["paths"]["heads"][0]["head"] == zero["differential_heads"][0]
    assert close(data["paths"]["heads"][0]["mediated_fraction"]["dpost"],
                 zero["paths"]["heads"][0]["mediated_fraction"]["dpost"])


def test_study_paths_aggregates_the_mediated_fractions(tmp_path):
    (tmp_path / "neurons.txt").write_text(f"{NEURON}\nL3N15\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "study", "--out", str(tmp_path / "s"),
                          "--model", "tiny", "--neurons", str(tmp_path / "neurons.txt"), "--n-prompts", "10", "--no-progress", "--paths"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert "mediated fraction direct / total over" in out.stdout
    study = json.loads((tmp_path / "s" / "study.json").read_text())
    agg = study["aggregates"]["paths"]
    traces = [json.loads((tmp_path / "s" / "neurons" / f"{n}.json").read_text())["trace"] for n in (NEURON, "L3N15")]
    pairs = [(t, h) for t in traces for h in t["paths"]["heads"]]
    assert agg["pairs"] == len(pairs) == sum(len(t["differential_heads"]) for t in traces) >= 3
    for key in ("dpost", "dp"):  # recomputed from each pair's own means: Σ direct / Σ total = mean / mean
        fractions = [h["direct"]["recomputed"][f"mean_{key}"] / h["total"][f"mean_{key}"] for _, h in pairs]
        assert close(agg[key]["all"]["median"], float(np.median(fractions)))
        assert close(agg[key]["all"]["q1"], float(np.percentile(fractions, 25)))
        active = [h["mediated_fraction_active"][key] for _, h in pairs if h.get("mediated_fraction_active")]
        assert close(agg[key]["active"]["mean"], float(np.mean([a for a in active if a is not None])))
    without = json.loads(cli("trace", "--model", "tiny", "--neuron", NEURON, "--n-prompts", "10", "--no-progress",
                             "--ablate", "0", "--json"))
    assert "paths" not in without
