"""The paper's protocols: the table, the reject lists, the authors' neuron walk, trimming, bands, LLM prompts and
statistics — against constructed cases, literal golden strings, scipy, and the authors' procedure run on
TransformerLens (tests/authors_reference.py) on the embedded model."""
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from minitf import Model, Neuron
from minitf.errors import MinitfError
from minitf.explain.metrics import (Confusion, PairAblation, authors_answer, authors_score, paired_ks,
                                    paper_aggregates, plain_accuracy, skew, skewtest_greater)
from minitf.explain.prompts import authors_classify_prompt, authors_explanation_prompt, authors_messages
from minitf.heads import active_lists, differential_heads
from minitf.selection import authors_token_ok, find_random_neurons, next_token_neurons
from minitf.prompts import authors_bisection, authors_prompts
from minitf.protocol import CHOICES, MINITF, NEO2023, NEO2024, PROTOCOLS, get_protocol, reject_list
from numpy_models import random_model

TINY = Path(__file__).resolve().parent.parent / "weights" / "tiny"


# ---------------------------------------------------------------------------------------------- the table
def test_every_choice_has_a_value_in_each_protocol_and_minitf_says_why_it_differs():
    assert get_protocol().name == "neo2024"
    for c in CHOICES:
        for p in PROTOCOLS.values():
            assert c.values is None or getattr(p, c.name) in c.values
        if getattr(MINITF, c.name) != getattr(NEO2024, c.name):
            assert c.why_minitf, c.name
    assert set(NEO2023.differences(NEO2024)) == {"n_prompts", "head_rule", "band", "explain_prompt",
                                                "classify_prompt", "llm_model", "n_test", "scoring"}
    assert (NEO2024.n_prompts, NEO2023.n_prompts, MINITF.n_prompts) == (20, 30, 20)
    assert (NEO2024.n_test, NEO2023.n_test, MINITF.n_test) == (10, 20, 30)


def test_overrides_are_recorded_and_bad_values_refused():
    p = get_protocol("neo2024", head_rule="top3", n_prompts=20, band=None)
    assert p.head_rule == "top3" and p.overridden == ("head_rule",)  # 20 is neo2024's own value
    d = p.describe()
    assert d["name"] == "neo2024" and d["choices"]["head_rule"] == "top3" and d["overridden"] == ["head_rule"]
    with pytest.raises(MinitfError, match="head_rule"):
        NEO2024.with_overrides(head_rule="top5")
    with pytest.raises(MinitfError, match="unknown protocol choice"):
        NEO2024.with_overrides(rules="top3")
    with pytest.raises(MinitfError, match="--protocol"):
        get_protocol("neo2022")


def test_reject_lists_match_by_name_then_shape_and_tiny_has_none():
    tiny = Model.load(TINY)
    m = reject_list(tiny)
    assert m.reject is None and m.how == "none" and "no reject list" in m.note
    assert reject_list(tiny, "none").how == "none"

    class Fake:
        def __init__(self, folder, shape):
            from minitf.load.weights import Config
            self.folder = folder
            self.cfg = Config(n_layer=shape[0], d_model=shape[1], n_head=shape[2], d_vocab=shape[3], n_ctx=1024,
                              d_mlp=4 * shape[1], eps=1e-5)

    hub = Path("/x/hub/models--openai-community--gpt2-medium/snapshots/abc")
    assert reject_list(Fake(hub, (24, 1024, 16, 50257))).reject.model == "gpt2-medium"
    small = reject_list(Fake(Path("/w/gpt2"), (12, 768, 12, 50257)))
    assert small.how == "name" and (9, 2322) in small.reject and (11, 3033) in small.reject
    assert small.neurons == {(9, 2322), (9, 2894), (11, 3033)}
    by_shape = reject_list(Fake(Path("/w/my-finetune"), (36, 1280, 20, 50257)))
    assert by_shape.how == "shape" and (16, 4244) in by_shape.reject and (35, 989) in by_shape.reject
    with pytest.raises(MinitfError):
        reject_list(tiny, "mine")


