"""The forward pass: GELU, dtypes, padding, partial runs, interventions, and parts that sum to the whole."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf import INTERNALS, Intervention
from minitf.errors import MinitfError
from minitf.model import gelu_new, layer_norm
from numpy_models import random_model

model_args = st.fixed_dictionaries({
    "seed": st.integers(0, 10**6), "n_layer": st.integers(1, 3), "n_head": st.integers(1, 4),
    "d_head": st.integers(1, 8), "d_vocab": st.integers(2, 50), "n_ctx": st.integers(2, 20),
})


def test_gelu_new_is_the_tanh_formula_and_close_to_exact_gelu():
    x = np.linspace(-8, 8, 10001, dtype=np.float32)
    x64 = x.astype(np.float64)
    tanh_formula = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x64])  # x Φ(x)
    y = gelu_new(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, tanh_formula, rtol=1e-6, atol=1e-6)
    assert np.abs(y - exact).max() < 1e-3  # the tanh approximation's known error (≈ 4.7e-4 at |x| ≈ 2)
    assert np.abs(y - exact).max() > 1e-4  # … and it is not the erf GELU


def test_layer_norm_matches_float64():
    x = np.random.default_rng(0).standard_normal((3, 5, 32)).astype(np.float32) * 3 + 1
    g, b = np.float32(1.5) * np.ones(32, np.float32), np.full(32, 0.25, np.float32)
    y, sigma = layer_norm(x, g, b, 1e-5)
    x64 = x.astype(np.float64)
    s64 = np.sqrt(x64.var(-1) + 1e-5)
    np.testing.assert_allclose(sigma, s64, rtol=1e-6)
    np.testing.assert_allclose(y, (x64 - x64.mean(-1, keepdims=True)) / s64[..., None] * 1.5 + 0.25, rtol=1e-5, atol=1e-5)


def test_every_internal_is_float32_with_documented_shape():
    m = random_model(n_layer=2, n_head=3, d_head=4, d_vocab=30, n_ctx=10)
    B, T, H, Dh, D, M = 2, 7, 3, 4, 12, 48
    run = m.run(np.ones((B, T), int), keep=set(INTERNALS))
    shapes = {"resid_pre": (B, T, D), "ln1_scale": (B, T), "q": (B, T, H, Dh), "k": (B, T, H, Dh),
              "v": (B, T, H, Dh), "z": (B, T, H, Dh), "pattern": (B, H, T, T), "head_out": (B, T, H, D),
              "attn_out": (B, T, D), "resid_mid": (B, T, D), "ln2_scale": (B, T), "pre": (B, T, M),
              "post": (B, T, M), "mlp_out": (B, T, D), "resid_post": (B, T, D)}
    for layer in range(2):
        for name, shape in shapes.items():
            assert run[name, layer].dtype == np.float32 and run[name, layer].shape == shape, name
    assert run["ln_f_scale"].shape == (B, T) and run["ln_f_scale"].dtype == np.float32
    assert run.logits.dtype == np.float32 and run.logits.shape == (B, T, 30)
    with pytest.raises(KeyError, match="was not recorded"):
        m.run([1, 2])["pattern", 0]


@settings(max_examples=60, deadline=None)
@given(args=model_args, data=st.data())
def test_padded_batch_equals_each_prompt_alone(args, data):
    m = random_model(**args)
    lengths = data.draw(st.lists(st.integers(1, args["n_ctx"]), min_size=1, max_size=4))
    rng = np.random.default_rng(args["seed"])
    prompts = [rng.integers(0, args["d_vocab"], n).tolist() for n in lengths]
    batch = m.run(prompts, keep={"post", "pattern"})
    last = m.run(prompts, logits="last").logits
    for i, p in enumerate(prompts):
        alone = m.run(p, keep={"post", "pattern"})
        n = len(p)
        np.testing.assert_allclose(batch.logits[i, :n], alone.logits[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(last[i], alone.logits[0, -1], rtol=1e-5, atol=1e-5)
        for layer in range(args["n_layer"]):
            np.testing.assert_allclose(batch["post", layer][i, :n], alone["post", layer][0], rtol=1e-5, atol=1e-5)
            # float32 softmax sums over another number of (masked) keys: a few ulp of 1
            np.testing.assert_allclose(batch["pattern", layer][i, :, :n, :n], alone["pattern", layer][0], atol=4e-6)


@settings(max_examples=40, deadline=None)
@given(args=model_args, data=st.data())
def test_head_outputs_sum_to_attn_out_and_residual_adds_up(args, data):
    m = random_model(**args)
    T = data.draw(st.integers(1, args["n_ctx"]))
    run = m.run(np.random.default_rng(1).integers(0, args["d_vocab"], (2, T)), keep=set(INTERNALS))
    for layer in range(args["n_layer"]):
        b_O = m.w[f"h.{layer}.attn.c_proj.bias"]
        np.testing.assert_allclose(run["head_out", layer].sum(2) + b_O, run["attn_out", layer], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(run["resid_pre", layer] + run["attn_out", layer], run["resid_mid", layer], atol=1e-5)
        np.testing.assert_allclose(run["resid_mid", layer] + run["mlp_out", layer], run["resid_post", layer], atol=1e-5)
        np.testing.assert_allclose(run["post", layer], gelu_new(run["pre", layer]), atol=1e-6)
        np.testing.assert_allclose(run["pattern", layer].sum(-1), 1, atol=1e-5)
        assert np.all(np.triu(run["pattern", layer], 1) == 0)  # causal


@settings(max_examples=40, deadline=None)
@given(args=model_args, data=st.data())
def test_stop_at_layer_and_stop_neurons_match_the_full_run(args, data):
    m = random_model(**args)
    layer = data.draw(st.integers(0, args["n_layer"] - 1))
    cols = data.draw(st.lists(st.integers(0, m.cfg.d_mlp - 1), min_size=1, max_size=5, unique=True))
    tokens = np.random.default_rng(2).integers(0, args["d_vocab"], (2, args["n_ctx"]))
    full = m.run(tokens, keep={"pre", "post"})
    part = m.run(tokens, keep={"pre", "post"}, stop_at_layer=layer, stop_neurons=cols)
    assert part.logits is None and ("pre", layer + 1) not in part.cache
    np.testing.assert_allclose(part["pre", layer], full["pre", layer][..., cols], rtol=1e-5, atol=1e-5)
    spec = f"L{layer}N{cols[-1]}"
    np.testing.assert_allclose(part.neuron(spec)["post"], full.neuron(spec)["post"], rtol=1e-5, atol=1e-5)


def test_zeroing_a_head_removes_exactly_its_output():
    m = random_model(n_layer=2, n_head=3, d_head=4)
    tokens = np.arange(10)[None] % 40
    base = m.run(tokens, keep={"head_out", "attn_out", "z"})
    zeroed = m.run(tokens, keep={"attn_out", "z"}, interventions=[Intervention("L1H2")])
    np.testing.assert_allclose(zeroed["attn_out", 1], base["attn_out", 1] - base["head_out", 1][:, :, 2], atol=1e-5)
    assert np.all(zeroed["z", 1][:, :, 2] == 0) and np.array_equal(zeroed["z", 0], base["z", 0])
    some = m.run(tokens, keep={"z"}, interventions=[Intervention("L0H1", positions=[3, 5])])
    assert np.all(some["z", 0][0, [3, 5], 1] == 0) and np.array_equal(some["z", 0][0, 4], base["z", 0][0, 4])
    # replacing z by its own value changes nothing
    same = m.run(tokens, interventions=[Intervention("L1H0", value=base["z", 1][:, :, 0])])
    np.testing.assert_allclose(same.logits, base.logits, atol=1e-6)


def test_replacing_a_neuron_activation():
    m = random_model(n_layer=2)
    tokens = np.arange(8)[None]
    base = m.run(tokens, keep={"post", "mlp_out"})
    patched = m.run(tokens, keep={"post", "mlp_out"}, interventions=[Intervention("L0N5", value=2.0, positions=[7])])
    assert patched["post", 0][0, 7, 5] == 2.0
    delta = (2.0 - base["post", 0][0, 7, 5]) * m.W_out[0][5]
    np.testing.assert_allclose(patched["mlp_out", 0][0, 7] - base["mlp_out", 0][0, 7], delta, atol=1e-5)
    np.testing.assert_array_equal(patched["mlp_out", 0][0, :7], base["mlp_out", 0][0, :7])


def test_bad_prompts():
    m = random_model(n_ctx=8)
    with pytest.raises(MinitfError, match="longer than the model's context of 8"):
        m.run(list(range(9)))
    with pytest.raises(MinitfError, match="empty prompt"):
        m.run([[1, 2], []])
    with pytest.raises(MinitfError, match="token id out of range"):
        m.run([1, 40])
    with pytest.raises(MinitfError, match="the model has 2 layers"):
        m.run([1], interventions=[Intervention("L5H0")])


@settings(max_examples=40, deadline=None)
@given(args=model_args, data=st.data())
def test_start_layer_from_resid_pre_matches_the_full_run(args, data):
    m = random_model(**args)
    start = data.draw(st.integers(0, args["n_layer"] - 1))
    lengths = data.draw(st.lists(st.integers(1, args["n_ctx"]), min_size=1, max_size=3))
    rng = np.random.default_rng(args["seed"])
    prompts = [rng.integers(0, args["d_vocab"], n).tolist() for n in lengths]
    full = m.run(prompts, keep={"resid_pre", "post", "z"})
    part = m.run(prompts, keep={"post", "z"}, start_layer=start, resid_pre=full["resid_pre", start], logits="last")
    assert ("post", start - 1) not in part.cache
    for layer in range(start, args["n_layer"]):
        np.testing.assert_allclose(part["post", layer], full["post", layer], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(part["z", layer], full["z", layer], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(part.logits, full.logits[np.arange(len(prompts)), part.lengths - 1], rtol=1e-6, atol=1e-6)


def test_start_layer_needs_a_matching_resid_pre():
    m = random_model(n_layer=2)
    with pytest.raises(ValueError, match="start_layer 1 needs a resid_pre"):
        m.run([1, 2, 3], start_layer=1)
    with pytest.raises(ValueError, match="start_layer 1 needs a resid_pre"):
        m.run([1, 2, 3], start_layer=1, resid_pre=np.zeros((1, 2, m.cfg.d_model), np.float32))
