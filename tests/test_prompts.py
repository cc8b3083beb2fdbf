"""Mining a neuron's top prompts and trimming them: binary search vs brute force, index vs scan."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf import Model, Neuron
from minitf.corpus import documents, split_of, tokenize_document
from minitf.errors import MinitfError
from minitf.index.build import build_index
from minitf.prompts import MinedPrompt, mine_prompts, neuron_activations, scan_top_documents, shortest_suffixes
from test_index import write_corpus, write_model


# ---- the search on its own --------------------------------------------------------------------------
def _run_search(fs, thresholds, cap):
    """fs[i][s - 1] = f(i, s); returns the search's answers and the queries it made."""
    asked = []

    def evaluate(queries):
        asked.extend(queries)
        return [fs[i][s - 1] for i, s in queries]

    return shortest_suffixes(evaluate, [len(f) for f in fs], thresholds, cap), asked


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n_items=st.integers(1, 6), cap=st.integers(1, 40))
def test_search_equals_brute_force_on_monotone_predicates(data, n_items, cap):
    fs, thresholds = [], []
    for _ in range(n_items):
        n = data.draw(st.integers(1, 50))
        first_ok = data.draw(st.integers(1, n))  # f(s) ≥ threshold exactly for s ≥ first_ok (and at s = n)
        vals = data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
        fs.append([1 + v if s >= first_ok else v - 1 for s, v in enumerate(vals, 1)])
        thresholds.append(0.5)
    found, asked = _run_search(fs, thresholds, cap)
    for i, f in enumerate(fs):
        shortest = next(s for s in range(1, len(f) + 1) if f[s - 1] >= thresholds[i])  # brute force
        if shortest > cap:
            assert found[i] is None
        else:
            s, value = found[i]
            assert s == shortest and (value is None or value == f[s - 1])
    assert all(1 <= s <= min(len(fs[i]), cap) for i, s in asked)


@settings(max_examples=300, deadline=None)
@given(fs=st.lists(st.lists(st.floats(-2, 2), min_size=1, max_size=40), min_size=1, max_size=5),
       cap=st.integers(1, 45))
def test_search_always_returns_a_suffix_that_meets_the_threshold(fs, cap):
    thresholds = [0.8 * f[-1] for f in fs]
    fs = [f[:-1] + [max(f[-1], t)] for f, t in zip(fs, thresholds)]  # the untrimmed prompt meets it by definition
    found, asked = _run_search(fs, thresholds, cap)
    for i, res in enumerate(found):
        if res is None:
            assert len(fs[i]) > cap and fs[i][cap - 1] < thresholds[i]
            continue
        s, value = res
        assert 1 <= s <= min(len(fs[i]), cap) and fs[i][s - 1] >= thresholds[i]
    assert len(asked) <= sum(1 + int(np.ceil(np.log2(len(f) + 1))) for f in fs)


# ---- mining on a model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prompts")
    model = Model.load(write_model(tmp / "tiny", seed=4, n_ctx=48))
    corpus = write_corpus(tmp / "corpus.txt", n_docs=80, seed=2)
    return tmp, model, corpus


def activations_alone(model, neuron, prompt):
    return model.run(prompt, logits=None, keep={"post"})["post", neuron.layer][0, :, neuron.index].astype(np.float64)


def check_prompt(model, neuron, corpus, mp: MinedPrompt, bos, max_tokens):
    b = int(bos)
    doc = next(d for d in documents(corpus) if d.doc_id == mp.doc_id)
    ids = tokenize_document(model, doc.text, bos)
    acts = activations_alone(model, neuron, ids)
    assert mp.position >= b and abs(acts[mp.position] - mp.activation) < 1e-5  # the document's peak …
    assert abs(acts[b:].max() - mp.activation) < 1e-5
    assert mp.tokens[-1] == ids[mp.position] and (mp.tokens[0] == model.bos) == bos
    s = len(mp.tokens) - b
    assert mp.tokens[b:] == ids[mp.position + 1 - s: mp.position + 1] and len(mp.tokens) < max_tokens
    f = lambda s: activations_alone(model, neuron, ids[:b] + ids[mp.position + 1 - s: mp.position + 1])[-1]  # noqa
    assert abs(f(s) - mp.trimmed_activation) < 1e-5
    threshold = 0.8 * mp.activation
    assert mp.trimmed_activation >= threshold - 1e-6
    values = [f(x) for x in range(1, mp.position + 2 - b)]
    meets = [v >= threshold for v in values]
    monotone = all(meets[i] <= meets[i + 1] for i in range(len(meets) - 1))
    if monotone:  # the binary search is exact
        assert s == meets.index(True) + 1
    return s, monotone


