"""GPT-NeoX (Pythia's architecture): minitf against transformers' GPTNeoXForCausalLM on random models of random
shapes, the direct-effect identity on them, TransformerLens 3.9's head scores, tokenizer.json and the loader."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minitf.attribution import NEEDED, direct_effects, head_sources
from minitf.errors import MinitfError
from minitf.kernels import gelu, gelu_reference
from minitf.model import Model
from minitf.names import Head, Neuron
from reference_neox import random_neox, reference_outputs, save_neox, transformer_lens_neox
from reference_paths import SHARED_GPT2, TOKENIZER_DIR

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@st.composite
def neox_shapes(draw):
    """A small random GPT-NeoX: parallel or sequential residual, rotary on a quarter, half or all of each head
    (all only for even head sizes: transformers cannot rotate an odd count), odd head sizes, each dtype, one
    file or shards."""
    pct = draw(st.sampled_from([0.25, 0.5, 1.0]))
    d_head = draw(st.integers(2, 9).filter(lambda d: pct < 1 or d % 2 == 0))
    return dict(n_layer=draw(st.integers(1, 3)), n_head=draw(st.integers(1, 3)), d_head=d_head,
                d_mlp=draw(st.integers(3, 24)), d_vocab=draw(st.integers(5, 40)), rotary_pct=pct,
                rotary_base=draw(st.sampled_from([10000.0, 100.0])), parallel=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16))), draw(st.sampled_from(sorted(DTYPES))), draw(st.booleans())


def assert_close(got, want, what, rel=2e-5):
    scale = max(float(np.abs(want).max()), 1e-3)
    err = float(np.abs(got - want).max())
    assert err <= rel * scale * 10, f"{what}: max |Δ| {err} at scale {scale}"


@settings(max_examples=110, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(shape=neox_shapes(), data=st.data())
def test_parity_with_transformers(tmp_path_factory, shape, data):
    """Logits, every hidden state and every attention pattern equal transformers' on the same saved weights;
    logits at each prompt's last position (the one-position path) too."""
    kw, dtype, sharded = shape
    n_ctx = 12
    hf = random_neox(n_ctx=n_ctx, **kw)
    folder = save_neox(hf, tmp_path_factory.mktemp("neox"), DTYPES[dtype], sharded)
    assert (folder / "model.safetensors.index.json").exists() == sharded
    B, T = data.draw(st.integers(1, 2)), data.draw(st.integers(1, n_ctx))
    tokens = np.random.default_rng(kw["seed"]).integers(0, kw["d_vocab"], (B, T))
    want = reference_outputs(hf, tokens)
    model = Model.load(folder)
    run = model.run(tokens, keep={"resid_pre", "resid_post", "pattern"})
    L = kw["n_layer"]
    assert_close(run.logits, want["logits"], "logits")
    for layer in range(L):
        assert_close(run["resid_pre", layer], want["hidden"][layer], f"hidden state {layer}")
        assert_close(run["pattern", layer], want["attentions"][layer], f"pattern {layer}")
    resid = run["resid_post", L - 1]  # transformers' last hidden state has the final LayerNorm applied
    assert_close(model.ln(resid, "ln_f")[0], want["hidden"][L], "final hidden state")
    assert_close(model.run(tokens, logits="last").logits, want["logits"][:, -1], "last-position logits")


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("d_head,pct", [(8, 0.25), (6, 1.0), (7, 0.5)])
def test_identity_and_context_split(tmp_path, parallel, d_head, pct):
    """Σ terms + constant = pre (≤ 1e-5 relative), context + constant = term, Σ sources = context; in the parallel
    form the neuron's own layer's heads and b_O contribute exactly 0 (they write nothing LN₂ reads)."""
    hf = random_neox(n_layer=3, n_head=3, d_head=d_head, d_vocab=40, rotary_pct=pct, parallel=parallel, seed=d_head)
    model = Model.load(save_neox(hf, tmp_path / "m"))
    prompts = [list(np.random.default_rng(i).integers(0, 40, n)) for i, n in enumerate((9, 4, 12))]
    for layer in range(3):
        run = model.run(prompts, keep=NEEDED, stop_at_layer=layer)
        for index in (0, 5, model.cfg.d_mlp - 1):
            fx = direct_effects(model, run, Neuron(layer, index))
            assert (np.abs(fx.total() - fx.pre) <= 1e-5 * fx.magnitude()).all()
            np.testing.assert_allclose(fx.head_context + fx.head_constant, fx.heads, rtol=1e-5,
                                       atol=1e-6 * np.abs(fx.heads).max())
            assert not fx.pos_embed.any()  # rotary: no position embedding
            if parallel:
                assert not fx.heads[:, layer].any() and not fx.attn_bias[:, layer].any()
            for k in range(layer + (0 if parallel else 1)):
                sources, constant = head_sources(model, run, Neuron(layer, index), Head(k, 1))
                np.testing.assert_allclose(sources.sum(1), fx.head_context[:, k, 1], rtol=1e-4,
                                           atol=1e-5 * np.abs(fx.heads).max())
                np.testing.assert_allclose(constant, fx.head_constant[:, k, 1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("parallel", [True, False])
def test_context_part_is_transformer_lens_head_score(tmp_path, parallel):
    """The paper's head scores from TransformerLens 3.9 (its GPT-NeoX conversion, from_pretrained's processing):
    stack_head_results() at the last token · folded W_in[:, n] = the context part × σ."""
    hf = random_neox(n_layer=3, n_head=3, d_head=8, d_vocab=60, parallel=parallel, seed=3)
    model = Model.load(save_neox(hf, tmp_path / "m"))
    tl = transformer_lens_neox(hf)
    tokens = np.random.default_rng(1).integers(0, 60, (3, 9))
    _, cache = tl.run_with_cache(torch.as_tensor(tokens))
    run = model.run(tokens, keep=NEEDED, stop_at_layer=2)
    for index in (0, 7, 30):
        fx = direct_effects(model, run, Neuron(2, index))
        with torch.no_grad():
            authors = (cache.stack_head_results(layer=2, pos_slice=-1) @ tl.W_in[2][:, index]).numpy().T  # [B, 2H]
        ours = (fx.head_context[:, :2] * fx.sigma[:, None, None]).reshape(3, -1)  # [B, 2H]
        np.testing.assert_allclose(ours, authors, rtol=1e-4, atol=1e-5 * np.abs(authors).max())


def test_parallel_include_same_layer_has_nothing_to_add(tmp_path):
    from minitf.prompts import Prompt
    from minitf.trace import NeuronCard, TraceOptions, trace

    hf = random_neox(n_layer=2, n_head=2, d_head=8, d_vocab=457, parallel=True, seed=5)
    folder = save_neox(hf, tmp_path / "m")
    for name in ("vocab.json", "merges.txt"):  # GPT-2's bytes + 200 merges + <|endoftext|>: 457 tokens
        shutil.copy(TOKENIZER_DIR / name, folder / name)
    model = Model.load(folder)
    prompts = [Prompt(list(np.random.default_rng(i).integers(0, 457, 6))) for i in range(4)]
    card = NeuronCard.from_json({"name": "L1N3", "layer": 1, "index": 3, "token": {"id": 3, "str": "x"}})
    a = trace(model, Neuron(1, 3), prompts, TraceOptions(include_same_layer=True), card=card).to_json()
    b = trace(model, Neuron(1, 3), prompts, TraceOptions(), card=card).to_json()
    assert [h["head"] for h in a["heads"]] == [h["head"] for h in b["heads"]] and a["settings"]["candidates"] == 2
    assert any("nothing to add" in note for note in a["settings"]["notes"])
    assert a["identity_check"]["max_rel_error"] <= 1e-5


def test_exact_gelu():
    x = np.concatenate([np.linspace(-12, 12, 40001), np.random.default_rng(0).normal(0, 4, 5000)]).astype(np.float32)
    want = gelu_reference(x).astype(np.float64)
    err = np.abs(gelu(x) - want)
    assert (err <= 4e-7 * np.maximum(np.abs(x), 1) + 2e-6 * np.abs(want)).all()
    np.testing.assert_allclose(gelu(x), torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(gelu(x[:45000].reshape(5, -1)), gelu(x[:45000]).reshape(5, -1))


# ---- tokenizer.json ------------------------------------------------------------------------------------
TEXTS = ["Hello world", "It's 2024; don't panic!  Twice  spaced\n\n\tand tabbed   ",
         "café cafe\u0301 Å Å ﬁ ① Ⅻ",  # NFC composes e + U+0301 and A + U+030A; NFKC-only letters stay
         "x<|endoftext|>y<|padding|>z", "日本語のテキスト 🙂 emoji, Ελληνικά, русский", "    indented\n        code()", ""]


GPT2_FILES = SHARED_GPT2 if (SHARED_GPT2 / "vocab.json").exists() else TOKENIZER_DIR  # the latter: 200 merges


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """tokenizer.json made from GPT-2's vocab.json + merges.txt with the tokenizers library, as Pythia's is built:
    an NFC normalizer, byte-level pre-tokenizer, <|endoftext|> and <|padding|> special, space runs added."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    folder = tmp_path_factory.mktemp("tok")
    source = GPT2_FILES
    tok = Tokenizer(BPE.from_file(str(source / "vocab.json"), str(source / "merges.txt")))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True), AddedToken("<|padding|>", special=True)])
    tok.add_tokens([AddedToken(" " * n, normalized=True) for n in (2, 4, 8)])
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_tokenizer_json_matches_transformers(tokenizer_folder):
    from transformers import PreTrainedTokenizerFast

    from minitf.load.tokenizer import load_tokenizer

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_folder / "tokenizer.json"))
    ours = load_tokenizer(tokenizer_folder)
    for text in TEXTS:
        assert ours.encode(text, allowed_special="all") == hf.encode(text, add_special_tokens=False), text
    assert ours.eot_token == hf.convert_tokens_to_ids("<|endoftext|>") and ours.decode(ours.encode(TEXTS[1], allowed_special="all")) == TEXTS[1]


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.sampled_from("ab e\u0301\u030aA\u00e9 \n\t'sxyz12🙂é<|>endoftext"), max_size=30))
def test_tokenizer_json_random_texts(tokenizer_folder, text):
    from transformers import PreTrainedTokenizerFast

    from minitf.load.tokenizer import load_tokenizer

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_folder / "tokenizer.json"))
    assert load_tokenizer(tokenizer_folder).encode(text, allowed_special="all") == hf.encode(text, add_special_tokens=False)


def test_tokenizer_json_errors(tmp_path, tokenizer_folder):
    from minitf.load.tokenizer import load_tokenizer

    raw = json.loads((tokenizer_folder / "tokenizer.json").read_text())
    for change, message in [(lambda r: r.update(normalizer={"type": "Lowercase"}), "normalizer"),
                            (lambda r: r["pre_tokenizer"].update(add_prefix_space=True), "byte-level BPE"),
                            (lambda r: r.update(added_tokens=[]), "no <|endoftext|>"),
                            (lambda r: r["model"]["merges"].reverse(), "larger id")]:
        bad = json.loads(json.dumps(raw))
        change(bad)
        (tmp_path / "tokenizer.json").write_text(json.dumps(bad))
        with pytest.raises(MinitfError, match=message):
            load_tokenizer(tmp_path)


# ---- loading ---------------------------------------------------------------------------------------------
def test_load_errors(tmp_path):
    hf = random_neox(n_layer=2, n_head=2, d_head=4, seed=1)
    folder = save_neox(hf, tmp_path / "m", sharded=True)
    cfg = json.loads((folder / "config.json").read_text())
    Model.load(folder)

    def with_config(**changes):
        (folder / "config.json").write_text(json.dumps({**cfg, **changes}))

    for changes, message in [({"hidden_act": "relu"}, "hidden_act 'relu'"),
                             ({"rope_parameters": {**cfg["rope_parameters"], "rope_type": "linear"}}, "rope_type"),
                             ({"num_hidden_layers": 1}, "not part of the model"),
                             ({"intermediate_size": 7}, "shape")]:
        with_config(**changes)
        with pytest.raises(MinitfError, match=message):
            Model.load(folder)
    with_config()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    other = next(f for f in index["weight_map"].values() if f != index["weight_map"][key])
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {**index["weight_map"], key: other}}))
    with pytest.raises(MinitfError, match="the index says"):
        Model.load(folder)


def test_hub_style_config_and_buffers(tmp_path):
    """The Hub's Pythia config.json (rotary_pct, rotary_emb_base, no rope_parameters) gives the same model."""
    hf = random_neox(n_layer=2, n_head=2, d_head=8, rotary_pct=0.5, rotary_base=500.0, seed=2)
    folder = save_neox(hf, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg |= {"rotary_pct": rope["partial_rotary_factor"], "rotary_emb_base": rope["rope_theta"]}
    (folder / "config.json").write_text(json.dumps(cfg))
    model = Model.load(folder)
    assert (model.cfg.rotary_dims, model.cfg.rotary_base, model.cfg.parallel_residual) == (4, 500.0, True)
    tokens = np.arange(10)[None] % 50
    assert_close(model.run(tokens).logits, reference_outputs(hf, tokens)["logits"], "logits")


# ---- download pythia-… -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sharded", [False, True])
def test_download_pythia(tmp_path, monkeypatch, sharded):
    """``download pythia-160m`` fetches EleutherAI/pythia-160m's config.json, tokenizer.json and weights (or the
    index and each shard it names) from a hub on 127.0.0.1, each checked against the hub's sha256 or git sha1."""
    import test_hub

    from minitf.load import hub

    weights = {"model.safetensors": b"w" * 5000} if not sharded else {
        "model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                   "b": "model-00002-of-00002.safetensors"}}).encode(),
        "model-00001-of-00002.safetensors": b"1" * 3000, "model-00002-of-00002.safetensors": b"2" * 4000}
    files = {"config.json": b"{}", "tokenizer.json": b'{"model": {}}', **weights}
    monkeypatch.setattr(test_hub, "REPO", "EleutherAI/pythia-160m")
    monkeypatch.setattr(test_hub, "FILES", files)
    monkeypatch.setattr(test_hub, "LFS", {n for n in files if n.endswith(".safetensors")})
    fake = test_hub.FakeHub()
    try:
        out = hub.download("pythia-160m", tmp_path, endpoint=fake.url, progress=False)
        assert out == tmp_path / "pythia-160m"
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files
        fake.requests.clear()
        hub.download("EleutherAI/pythia-160m", tmp_path, endpoint=fake.url, progress=False)  # complete: no GETs
        assert not [r for r in fake.requests if r[0] == "GET"]
    finally:
        fake.close()
    assert hub.split_name("pythia-1.4b-deduped") == ("EleutherAI/pythia-1.4b-deduped", "pythia-1.4b-deduped")
    with pytest.raises(MinitfError, match="pythia-70m"):
        hub.split_name("pythia-12b")
