"""Next-token neurons: congruence against float64 NumPy and TransformerLens, moments against scipy, the filter."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf import Model, Neuron
from minitf.errors import MinitfError
from minitf.neurons import allowed_token, layer_scores, layer_table, neuron_card, neuron_class, token_counts
from numpy_models import random_model

GOLDEN = Path(__file__).resolve().parent / "golden"


def reference_scores(w: dict, layer: int, center_w_out: bool = True) -> np.ndarray:
    """s [M, V] in float64 from the raw checkpoint tensors: fold γ_f, centre W_U over d_model then vocabulary."""
    W_U = w.get("lm_head.weight", w["wte.weight"]).astype(np.float64).T  # [D, V]
    W_U = W_U * w["ln_f.weight"].astype(np.float64)[:, None]
    W_U = W_U - W_U.mean(axis=0, keepdims=True)
    W_U = W_U - W_U.mean(axis=1, keepdims=True)
    W_out = w[f"h.{layer}.mlp.c_proj.weight"].astype(np.float64)  # [M, D]
    if center_w_out:
        W_out = W_out - W_out.mean(axis=1, keepdims=True)
    return W_out @ W_U


def reference_cosines(w: dict, layer: int) -> np.ndarray:
    W_U = w.get("lm_head.weight", w["wte.weight"]).astype(np.float64).T * w["ln_f.weight"].astype(np.float64)[:, None]
    W_U = W_U - W_U.mean(axis=0, keepdims=True)
    W_U = W_U - W_U.mean(axis=1, keepdims=True)
    W_out = w[f"h.{layer}.mlp.c_proj.weight"].astype(np.float64)
    W_out = W_out - W_out.mean(axis=1, keepdims=True)
    return (W_out / np.linalg.norm(W_out, axis=1, keepdims=True)) @ (W_U / np.linalg.norm(W_U, axis=0, keepdims=True))


@pytest.mark.parametrize("name", ["hub_bf16", "prefixed_f32_untied", "prefixed_f16"])
def test_congruence_equals_float64_numpy_from_the_raw_checkpoint(name):
    model = Model.load(GOLDEN / name)
    allowed = np.array([allowed_token(model.token_str(t)) for t in range(model.cfg.d_vocab)])
    for layer in range(model.cfg.n_layer):
        s = reference_scores(model.w, layer)  # [M, V]
        got = layer_scores(model, layer)
        scale = np.abs(s).max()
        np.testing.assert_allclose(got.congruence_all, s.max(1), rtol=0, atol=1e-5 * scale)
        np.testing.assert_array_equal(got.token_all, s.argmax(1))
        masked = np.where(allowed, s, -np.inf)
        np.testing.assert_allclose(got.congruence, masked.max(1), rtol=0, atol=1e-5 * scale)
        np.testing.assert_array_equal(got.token, masked.argmax(1))
        # centring W_out over d_model (TransformerLens's center_writing_weights) changes nothing
        np.testing.assert_allclose(reference_scores(model.w, layer, center_w_out=False), s, rtol=0, atol=1e-12 * scale)


def test_centred_weights_give_the_same_numbers():
    """W_out centred over d_model, and W_U shifted by a vector r (W_U[d, t] + r_d: a logit shift shared by all
    tokens), give the same numbers."""
    model = random_model(seed=3, n_layer=2, n_head=2, d_head=8, d_vocab=60)
    rng = np.random.default_rng(0)
    w = dict(model.w)
    D = model.cfg.d_model
    w["h.1.mlp.c_proj.weight"] = w["h.1.mlp.c_proj.weight"] - w["h.1.mlp.c_proj.weight"].mean(1, keepdims=True)
    w["wte.weight"] = (w["wte.weight"] + rng.standard_normal((1, D))).astype(np.float32)  # [V, D] = W_Uᵀ
    shifted = Model(model.cfg, w)
    a, b = layer_scores(model, 1, filter=False), layer_scores(shifted, 1, filter=False)
    np.testing.assert_allclose(a.congruence_all, b.congruence_all, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a.token_all, b.token_all)
    np.testing.assert_allclose(a.kurtosis, b.kurtosis, rtol=1e-3)
    np.testing.assert_allclose(a.skew, b.skew, rtol=1e-3, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), shift=st.floats(-3, 3), n_layer=st.integers(1, 3), d_vocab=st.integers(2, 80))
def test_congruence_ignores_a_constant_added_to_a_neuron_output_row(seed, shift, n_layer, d_vocab):
    """W_U′ columns sum to 0 over d_model, so W_out[n] + c·𝟙 has the same scores (and cosines)."""
    model = random_model(seed=seed, n_layer=n_layer, d_vocab=d_vocab)
    layer = n_layer - 1
    w = dict(model.w)
    w[f"h.{layer}.mlp.c_proj.weight"] = (w[f"h.{layer}.mlp.c_proj.weight"] + np.float32(shift)).astype(np.float32)
    a, b = layer_scores(model, layer, filter=False), layer_scores(Model(model.cfg, w), layer, filter=False)
    scale = np.abs(reference_scores(model.w, layer)).max()
    np.testing.assert_allclose(a.congruence_all, b.congruence_all, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(a.kurtosis, b.kurtosis, rtol=1e-3, atol=1e-3)


def test_moments_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    model = Model.load(GOLDEN / "hub_bf16")
    for layer in range(model.cfg.n_layer):
        cos = reference_cosines(model.w, layer)  # [M, V]
        got = layer_scores(model, layer)
        np.testing.assert_allclose(got.kurtosis, stats.kurtosis(cos, axis=1, fisher=False), rtol=1e-4)
        np.testing.assert_allclose(got.skew, stats.skew(cos, axis=1), rtol=1e-3, atol=1e-4)


def test_classes_follow_gurnee_thresholds():
    assert neuron_class(12.0, 0.5) == "prediction"
    assert neuron_class(12.0, -0.5) == "suppression"
    assert neuron_class(9.9, 3.0) == ""
    assert neuron_class(10.0, 3.0) == ""  # kurtosis must exceed 10
    rng = np.random.default_rng(1)
    heavy_right = np.concatenate([rng.standard_normal(5000), [40.0, 45.0, 50.0]])[None]
    k, s = moments(heavy_right)
    assert neuron_class(k[0], s[0]) == "prediction"
    k, s = moments(-heavy_right)
    assert neuron_class(k[0], s[0]) == "suppression"


def moments(x):
    """(kurtosis E[(x−μ)⁴]/σ⁴, skew E[(x−μ)³]/σ³) of each row, in float64."""
    c = x - x.mean(1, keepdims=True)
    var = (c ** 2).mean(1)
    return (c ** 4).mean(1) / var ** 2, (c ** 3).mean(1) / var ** 1.5


def test_filter_semantics():
    assert allowed_token(" the") and allowed_token(" of") and allowed_token(" 123")
    assert not allowed_token("the") and not allowed_token(" a") and not allowed_token(",")
    assert not allowed_token(" ") and not allowed_token("") and not allowed_token("\nthe")
    assert not allowed_token("   ") and not allowed_token(" \n") and not allowed_token(" \t ")  # whitespace only
    assert allowed_token("  a") and allowed_token(" \u00e9t")
    # on a real (small) vocabulary: filtered congruence is the max over allowed tokens, never above the max
    model = Model.load(GOLDEN / "hub_bf16")
    strings = [model.token_str(t) for t in range(model.cfg.d_vocab)]
    assert 10 < sum(map(allowed_token, strings)) < len(strings) - 100
    sc = layer_scores(model, 1)
    assert all(allowed_token(strings[t]) for t in sc.token)
    assert (sc.congruence <= sc.congruence_all).all()
    same = np.array([allowed_token(strings[t]) for t in sc.token_all])
    np.testing.assert_array_equal(sc.congruence[same], sc.congruence_all[same])
    assert (~same).any()  # the filter matters for some neurons
    # without a tokenizer the filter cannot be applied, --no-filter can
    bare = random_model()
    with pytest.raises(MinitfError, match="needs the model's tokenizer"):
        layer_scores(bare, 0)
    assert layer_scores(bare, 0, filter=False).congruence_all.shape == (bare.cfg.d_mlp,)


def test_neuron_card_and_layer_table():
    model = Model.load(GOLDEN / "prefixed_f16")
    layer = 2
    s = reference_scores(model.w, layer)
    table = layer_table(model, layer, top=5, k=4)
    assert [r["rank"] for r in table] == [1, 2, 3, 4, 5]
    assert [r["congruence"] for r in table] == sorted((r["congruence"] for r in table), reverse=True)
    for card in table:
        n = card["index"]
        assert card["name"] == f"L{layer}N{n}" and card["layer"] == layer
        assert [t for t, _, _ in card["promoted"]] == list(np.argsort(-s[n], kind="stable")[:4])
        assert [t for t, _, _ in card["suppressed"]] == list(np.argsort(s[n], kind="stable")[:4])
        np.testing.assert_allclose([v for _, _, v in card["promoted"]], np.sort(s[n])[::-1][:4], atol=1e-5)
        assert card["promoted"][0][1] == model.token_str(card["promoted"][0][0])
        assert card["token"] == model.token_str(card["token_id"]) and allowed_token(card["token"])
        assert card["class"] == neuron_class(card["kurtosis"], card["skew"])
    card = neuron_card(model, "L2N7", k=3, filter=False)
    ranks = (s.max(1) > s[7].max()).sum() + 1
    assert card["rank"] == ranks and card["token_id"] == int(s[7].argmax())
    assert card["filter"] == "all tokens" and table[0]["filter"] == "space+2 chars"
    assert neuron_card(model, Neuron(2, 7))["index"] == 7
    with pytest.raises(MinitfError, match="out of range"):
        neuron_card(model, "L9N0")
    with pytest.raises(MinitfError, match="out of range"):
        neuron_card(model, "L0N9999")


def test_layer_scores_are_computed_once():
    model = Model.load(GOLDEN / "hub_bf16")
    assert layer_scores(model, 0) is layer_scores(model, 0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_congruence_equals_transformer_lens():
    """The authors' numbers: TransformerLens with fold_ln + center_writing_weights + center_unembed."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    tl = pytest.importorskip("transformer_lens")
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    from reference import TOKENIZER_DIR, random_gpt2, save

    for tied, seed in ((True, 5), (False, 6)):
        hf = random_gpt2(n_layer=2, n_head=2, d_head=8, d_vocab=457, n_ctx=16, seed=seed, tied=tied)
        with torch.no_grad():  # ln_f far from 1 so that folding it matters
            hf.transformer.ln_f.weight.copy_(torch.linspace(0.3, 2.0, 16))
            hf.transformer.ln_f.bias.copy_(torch.linspace(-1, 1, 16))
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            model = Model.load(save(hf, Path(tmp) / "m", tokenizer_dir=TOKENIZER_DIR))
            model.tokenizer  # read the tokenizer files before the folder goes away
        cfg = tl.HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=16, d_head=8, n_heads=2, d_mlp=64, d_vocab=457,
                                         act_fn="gelu_new", normalization_type="LN", eps=1e-5,
                                         original_architecture="GPT2LMHeadModel", device="cpu")
        ht = tl.HookedTransformer(cfg)
        ht.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=True, center_writing_weights=True,
                                       center_unembed=True)
        allowed = np.array([allowed_token(model.token_str(t)) for t in range(457)])
        for layer in range(2):
            with torch.no_grad():
                s = (ht.W_out[layer] @ ht.W_U).double().numpy()  # [M, V]
                W_out = ht.W_out[layer] / ht.W_out[layer].norm(dim=-1, keepdim=True)  # Gurnee et al.'s cosines
                W_U = ht.W_U / ht.W_U.norm(dim=0, keepdim=True)
                cos = (W_out @ W_U).double().numpy()
            got = layer_scores(model, layer)
            atol = 1e-5 * np.abs(s).max()
            np.testing.assert_allclose(got.congruence_all, s.max(1), rtol=0, atol=atol)
            np.testing.assert_array_equal(got.token_all, s.argmax(1))
            np.testing.assert_allclose(got.congruence, np.where(allowed, s, -np.inf).max(1), rtol=0, atol=atol)
            stats = pytest.importorskip("scipy.stats")
            np.testing.assert_allclose(got.kurtosis, stats.kurtosis(cos, axis=1, fisher=False), rtol=1e-3)
            np.testing.assert_allclose(got.skew, stats.skew(cos, axis=1), rtol=1e-2, atol=1e-3)


