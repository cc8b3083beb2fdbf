"""Each fast kernel of ``minitf.kernels`` equals the plain NumPy formula it replaces, to float32 rounding
(random shapes; attention also on right-padded batches and with the pool at one thread)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minitf import kernels
from minitf.kernels import plain_attention, plain_gelu, plain_layer_norm


def arrays(draw, shape, scale=3.0):
    seed = draw(st.integers(0, 2**32 - 1))
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture(params=["pool", "one thread"])
def threading_mode(request, monkeypatch):
    if request.param == "one thread":
        monkeypatch.setattr(kernels, "threads", lambda: 1)
    return request.param


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_layer_norm_is_the_formula(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))) + (data.draw(st.integers(2, 300)),)
    x = arrays(data.draw, shape) + data.draw(st.floats(-5, 5))
    g, b = arrays(data.draw, shape[-1:], 1.0), arrays(data.draw, shape[-1:], 1.0)
    y, sigma = kernels.layer_norm(x, g, b, 1e-5)
    y64, s64 = plain_layer_norm(x, g, b, 1e-5)
    assert y.dtype == sigma.dtype == np.float32 and y.shape == shape and sigma.shape == shape[:-1]
    np.testing.assert_allclose(sigma, s64, rtol=2e-6)
    # float32 rounding of x (of size max|x|) reaches y through 1/σ·γ: an offset row with a small spread loses
    # digits in x − mean in any float32 implementation, so the bound scales with max|x|/σ
    conditioning = (np.abs(x).max(-1) / s64).max() * np.abs(g).max()
    atol = 1e-5 * np.abs(y64).max() + 64 * float(np.finfo(np.float32).eps) * conditioning
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=atol)


def test_layer_norm_large_enough_to_use_threads(threading_mode):
    x = np.random.default_rng(0).standard_normal((3, 700, 100)).astype(np.float32)  # ≥ PARALLEL_MIN elements
    g, b = np.linspace(0.5, 2, 100, dtype=np.float32), np.linspace(-1, 1, 100, dtype=np.float32)
    y, sigma = kernels.layer_norm(x, g, b, 1e-5)
    y64, s64 = plain_layer_norm(x, g, b, 1e-5)
    np.testing.assert_allclose(sigma, s64, rtol=2e-6)
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_gelu_is_the_formula(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 300), min_size=1, max_size=3)))
    x = arrays(data.draw, shape)
    y = kernels.gelu_new(x)
    assert y.dtype == np.float32 and y.shape == shape
    np.testing.assert_allclose(y, plain_gelu(x), rtol=1e-6, atol=1e-6)


def test_gelu_over_several_chunks():
    x = np.random.default_rng(1).standard_normal((3, 50_001)).astype(np.float32) * 4  # chunks of 2^16, and a rest
    np.testing.assert_allclose(kernels.gelu_new(x), plain_gelu(x), rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_linear_is_x_W_plus_b(data):
    lead = tuple(data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    K, N = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    x, W, b = arrays(data.draw, lead + (K,)), arrays(data.draw, (K, N)), arrays(data.draw, (N,))
    ref = x.astype(np.float64) @ W + b
    np.testing.assert_allclose(kernels.linear(x, W, b), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(kernels.linear(x, W), x.astype(np.float64) @ W, rtol=1e-5,
                               atol=1e-5 * np.abs(ref - b).max())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_causal_attention_is_the_formula_on_padded_batches(data, threading_mode):
    B, H, Dh = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 16))
    lengths = data.draw(st.lists(st.integers(1, 70), min_size=B, max_size=B))
    T = max(lengths)
    qkv = arrays(data.draw, (B, T, 3, H, Dh), 2.0)  # as the model lays them out: views into one array
    for i, n in enumerate(lengths):
        qkv[i, n:] = 1e3  # padding: must not reach a real position
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    pattern = np.zeros((B, H, T, T), np.float32)
    z, z_no_pattern = kernels.causal_attention(q, k, v, pattern), kernels.causal_attention(q, k, v)
    assert z.dtype == np.float32 and z.shape == (B, T, H, Dh)
    np.testing.assert_array_equal(z, z_no_pattern)
    for i, n in enumerate(lengths):
        z64, p64 = plain_attention(q[i:i + 1, :n], k[i:i + 1, :n], v[i:i + 1, :n])  # each prompt alone
        np.testing.assert_allclose(z[i:i + 1, :n], z64, rtol=1e-5, atol=1e-5 * max(1, np.abs(z64).max()))
        np.testing.assert_allclose(pattern[i:i + 1, :, :n, :n], p64, atol=1e-6)


def test_causal_attention_long_prompt_goes_in_blocks(threading_mode):
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 600, 12, 64)).astype(np.float32) for _ in range(3))  # blocks < T rows
    z64, _ = plain_attention(q, k, v)
    np.testing.assert_allclose(kernels.causal_attention(q, k, v), z64, rtol=1e-5, atol=1e-5)
