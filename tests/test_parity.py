"""Live parity with transformers' GPT2LMHeadModel on random models of random shapes, key styles and dtypes."""
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from reference import random_gpt2, reference_outputs, save  # noqa: E402

from minitf import Model  # noqa: E402

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def assert_parity(folder: Path, tokens: np.ndarray, n_layer: int) -> None:
    ref = reference_outputs(folder, tokens)
    run = Model.load(folder).run(tokens, keep={"resid_pre", "resid_post", "pattern"})
    scale = np.abs(ref["logits"]).max()
    assert run.logits.dtype == np.float32
    np.testing.assert_allclose(run.logits, ref["logits"], rtol=0, atol=1e-4 * scale)
    for layer in range(n_layer):  # transformers' hidden_states[l] is resid_pre of layer l
        hidden_scale = np.abs(ref["hidden"][layer]).max()
        np.testing.assert_allclose(run["resid_pre", layer], ref["hidden"][layer], rtol=0, atol=1e-4 * hidden_scale)
        np.testing.assert_allclose(run["pattern", layer], ref["attentions"][layer], rtol=0, atol=1e-5)
    # transformers' last hidden state is ln_f(resid_post of the last layer): compare it through plain float64 LN
    model = Model.load(folder)
    last = run["resid_post", n_layer - 1].astype(np.float64)  # [B, T, D]
    centred = last - last.mean(-1, keepdims=True)
    normed = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + model.cfg.eps)
    final = normed * model.w["ln_f.weight"] + model.w["ln_f.bias"]  # [B, T, D]
    np.testing.assert_allclose(final, ref["hidden"][n_layer], rtol=0, atol=1e-4 * np.abs(ref["hidden"][n_layer]).max())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_layer=st.integers(1, 3), n_head=st.integers(1, 4), d_head=st.integers(1, 16),
    d_vocab=st.integers(2, 64), n_ctx=st.integers(1, 24), d_mlp=st.sampled_from([None, 8, 24]),
    style=st.sampled_from(["prefixed", "hub"]), dtype=st.sampled_from(sorted(DTYPES)),
    tied=st.booleans(), batch=st.integers(1, 3), seed=st.integers(0, 2**16), data=st.data(),
)
def test_parity_random_models(n_layer, n_head, d_head, d_vocab, n_ctx, d_mlp, style, dtype, tied, batch, seed, data):
    model = random_gpt2(n_layer, n_head, d_head, d_vocab, n_ctx, d_mlp, seed=seed, tied=tied)
    T = data.draw(st.integers(1, n_ctx), label="T")
    tokens = np.random.default_rng(seed).integers(0, d_vocab, (batch, T))
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(model, Path(tmp), style, DTYPES[dtype])
        assert_parity(folder, tokens, n_layer)


@pytest.mark.slow
def test_parity_gpt2_small_shape(tmp_path):
    """A 124M-parameter model of GPT-2 small's shape in the Hub's file layout (unaligned data, attn.bias)."""
    model = random_gpt2(n_layer=12, n_head=12, d_head=64, d_vocab=50257, n_ctx=1024, seed=3, scale=0.5)
    folder = save(model, tmp_path, "hub", torch.float32)
    del model
    tokens = np.random.default_rng(0).integers(0, 50257, (2, 64))
    assert_parity(folder, tokens, 12)