# ---------------------------------------------------------------------------------------------- neurons
def _constructed_model():
    """One layer, 4 neurons, d_model 8, the embedded tokenizer; the unembedding has three non-zero tokens,
    each along a zero-mean direction: a = " the" (passes the filter), b = " and" (passes), f = "the" (fails).
    W_out: n0 = 5 v_f + 3 v_a (best token "the", best allowed " the"), n1 = 4 v_b, n2 = 2 v_a, n3 = v_f."""
    model = random_model(seed=0, n_layer=1, n_head=2, d_head=4, d_vocab=8192, d_mlp=4)
    tiny = Model.load(TINY)
    a, b, f = (tiny.encode(s)[0] for s in (" the", " and", "the"))
    assert [len(tiny.encode(s)) for s in (" the", " and", "the")] == [1, 1, 1]
    v = np.zeros((3, 8), np.float32)
    v[0, 0], v[0, 1], v[1, 2], v[1, 3], v[2, 4], v[2, 5] = 1, -1, 1, -1, 1, -1  # v_a, v_b, v_f
    w = dict(model.w)
    w["wte.weight"] = np.zeros((8192, 8), np.float32)
    w["wte.weight"][[a, b, f]] = v
    w["ln_f.weight"] = np.ones(8, np.float32)
    w["h.0.mlp.c_proj.weight"] = np.stack([5 * v[2] + 3 * v[0], 4 * v[1], 2 * v[0], v[2]])
    return Model(model.cfg, w, TINY), (a, b, f)


def test_the_authors_walk_skips_a_neuron_whose_best_token_fails_where_the_filtered_argmax_keeps_it():
    model, (a, b, f) = _constructed_model()
    skip = next_token_neurons(model, [0], 2, "skip")
    assert [(x.neuron.index, x.token) for x in skip.neurons] == [(1, " and"), (2, " the")]
    filtered = next_token_neurons(model, [0], 2, "filtered-argmax")
    assert [(x.neuron.index, x.token) for x in filtered.neurons] == [(1, " and"), (0, " the")]
    np.testing.assert_allclose([x.congruence for x in skip.neurons], [8, 4], rtol=1e-3)
    rejected = next_token_neurons(model, [0], 2, "skip", reject={(0, 1)})
    assert [x.neuron.index for x in rejected.neurons] == [2]  # n0 and n3 fail the filter, n1 is rejected
    assert [(x.neuron.index, x.token) for x in rejected.rejected] == [(1, " and")]
    assert not authors_token_ok(" a") and not authors_token_ok("the") and authors_token_ok("   ")


def test_random_neurons_are_uniform_without_replacement_seeded_and_unfiltered():
    model, _ = _constructed_model()
    draws = find_random_neurons(model, [0], 4, seed=3)
    assert sorted(x.neuron.index for x in draws.neurons) == [0, 1, 2, 3]
    assert {x.neuron.index: x.token for x in draws.neurons}[0] == "the"  # no filter
    assert [x.neuron for x in find_random_neurons(model, [0], 2, seed=3).neurons] == \
        [x.neuron for x in find_random_neurons(model, [0], 2, seed=3).neurons]
    tiny = Model.load(TINY)
    seen = {find_random_neurons(tiny, [2], 1, seed=s).neurons[0].neuron.index for s in range(40)}
    assert len(seen) > 30  # 40 draws from 1024 neurons


# ---------------------------------------------------------------------------------------------- trimming
def test_the_authors_bisection_can_stop_below_the_threshold_and_records_the_last_test():
    """A = 10, 8 tokens. mid 3: 9 > 8 → start 3; mid 5: 5 → end 5; mid 4: 7 → end 4; mid 3 = start: stop.
    start_pos 3 (whose activation was 9), recorded activation 7 < 0.8·A."""
    f = {3: 9.0, 5: 5.0, 4: 7.0}
    g = {1: 9.0}  # 4 tokens: mid 1 passes → start 1, mid 2: fails (0) → end 2, mid 1 = start
    calls = []

    def evaluate(queries):
        calls.append(queries)
        return [(f if i == 0 else g).get(mid, 0.0) for i, mid in queries]

    out = authors_bisection(evaluate, [8, 4, 2, 1, 0], [10.0, 10.0, 3.0, 3.0, 3.0])
    assert out == [(3, 7.0), (1, 0.0), (0, 3.0), (0, 3.0), None]  # 2 and 1 tokens: untouched; 0: a BOS peak
    assert calls == [[(0, 3), (1, 1)], [(0, 5), (1, 2)], [(0, 4)]]  # lockstep: one evaluation per step
    strict = authors_bisection(lambda q: [8.0] * len(q), [8], [10.0])  # 8 is not > 0.8 · 10
    assert strict == [(0, 8.0)]