def test_big_layers_are_cached_on_disk(tmp_path, monkeypatch):
    import minitf.neurons as neurons_mod

    monkeypatch.setattr(neurons_mod, "DISK_CACHE_MIN_FLOPS", 0)
    monkeypatch.setenv("MINITF_CACHE_DIR", str(tmp_path))
    first = layer_scores(Model.load(GOLDEN / "hub_bf16"), 1)
    files = list((tmp_path / "neurons").glob("*-L1-v2.npz"))
    assert len(files) == 1
    again = layer_scores(Model.load(GOLDEN / "hub_bf16"), 1)  # a new model object: read back from disk
    np.testing.assert_array_equal(again.congruence, first.congruence)
    np.testing.assert_array_equal(again.kurtosis, first.kurtosis)
    with np.load(files[0]) as data:  # it really is the file that answers
        arrays = {name: data[name] for name in data.files}
    arrays["congruence"] = arrays["congruence"] + 1
    np.savez(files[0], **arrays)
    np.testing.assert_array_equal(layer_scores(Model.load(GOLDEN / "hub_bf16"), 1).congruence, first.congruence + 1)
    files[0].write_bytes(b"garbage")  # a damaged file is recomputed
    np.testing.assert_array_equal(layer_scores(Model.load(GOLDEN / "hub_bf16"), 1).congruence, first.congruence)