@pytest.mark.parametrize("bos", [True, False])
def test_mined_prompts_are_the_top_documents_trimmed(setup, bos):
    _, model, corpus = setup
    neuron = Neuron(1, 5)
    prompts = mine_prompts(model, neuron, corpus, split="train", k=6, bos=bos)
    assert prompts and len(prompts) <= 6
    shown = [p.trimmed_activation for p in prompts]  # listed by the activation each prompt shows
    assert shown == sorted(shown, reverse=True)
    # the top documents of the train split, by brute force
    first = int(bos)
    peaks = sorted(((activations_alone(model, neuron, ids)[first:].max(), d.doc_id)
                    for d in documents(corpus, "train")
                    for ids in [tokenize_document(model, d.text, bos)] if len(ids) > first), reverse=True)
    np.testing.assert_allclose(sorted((p.activation for p in prompts), reverse=True),
                               [a for a, _ in peaks[: len(prompts)]], atol=1e-5)
    trimmed = monotone = 0
    for p in prompts:
        assert split_of(next(d for d in documents(corpus) if d.doc_id == p.doc_id)) == "train"
        s, mono = check_prompt(model, neuron, corpus, p, bos, 100)
        trimmed += s < p.position + 1 - first
        monotone += mono
    assert trimmed and monotone  # some prompts get shorter; some are checked against the brute-force search


def test_long_prompts_are_dropped(setup):
    _, model, corpus = setup
    neuron = Neuron(0, 2)
    full = mine_prompts(model, neuron, corpus, k=8, max_tokens=100)
    short = mine_prompts(model, neuron, corpus, k=8, max_tokens=4)
    assert all(len(p.tokens) < 4 for p in short)
    kept = {p.doc_id for p in short}
    for p in full:  # under the monotone assumption: kept exactly when the full search needs < 4 tokens
        if p.doc_id in kept:
            continue
        ids = tokenize_document(model, next(d for d in documents(corpus) if d.doc_id == p.doc_id).text)
        if p.position + 1 - 1 > 2:  # the search tried the longest allowed suffix (2 tokens + BOS) and it missed
            last = activations_alone(model, neuron, ids[:1] + ids[p.position - 1: p.position + 1])[-1]
            assert last < 0.8 * p.activation
    for p in short:
        check_prompt(model, neuron, corpus, p, True, 4)


def test_index_and_scan_give_the_same_prompts(setup, tmp_path, capsys):
    tmp, model, _ = setup
    corpus = write_corpus(tmp_path / "c.txt", n_docs=50, seed=3)
    neuron = Neuron(1, 9)
    n_test = sum(1 for _ in documents(corpus, "test"))
    scanned = mine_prompts(model, neuron, corpus, split="test", k=5)
    # the scan shows the index's progress bar (off a terminal: its final line)
    assert capsys.readouterr().err.startswith(f"scan for L1N9: {n_test} / {n_test} documents (100%)")
    build_index(model, corpus, layers=[1], k=10, workers=1, progress=False)
    indexed = mine_prompts(model, neuron, corpus, split="test", k=5)
    assert capsys.readouterr().err == ""  # from the index: no scan
    assert [(p.doc_id, p.position, p.tokens) for p in indexed] == [(p.doc_id, p.position, p.tokens) for p in scanned]
    np.testing.assert_allclose([p.activation for p in indexed], [p.activation for p in scanned], atol=1e-5)
    # a stale index is refused (one line saying how to rebuild), as by every command
    with corpus.open("a") as f:
        f.write("\nGod said let there be light.\n")
    with pytest.raises(MinitfError, match="stale index: .*rebuild it with `minitf index"):
        mine_prompts(model, neuron, corpus, split="test", k=5)


def test_scan_top_documents_and_activations(setup):
    _, model, corpus = setup
    neuron = Neuron(0, 1)
    top = scan_top_documents(model, neuron, corpus, split=None, k=4)
    assert len(top) == 4 and [a for _, _, a, _ in top] == sorted((a for _, _, a, _ in top), reverse=True)
    for doc_id, p, a, ids in top:
        assert abs(activations_alone(model, neuron, ids)[p] - a) < 1e-5 and p >= 1
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    for got, prompt in zip(neuron_activations(model, neuron, prompts), prompts):
        np.testing.assert_allclose(got, activations_alone(model, neuron, prompt), atol=1e-5)