@lru_cache(maxsize=None)
def _tiny():
    from minitf.corpus import read_documents

    model = Model.load(TINY)
    docs = [d for d, _ in zip(read_documents(TINY / "corpus.txt.gz"), range(200))]
    return model, docs


def test_identical_documents_collapse_to_one_prompt_without_refill():
    model, docs = _tiny()
    text = docs[5].text
    dup = [(0, text), (1, "Nothing here."), (2, text), (3, text + "\nAnd more.")]
    n = Neuron(3, 124)
    got = authors_prompts(model, [n], dup, NEO2024)[n]
    assert got.candidates == 4 and got.duplicates >= 1
    texts = [p.text for p in got.prompts]
    assert len(texts) == len(set(texts)) and texts[0] == [p.text for p in got.prompts if p.doc_id in (0, 2)][0]
    assert [p.doc_id for p in got.prompts].count(2) == 0  # doc 2 repeats doc 0's prompt: collapsed into it
    for p in got.prompts:
        assert "\n" not in p.text and p.tokens == [model.bos] + model.encode(p.text)
        assert p.token_pos - p.start_pos < 100
    with pytest.raises(ValueError, match="mine_prompts"):
        authors_prompts(model, [n], dup, MINITF)


# ---------------------------------------------------------------------------------------------- heads
def test_bands_and_active_lists_in_the_authors_order():
    lists = [[3, 1], [1], [1, 2], [2], [2], [2], [1], [0]]  # n = 8: counts 3:1, 1:4, 2:5, 0:1
    assert differential_heads(lists, "25-75") == [1, 2]  # 2 ≤ count ≤ 6
    assert differential_heads(lists, "over-25") == [1, 2]
    assert differential_heads([[0, 1], [0], [0], [2]], "25-75") == [0, 1, 2]  # 3 = 0.75·4, 1 = 0.25·4
    assert differential_heads([[0, 1], [0], [0], [2]], "over-25") == [0]  # 1 is not > 1; no upper bound
    e = np.array([[0.0, 5.0, 1.0, 9.0, 2.0], [3.0, 0.0, 0.0, 0.0, 0.0]])
    assert active_lists(e, "top3") == [[3, 1, 4], [0, 1, 2]]
    assert active_lists(np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 10.0]]), "sigma2") == [[9]]


# ---------------------------------------------------------------------------------------------- LLM prompts
def test_explanation_prompts_are_the_authors_byte_for_byte():
    """Expected strings written from ExplanationPromptGen.get_prompt(shots=0), src/datahandlers.py (7c4627c and
    b98f23e): '*' with no space, the head sentence's trailing space running into 'Look at', no final newline."""
    got = authors_explanation_prompt("neo2024", " Israel", [" the state of", "\nIn"], [" visit"])
    assert got == (
        "We are studying attention heads in a transformer architecture neural network. Each attention head looks "
        "for some particular thing in a short document.\n"
        "This attention head in particular helps to predict that the next token is \" Israel\", but it is only "
        "active in some documents and not others. Look at the documents and explain what makes the attention head "
        "active, taking into consideration the inactive examples.\n"
        "Examples where the attention head is active: \"\"\"\n* the state of Israel\n*\nIn Israel\n\"\"\"\n"
        "Examples where the attention head is inactive: \"\"\"\n* visit Israel\n\"\"\"\n"
        "In two to three sentences, suggest when the attention head is active.")
    old = authors_explanation_prompt("neo2023", " Israel", [], [" visit"])
    assert old.endswith("Examples where the attention head is active: \"\"\"\n*\n\"\"\"\n"
                        "Examples where the attention head is inactive: \"\"\"\n* visit Israel\n\"\"\"\n"
                        "Explanation: This attention head is active when the document")
    assert authors_messages(got) == [{"role": "user", "content": got}]


