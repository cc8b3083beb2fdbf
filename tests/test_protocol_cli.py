"""The protocols through the CLI on the embedded model (``weights/tiny``): ``trace --protocol neo2024`` traces the
authors' prompt strings and uses their band; ``--protocol minitf`` is minitf's mining and selection as before
protocols existed; a flag overrides one choice and the record says so; ``neurons`` walks the authors' way.
A 200-document corpus keeps it quick (no index: the trace scans it, as the references do)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from minitf import Model, Neuron
from minitf.corpus import documents, read_documents
from minitf.heads import differential, differential_heads
from minitf.prompts import Prompt, authors_prompts, mine_prompts
from minitf.protocol import NEO2024
from minitf.selection import find_random_neurons
from minitf.trace import Trace, TraceOptions, trace

TINY = Path(__file__).resolve().parent.parent / "weights" / "tiny"
NEURON = Neuron(3, 124)


@pytest.fixture(scope="module")
def model():
    return Model.load(TINY)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    docs = [d for d, _ in zip(read_documents(TINY / "corpus.txt.gz"), range(200))]
    path.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in docs))
    return path


def cli(*args) -> str:
    r = CliRunner().invoke(main, [*args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def trace_json(corpus, *flags) -> dict:
    return json.loads(cli("trace", "--model", str(TINY), "--neuron", str(NEURON), "--corpus", str(corpus),
                          "--split", "all", "--ablate", "0", "--no-progress", "--json", *flags))


def test_neo2024_traces_the_authors_prompt_strings_with_their_band(model, corpus):
    got = trace_json(corpus)  # the default protocol
    want = authors_prompts(model, [NEURON], documents(corpus), NEO2024)[NEURON].prompts
    assert [p["text"] for p in got["prompts"]] == [p.text for p in want]
    assert [p["mined"]["doc_id"] for p in got["prompts"]] == [p.doc_id for p in want]
    assert all("\n" not in p["text"] for p in got["prompts"]) and len(want) <= 20
    s = got["settings"]
    assert s["protocol"]["name"] == "neo2024" and s["protocol"]["overridden"] == [] and s["rule"] == "sigma2"
    assert s["protocol"]["choices"]["band"] == "25-75" and any("trimming" in n for n in s["notes"])
    # the band over the unique prompts, recomputed from the per-prompt active lists (the authors' Counter)
    lists = [p["active_heads"] for p in got["prompts"]]
    assert sorted(got["differential_heads"]) == sorted(differential_heads(lists, "25-75"))


def test_minitf_protocol_is_the_trace_before_protocols(model, corpus):
    got = trace_json(corpus, "--protocol", "minitf")
    assert got["settings"].pop("protocol")["name"] == "minitf"
    mined = mine_prompts(model, NEURON, corpus, None, k=20, progress=False)  # minitf's mining, as it was
    before = trace(model, NEURON, [Prompt.from_mined(m) for m in mined], TraceOptions(rule="sigma2", ablate=0))
    before = before.to_json()
    before["settings"].pop("protocol")
    assert [p["text"] for p in got["prompts"]] == [p["text"] for p in before["prompts"]]
    assert {k: v for k, v in got["settings"].items() if k not in ("source", "corpus", "split", "bos", "notes")} == \
        {k: v for k, v in before["settings"].items() if k not in ("source", "corpus", "split", "bos", "notes")}
    assert got["prompts"] == before["prompts"] and got["heads"] == before["heads"]
    # today's band: 25 %–75 % of the prompts (heads.differential)
    active = [[h in p["active_heads"] for h in (x["head"] for x in got["heads"])] for p in got["prompts"]]
    mask = differential(np.array(active))
    assert got["differential_heads"] == [h["head"] for h, m in zip(got["heads"], mask) if m]


def test_a_flag_overrides_one_choice_and_the_record_says_so():
    args = ("trace", "--model", str(TINY), "--neuron", str(NEURON), "--text", "the king and the queen", "--text",
            "a cat sat on the mat", "--ablate", "0")
    got = json.loads(cli(*args, "--rule", "top3", "--json"))
    p = got["settings"]["protocol"]
    assert got["settings"]["rule"] == "top3" and p["name"] == "neo2024" and p["overridden"] == ["head_rule"]
    assert p["choices"]["head_rule"] == "top3" and all(len(x["active_heads"]) == 3 for x in got["prompts"])
    assert Trace.from_json(got).to_json() == got  # settings.protocol reads back (a study's records do)
    text = cli(*args, "--rule", "top3")
    assert "protocol neo2024:" in text and "head_rule top3 (overridden)" in text
    neo2023 = json.loads(cli(*args, "--protocol", "neo2023", "--json"))["settings"]
    assert neo2023["rule"] == "top3" and neo2023["protocol"]["overridden"] == []
    assert neo2023["protocol"]["choices"]["band"] == "over-25"


def test_neurons_walk_the_authors_way_or_minitfs(model):
    def listed(*flags):
        out = json.loads(cli("neurons", "--model", str(TINY), "--layer", "3", "--top", "3", "--json", *flags))
        return out, [r["index"] for r in out["layers"]["3"]]

    out, authors = listed("--protocol", "neo2024")
    assert authors == [124, 362, 569]  # the authors' list for tiny (tests/test_protocol.py)
    assert out["protocol"]["name"] == "neo2024" and out["exclude"].startswith("no reject list")
    assert listed("--protocol", "minitf")[1] == [880, 813, 124]  # the filtered argmax, as before
    out, drawn = listed("--random-neurons", "4", "--seed", "7")
    assert drawn == [x.neuron.index for x in find_random_neurons(model, [3], 4, seed=7).neurons] and out["random"]
    text = cli("neurons", "--model", str(TINY), "--layer", "3", "--top", "2")
    assert text.startswith("protocol neo2024: neuron_walk skip") and "no reject list" in text
