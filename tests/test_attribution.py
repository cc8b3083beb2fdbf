"""The direct-effect identity: every component's term + the constant = the pre-activation, exactly."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf import Head, Intervention, Neuron
from minitf.attribution import NEEDED, direct_effects, head_sources, read_direction
from minitf.model import layer_norm
from numpy_models import draw_case, model_args, random_model

model_args = model_args()
setup = draw_case


@settings(max_examples=120, deadline=None)
@given(args=model_args, data=st.data())
def test_terms_sum_to_pre_at_every_position(args, data):
    m, neuron, prompts = setup(args, data)
    run = m.run(prompts, keep=NEEDED, stop_at_layer=neuron.layer)
    for t in range(max(map(len, prompts))):
        pos = np.minimum(t, run.lengths - 1)
        fx = direct_effects(m, run, neuron, pos, split_mlp=True)
        np.testing.assert_allclose(fx.pre, run["pre", neuron.layer][np.arange(len(prompts)), pos, neuron.index])
        np.testing.assert_array_less(np.abs(fx.total() - fx.pre), 1e-5 * fx.magnitude() + 1e-30)
        scale = fx.magnitude().max()
        # the MLP split over neurons + b_out's term gives back each MLP's term
        for k in range(neuron.layer):
            w_tilde, _ = read_direction(m, neuron)
            b_out = (m.w[f"h.{k}.mlp.c_proj.bias"] @ w_tilde) / fx.sigma
            np.testing.assert_allclose(fx.mlp_neurons[:, k].sum(1) + b_out, fx.mlp[:, k], rtol=1e-4, atol=1e-4 * scale)
        assert fx.heads.dtype == np.float32 and fx.total().dtype == np.float32


@settings(max_examples=80, deadline=None)
@given(args=model_args, data=st.data())
def test_source_split_sums_to_the_head_term(args, data):
    m, neuron, prompts = setup(args, data)
    head = Head(data.draw(st.integers(0, neuron.layer)), data.draw(st.integers(0, args["n_head"] - 1)))
    run = m.run(prompts, keep=NEEDED, stop_at_layer=neuron.layer)
    fx = direct_effects(m, run, neuron)
    by_source, bias_share = head_sources(m, run, neuron, head)
    scale = np.abs(by_source).sum(1).max() + np.abs(bias_share).max()
    np.testing.assert_allclose(by_source.sum(1) + bias_share, fx.head(head), rtol=0, atol=1e-5 * scale)
    for b, n in enumerate(run.lengths):  # nothing comes from padding
        assert np.all(by_source[b, n:] == 0)


@settings(max_examples=80, deadline=None)
@given(args=model_args, data=st.data())
def test_same_layer_head_term_is_the_change_when_zeroed_with_sigma_frozen(args, data):
    """A head of the neuron's own layer reaches the MLP only directly: zeroing it (σ held) moves pre by its term."""
    m, neuron, prompts = setup(args, data)
    h = data.draw(st.integers(0, args["n_head"] - 1))
    layer = neuron.layer
    keep = NEEDED | {"resid_mid"}
    base = m.run(prompts, keep=keep, stop_at_layer=layer)
    zeroed = m.run(prompts, keep=keep, stop_at_layer=layer, interventions=[Intervention(f"L{layer}H{h}")])
    fx = direct_effects(m, base, neuron)
    rows, t = np.arange(len(prompts)), base.lengths - 1
    x = zeroed["resid_mid", layer][rows, t].astype(np.float64)  # [B, D]
    sigma = base["ln2_scale", layer][rows, t].astype(np.float64)  # frozen σ
    ln = (x - x.mean(-1, keepdims=True)) / sigma[:, None] * m.w[f"h.{layer}.ln_2.weight"] + m.w[f"h.{layer}.ln_2.bias"]
    pre_zeroed = ln @ m.W_in[layer][:, neuron.index] + m.w[f"h.{layer}.mlp.c_fc.bias"][neuron.index]
    scale = fx.magnitude().max()
    np.testing.assert_allclose(fx.pre - pre_zeroed, fx.heads[:, layer, h], rtol=0, atol=1e-5 * scale)


def test_sigma_matters():
    """With σ unfrozen (a real ablation re-normalises) the change differs: the identity is about frozen σ."""
    m = random_model(seed=3, n_layer=1, n_head=2, d_head=4)
    run = m.run([1, 2, 3, 4], keep=NEEDED | {"resid_mid"}, stop_at_layer=0)
    fx = direct_effects(m, run, Neuron(0, 7))
    zeroed = m.run([1, 2, 3, 4], keep=NEEDED, stop_at_layer=0, interventions=[Intervention("L0H1")])
    real_change = fx.pre[0] - zeroed["pre", 0][0, 3, 7]
    assert abs(real_change - fx.heads[0, 0, 1]) > 1e-4
    _, sigma = layer_norm(run["resid_mid", 0], m.w["h.0.ln_2.weight"], m.w["h.0.ln_2.bias"], 1e-5)
    np.testing.assert_allclose(sigma[0, 3], fx.sigma[0])