def test_classification_prompts_are_the_authors_byte_for_byte():
    """ClassifyPromptGen.get_prompt(): neo2024 explanation first; neo2023 question first with its preamble."""
    assert authors_classify_prompt("neo2024", " the state of", " Israel", "It fires\non places.") == (
        "It fires on places.\nIs the given example an active example? (Yes/No)\n\nExample: \"\"\"\n"
        " the state of Israel\n\"\"\"\nAnswer: ")
    assert authors_classify_prompt("neo2023", " the state of", " Israel", " mentions a place") == (
        "Is the given example an active example? (Yes/No)\nThe example is active when the example  mentions a "
        "place\nExample: \"\"\"\n the state of Israel\n\"\"\"\nAnswer: ")


# ---------------------------------------------------------------------------------------------- scoring
def test_scoring_and_statistics():
    assert [authors_answer(s) for s in ("Yes", "No", " Yes", "yes", "No.")] == [1, 0, None, None, None]
    only_pos = Confusion(tp=3, fp=0, tn=0, fn=1)
    assert authors_score(only_pos, "drop-undefined") is None
    assert authors_score(only_pos, "rate-fallback") == 0.75
    assert authors_score(Confusion(tp=0, fp=1, tn=3, fn=0), "rate-fallback") == 0.75
    assert authors_score(Confusion(tp=2, fp=1, tn=3, fn=2), "drop-undefined") == pytest.approx((0.5 + 0.75) / 2)
    assert authors_score(Confusion(0, 0, 0, 0), "rate-fallback") is None
    assert plain_accuracy(Confusion(tp=2, fp=1, tn=3, fn=2)) == 5 / 8 and plain_accuracy(Confusion(0, 0, 0, 0)) is None

    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (8, 9, 20, 207):
        x = rng.beta(2, 5, n)
        assert skew(x) == pytest.approx(scipy_stats.skew(x), rel=1e-12)
        z, p = skewtest_greater(x)
        ref = scipy_stats.skewtest(x, alternative="greater")
        assert (z, p) == (pytest.approx(ref.statistic, rel=1e-10), pytest.approx(ref.pvalue, rel=1e-9))
    with pytest.raises(MinitfError):
        skewtest_greater(rng.random(7))
    x = [0.5, 0.9, 0.95, 0.7, 0.8, 0.6, 0.65, 0.85, None]
    agg = paper_aggregates(x)
    v = np.array(x[:-1], float)
    assert agg.count == 8 and agg.mean == pytest.approx(v.mean()) and agg.std == pytest.approx(v.std(ddof=0))
    assert agg.share_08 == 4 / 8 and agg.share_09 == 2 / 8
    assert agg.skewtest_p == pytest.approx(scipy_stats.skewtest(v, alternative="greater").pvalue)

    pairs = [PairAblation("L1N1", f"L0H{h}", a, b) for h, (a, b) in
             enumerate([(0.3, 0.01), (0.2, None), (0.25, 0.02), (0.1, 0.0), (None, 0.05), (0.4, -0.01)])]
    ks = paired_ks(pairs)
    a, b = [0.3, 0.2, 0.25, 0.1, 0.4], [0.01, 0.02, 0.0, 0.05, -0.01]
    assert (ks.n_active, ks.n_inactive) == (5, 5) and ks.d == scipy_stats.ks_2samp(a, b).statistic == 1.0
    assert ks.median_active == 0.25 and ks.mean_inactive == pytest.approx(np.mean(b))


# ---------------------------------------------------------------------------------------------- vs the authors
LAYERS, PER_LAYER = (3, 4, 5), 3