def test_a_vocabulary_padded_beyond_the_tokenizer():
    """Ids the tokenizer lacks (a padded vocabulary) are never allowed and show as "#id"."""
    from minitf.load.tokenizer import load_tokenizer
    from reference_paths import TOKENIZER_DIR

    model = random_model(seed=2, d_vocab=600, n_head=2, d_head=8)
    model._tokenizer = load_tokenizer(TOKENIZER_DIR)  # 457 tokens
    sc = layer_scores(model, 1)
    assert (sc.token < 457).all()
    s = reference_scores(model.w, 1)
    n = int(np.argmax(s.max(1)))
    card = neuron_card(model, Neuron(1, n), k=600)
    assert {t: name for t, name, _ in card["promoted"]}[599] == "#599"


# ---- the count filter -------------------------------------------------------------------------------
COUNT_CORPUS = "the cat sat on the mat\n\nthe dog and the cat\n\n a house of the cat, the dog. the end"


def test_token_counts_are_the_corpus_tokens_counted(tmp_path):
    model = Model.load(GOLDEN / "hub_bf16")
    corpus = tmp_path / "c.txt"
    corpus.write_text(COUNT_CORPUS + "\n")
    counts = token_counts(model, corpus)
    expected = np.zeros(model.cfg.d_vocab, np.int64)
    for doc in COUNT_CORPUS.split("\n\n"):
        for t in model.encode(doc):
            expected[t] += 1
    np.testing.assert_array_equal(counts, expected)
    assert counts[model.encode(" the")[0]] == 5 and counts.sum() == sum(len(model.encode(d)) for d in
                                                                       COUNT_CORPUS.split("\n\n"))
    assert token_counts(model, corpus) is counts  # counted once
    corpus.write_text("the cat\n")  # a changed file is counted again
    assert token_counts(model, corpus).sum() == len(model.encode("the cat"))