def test_bad_arguments(setup, capsys):
    _, model, corpus = setup
    with pytest.raises(MinitfError, match="out of range"):
        mine_prompts(model, "L5N0", corpus)
    with pytest.raises(MinitfError, match="`split` dev"):
        mine_prompts(model, "L0N0", corpus, split="dev")
    with pytest.raises(MinitfError, match="no such corpus file"):
        mine_prompts(model, "L0N0", corpus.with_name("absent.txt"))
    assert mine_prompts(model, "L0N0", corpus, k=1, progress=False)  # no index: a plain scan, no warning
    assert capsys.readouterr().err == ""


def test_identical_trimmed_prompts_are_kept_once(setup, tmp_path):
    """Every document twice: the copies trim to the same prompt, so only the first (lower doc_id) is kept and
    the next documents fill the k places. Expected: each document mined alone, then the first k distinct."""
    _, model, _ = setup
    docs = write_corpus(tmp_path / "once.txt", n_docs=30, seed=5).read_text().strip().split("\n\n")
    corpus = tmp_path / "twice.txt"
    corpus.write_text("\n\n".join(docs + docs) + "\n")
    neuron, k = Neuron(1, 3), 6
    got = mine_prompts(model, neuron, corpus, split=None, k=k)
    peaks = sorted((-activations_alone(model, neuron, tokenize_document(model, text))[1:].max(), i)
                   for i, text in enumerate(docs))
    expected, seen = [], set()
    for neg, i in peaks:
        if -neg <= 0 or len(expected) == k:
            break
        (tmp_path / "one.txt").write_text(docs[i] + "\n")
        alone = mine_prompts(model, neuron, tmp_path / "one.txt", split=None, k=1)
        if alone and tuple(alone[0].tokens) not in seen:
            seen.add(tuple(alone[0].tokens))
            expected.append((i, alone[0].tokens))
    assert len(expected) == k and len(peaks) > k
    assert sorted((p.doc_id, p.tokens) for p in got) == sorted(expected)  # the originals (ids < 30), not copies
    assert len({tuple(p.tokens) for p in got}) == k
    for p in got:
        check_prompt(model, neuron, corpus, p, True, 100)
    build_index(model, corpus, layers=[1], k=30, workers=1, progress=False)  # the index's spares do the same
    indexed = mine_prompts(model, neuron, corpus, split=None, k=k)
    assert sorted((p.doc_id, p.tokens) for p in indexed) == sorted(expected)


# ---- the authors' trimming: the early stop, and candidates from the index --------------------------------
@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 400), min_size=1, max_size=8), seed=st.integers(0, 2**31))
def test_the_authors_bisection_stops_only_items_whose_prompt_is_too_long(lengths, seed):
    """With ``longest`` the search stops an item once len − end ≥ longest (its start can only end ≤ end): such
    an item's full search also ends ≥ longest tokens long; every other item ends exactly as without it."""
    from minitf.prompts import authors_bisection

    rng = np.random.default_rng(seed)
    table = {}

    def evaluate(queries):  # any activation, the same on a second ask
        return [table.setdefault(q, float(rng.uniform(0, 1.2))) for q in queries]

    full = authors_bisection(evaluate, lengths, [1.0] * len(lengths))
    fast = authors_bisection(evaluate, lengths, [1.0] * len(lengths), longest=100)
    for a, b, n in zip(full, fast, lengths):
        if a is None or b == a:
            assert b == a
        else:
            assert np.isnan(b[1]) and n - b[0] >= 100 and n - a[0] >= 100


def test_authors_candidates_from_the_index_are_the_scans():
    """On the embedded model and its shipped index: the prompts ``authors_prompt_sets`` trims from the index's
    top documents (no peak pass) are the ones ``authors_prompts`` trims after its own peak pass over every
    document of the split; the peak activations agree to float rounding."""
    from pathlib import Path

    from minitf.index.build import load_index
    from minitf.prompts import authors_prompts
    from minitf.protocol import NEO2024
    from minitf.trace import authors_prompt_sets

    tiny = Path(__file__).resolve().parent.parent / "weights" / "tiny"
    model = Model.load(tiny)
    corpus = tiny / "corpus.txt.gz"
    index = load_index(model, corpus)
    neurons = [Neuron(3, 77), Neuron(4, 901)]
    got = authors_prompt_sets(model, neurons, corpus, "train", NEO2024, index)
    want = authors_prompts(model, neurons, documents(corpus, "train"), NEO2024)
    for n in neurons:
        prompts, origin = got[n]
        assert [(p.tokens, p.mined.doc_id, p.mined.position) for p in prompts] == \
            [(p.tokens, p.doc_id, p.token_pos) for p in want[n].prompts] and len(prompts) >= 10
        np.testing.assert_allclose([p.mined.activation for p in prompts], [p.activation for p in want[n].prompts],
                                   rtol=1e-5)
        assert f"{want[n].dropped_long} dropped" in origin.notes[0]