@lru_cache(maxsize=None)
def _reference():
    """The authors' procedure on TransformerLens: neuron lists, trimmed prompt strings, neo2024 and neo2023 head
    lists per prompt, on the first 200 documents of the embedded corpus."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformer_lens")
    import authors_reference as ref

    torch.set_num_threads(2)
    model, docs = _tiny()
    texts = [d.text for d in docs]
    tl = ref.load_model(TINY)
    found, _ = ref.find_neurons(tl, LAYERS, PER_LAYER)
    neurons = list(found)
    maxacts = ref.get_neuron_max_acts(tl, texts, neurons)
    trunc = ref.find_truncated_texts(tl, maxacts, texts)
    prompts = {n: ref.load_truncated_prompts(tl, trunc[n], texts) for n in neurons}
    kept = {n: [e for e in trunc[n] if e["token_pos"] - e["start_pos"] < 100] for n in neurons}  # prompts' sources
    live = {n: {p: e["og_act"] > 0 for p, e in reversed(list(zip(prompts[n], kept[n])))} for n in neurons}
    heads24 = {n: ref.head_attribution(tl, prompts[n], n, "sigma2", 20) for n in neurons}
    heads23 = {n: ref.head_attribution(tl, prompts[n], n, "top3") for n in neurons}
    return ref, found, live, heads24, heads23


def _compare(ref_heads, live, got, lists):
    """The prompt strings and their active lists, both in order, over the documents where the neuron fires
    (A > 0). Where it is off in the whole document, A is 0 at many positions, up to the sign of a rounding
    (GELU of a very negative pre-activation), and which of them is the peak is a tie that float rounding
    decides. Returns whether every prompt of both sides came from such a document (then bands compare)."""
    ref_live = [(p, heads) for p, heads in ref_heads.items() if live[p]]
    got_live = [(p.text, heads) for p, heads in zip(got, lists) if p.activation > 0]
    assert got_live == ref_live
    return len(ref_live) == len(ref_heads) and len(got_live) == len(got)


def _minitf_active_lists(model, neuron, prompts, rule):
    from minitf.attribution import NEEDED, direct_effects

    run = model.run([p.tokens for p in prompts], logits=None, keep=NEEDED, stop_at_layer=neuron.layer)
    scores = direct_effects(model, run, neuron).head_scores("paper")[:, :neuron.layer]  # [P, l, H]
    return active_lists(scores.reshape(len(prompts), -1), rule)


@lru_cache(maxsize=None)
def _minitf(protocol_name):
    model, docs = _tiny()
    sel = next_token_neurons(model, LAYERS, PER_LAYER, "skip")
    return sel, authors_prompts(model, [x.neuron for x in sel.neurons], docs, PROTOCOLS[protocol_name])


def test_neo2024_neurons_prompts_active_sets_differential_heads_and_explanations_are_the_authors():
    ref, found, live, heads24, _ = _reference()
    model, _ = _tiny()
    sel, mined = _minitf("neo2024")
    assert [((x.neuron.layer, x.neuron.index), x.token) for x in sel.neurons] == \
        [(n, v["token"]) for n, v in found.items()]
    np.testing.assert_allclose([x.congruence for x in sel.neurons], [v["congruence"] for v in found.values()],
                               rtol=1e-4)
    n_prompts = n_bands = n_explained = 0
    for x in sel.neurons:
        key, n = (x.neuron.layer, x.neuron.index), x.neuron
        got = mined[n].prompts  # unique strings of the first 20 kept, in order
        lists = _minitf_active_lists(model, n, got, "sigma2")
        if not _compare(heads24[key], live[key], got, lists):
            continue
        diff = differential_heads(lists, "25-75")
        assert diff == ref.differential_heads(heads24[key], "25-75"), n
        for h in diff:
            pos = [p.text for p, heads in zip(got, lists) if h in heads]
            neg = [p.text for p, heads in zip(got, lists) if h not in heads]
            assert authors_explanation_prompt("neo2024", x.token, pos, neg) == \
                ref.explanation_prompt(x.token, [p + x.token for p in pos], [p + x.token for p in neg])
            n_explained += 1
        n_prompts += len(got)
        n_bands += 1
    assert n_bands >= 7 and n_prompts >= 100 and n_explained >= 3


def test_neo2023_top3_rule_and_band_are_the_authors():
    ref, found, live, _, heads23 = _reference()
    model, _ = _tiny()
    sel, mined = _minitf("neo2023")
    n_bands = 0
    for x in sel.neurons:
        key, n = (x.neuron.layer, x.neuron.index), x.neuron
        got = mined[n].prompts  # all kept prompts (≤ 30), unique
        lists = _minitf_active_lists(model, n, got, "top3")
        if _compare(heads23[key], live[key], got, lists):
            assert differential_heads(lists, "over-25") == ref.differential_heads(heads23[key], "over-25"), n
            n_bands += 1
    assert n_bands >= 7


# ---------------------------------------------------------------------------------------------- a study's step 1
def test_a_studys_neurons_are_the_authors_walk_under_neo2024_and_the_neurons_command_under_minitf(monkeypatch):
    """``study``'s neuron list (``select_neurons``, what ``run_study`` takes) on the embedded model, layers 3–5,
    3 per layer: under neo2024 (the default) the authors' ``find_neurons`` on TransformerLens, with and without a
    reject list (tiny has none: a list made here for it, matched by the folder's name) and with ``--exclude``
    names added to it; under minitf the ``neurons --protocol minitf`` tables (also with --min-count)."""
    import json
    import subprocess
    import sys

    import minitf.protocol
    from minitf.protocol import RejectList
    from minitf.study.run import StudyOptions
    from minitf.study.select import select_neurons, study_selection

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformer_lens")
    import authors_reference as ref

    torch.set_num_threads(2)
    model = Model.load(TINY)
    tl = ref.load_model(TINY)
    found, _ = ref.find_neurons(tl, LAYERS, PER_LAYER)
    options = StudyOptions(layers=list(LAYERS), per_layer=PER_LAYER)
    assert options.protocol == "neo2024"
    got = study_selection(model, options)
    assert [(n.layer, n.index) for n in got.neurons] == list(found)
    assert (got.record.walk, got.record.reject_list, got.record.rejected) == ("skip", None, [])
    assert got.record.note == "no reject list: the authors made none for this model"

    first = list(found)[:2]  # the walk's first two neurons of layer 3, on a reject list and in --exclude
    on_list = RejectList("tiny (this test)", ("tiny",), (0, 0, 0, 0), (first[0], (5, 1)), "this test")
    monkeypatch.setattr(minitf.protocol, "REJECT_LISTS", (on_list,))
    want, rejected = ref.find_neurons(tl, LAYERS, PER_LAYER, rejected_neurons={first[0], first[1], (5, 1)})
    got = study_selection(model, StudyOptions(layers=list(LAYERS), per_layer=PER_LAYER,
                                              exclude=[str(Neuron(*first[1]))]))
    assert [(n.layer, n.index) for n in got.neurons] == list(want)
    assert (got.record.reject_list, got.record.reject_count, got.record.reject_how) == ("tiny (this test)", 2, "name")
    assert got.record.rejected == [str(Neuron(*first[0]))]  # the list's neuron met; the --exclude one is not listed
    assert {(a, b) for a, b, _ in rejected} == {first[0], first[1]}  # (5, 1) is not met before the quota is filled
    none = study_selection(model, StudyOptions(layers=list(LAYERS), per_layer=PER_LAYER, exclude_list="none"))
    assert [(n.layer, n.index) for n in none.neurons] == list(found) and none.record.reject_how == "none"

    for extra in ([], ["--min-count", "3"]):
        out = subprocess.run([sys.executable, str(TINY.parent.parent / "cli.py"), "neurons", "--model", str(TINY),
                              "--layers", "3-5", "--top", str(PER_LAYER), "--protocol", "minitf", "--json", *extra],
                             capture_output=True, text=True, cwd=TINY.parent.parent, check=True)
        tables = json.loads(out.stdout)["layers"]
        mine = select_neurons(model, StudyOptions(layers=list(LAYERS), per_layer=PER_LAYER, protocol="minitf",
                                                  min_count=int(extra[1]) if extra else 0))
        assert mine == [Neuron(layer, r["index"]) for layer in LAYERS for r in tables[str(layer)]]
    assert mine != [Neuron(*n) for n in found]  # the two walks differ here
    with pytest.raises(MinitfError, match="min_count"):
        select_neurons(model, StudyOptions(layers=list(LAYERS), per_layer=PER_LAYER, min_count=3))