@pytest.mark.parametrize("filter", [True, False])
@pytest.mark.parametrize("min_count", [1, 2, 3])
def test_count_filter_equals_brute_force(tmp_path, filter, min_count):
    model = Model.load(GOLDEN / "prefixed_f16")
    corpus = tmp_path / "c.txt"
    corpus.write_text(COUNT_CORPUS + "\n")
    counts = np.zeros(model.cfg.d_vocab, np.int64)  # independent count: tokens of each blank-line-separated text
    for doc in COUNT_CORPUS.split("\n\n"):
        np.add.at(counts, model.encode(doc), 1)
    allowed = counts >= min_count
    if filter:
        allowed &= np.array([allowed_token(model.token_str(t)) for t in range(model.cfg.d_vocab)])
    assert 1 <= allowed.sum() < 30
    for layer in range(model.cfg.n_layer):
        s = reference_scores(model.w, layer)  # [M, V]
        masked = np.where(allowed, s, -np.inf)
        got = layer_scores(model, layer, filter=filter, min_count=min_count, corpus=corpus)
        np.testing.assert_array_equal(got.token, masked.argmax(1))
        np.testing.assert_allclose(got.congruence, masked.max(1), rtol=0, atol=1e-5 * np.abs(s).max())
        np.testing.assert_array_equal(got.token_all, s.argmax(1))  # the unfiltered columns are untouched
    table = layer_table(model, 1, top=4, filter=filter, min_count=min_count, corpus=corpus, k=2)
    want = np.where(allowed, reference_scores(model.w, 1), -np.inf).max(1)
    assert [r["index"] for r in table] == list(np.argsort(-want, kind="stable")[:4])
    assert [r["rank"] for r in table] == [1, 2, 3, 4]
    for r in table:
        assert allowed[r["token_id"]] and r["token"] == model.token_str(r["token_id"])
        assert r["filter"] == ("space+2 chars, " if filter else "") + f"count≥{min_count} in c.txt"
    # the paper's filter alone is unchanged by having used the count filter
    plain = layer_scores(model, 1)
    assert plain.congruence.dtype == np.float32 and all(allowed_token(model.token_str(t)) for t in plain.token)


def test_count_filter_errors(tmp_path):
    model = Model.load(GOLDEN / "prefixed_f16")
    corpus = tmp_path / "c.txt"
    corpus.write_text(COUNT_CORPUS + "\n")
    with pytest.raises(MinitfError, match="min_count=-1"):
        layer_scores(model, 0, min_count=-1, corpus=corpus)
    with pytest.raises(MinitfError, match="no token passes the filter and occurs ≥ 1000 times in c.txt"):
        layer_scores(model, 0, min_count=1000, corpus=corpus)
    with pytest.raises(MinitfError, match="no such corpus file"):
        layer_scores(model, 0, min_count=2, corpus=tmp_path / "absent.txt")
    with pytest.raises(MinitfError, match="needs a corpus"):  # the golden folder ships no corpus.txt.gz
        layer_scores(model, 0, min_count=2)
    with pytest.raises(MinitfError, match="tokenizer"):
        token_counts(random_model(), corpus)


def test_token_counts_on_disk(tmp_path, monkeypatch):
    import minitf.neurons as neurons_mod

    monkeypatch.setattr(neurons_mod, "COUNTS_DISK_MIN_BYTES", 0)
    monkeypatch.setenv("MINITF_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text(COUNT_CORPUS + "\n")
    first = token_counts(Model.load(GOLDEN / "hub_bf16"), corpus)
    files = list((tmp_path / "cache" / "neurons").glob("counts-*.npy"))
    assert len(files) == 1
    np.save(files[0], first + 5)  # it is the file that answers a new model object
    np.testing.assert_array_equal(token_counts(Model.load(GOLDEN / "hub_bf16"), corpus), first + 5)
