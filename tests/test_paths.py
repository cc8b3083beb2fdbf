"""A head's effect on a neuron by path (``minitf.paths``), checked against identities and independent reruns:

* direct, σ frozen = the head's term of ``attribution.direct_effects`` (its context part when the constant is
  kept);
* total = a full rerun with the head removed (``Model.run`` with an ``Intervention`` from layer 0); joint = a
  full rerun with all of them removed; mean ablation's mean is recomputed here from a full run;
* direct and via each MLP and each later layer's heads = a float64 GPT-2 written out below with hooks on the
  inputs (what TransformerLens's ``hook_mlp_in`` / ``hook_attn_in`` subtraction does);
* the paths partition the first-order change: with h's output removed by a fraction ε, rest = total − direct −
  Σ via = O(ε²), so halving ε must (about) quarter it — a missing path would leave an O(ε) rest that halves.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf import Intervention, Model
from minitf.attribution import NEEDED, direct_effects, head_value_constant
from minitf.names import Head, Neuron
from minitf.paths import head_paths
from minitf.kernels import softmax
from numpy_models import random_model

model_args = st.fixed_dictionaries({
    "seed": st.integers(0, 10**6), "n_layer": st.integers(1, 4), "n_head": st.integers(1, 3),
    "d_head": st.integers(1, 6), "d_vocab": st.integers(2, 40), "n_ctx": st.integers(1, 10),
})


def draw_case(args, data, max_heads=3):
    """A random model, a neuron, heads of layers ≤ its layer, prompts of random lengths and a token."""
    m = random_model(**args)
    L, H = args["n_layer"], args["n_head"]
    neuron = Neuron(data.draw(st.integers(0, L - 1)), data.draw(st.integers(0, m.cfg.d_mlp - 1)))
    every = [Head(k, h) for k in range(neuron.layer + 1) for h in range(H)]
    heads = data.draw(st.lists(st.sampled_from(every), min_size=1, max_size=max_heads, unique=True))
    lengths = data.draw(st.lists(st.integers(1, args["n_ctx"]), min_size=1, max_size=3))
    rng = np.random.default_rng(args["seed"])
    prompts = [rng.integers(0, args["d_vocab"], n).tolist() for n in lengths]
    return m, neuron, heads, prompts, data.draw(st.integers(0, args["d_vocab"] - 1))


def trace_run(m: Model, prompts, neuron: Neuron):
    """The run the trace makes (stopped at the neuron's layer), which ``head_paths`` takes."""
    return m.run(prompts, keep=NEEDED | {"resid_pre"}, stop_at_layer=neuron.layer)


def full_rerun(m: Model, prompts, neuron: Neuron, token: int, interventions=()):
    """(pre [P], post [P], p(token) [P]) at each prompt's last position, every layer run from the tokens."""
    r = m.run(prompts, logits="last", keep={("pre", neuron.layer), ("post", neuron.layer)},
              interventions=interventions)
    rows, t = np.arange(len(prompts)), r.lengths - 1
    cell = r.neuron(neuron)
    return cell["pre"][rows, t], cell["post"][rows, t], softmax(r.logits)[:, token]


def close(got, want, scale=1.0, tol=1e-5):
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, scale))


@settings(max_examples=25, deadline=None)
@given(args=model_args, data=st.data())
def test_direct_frozen_is_the_heads_term_and_total_is_a_full_rerun(args, data):
    m, neuron, heads, prompts, token = draw_case(args, data)
    run = trace_run(m, prompts, neuron)
    fx = direct_effects(m, run, neuron)
    base = full_rerun(m, prompts, neuron, token)
    scale = float(np.abs(fx.heads).max() + np.abs(fx.pre).max())
    constants = {h: head_value_constant(m, h.layer)[h.head] for h in heads}
    for replace_with, term in ((None, fx.heads), (constants, fx.head_context)):
        paths = head_paths(m, run, neuron, token, heads, replace_with=replace_with)
        for hp in paths.heads:
            h = hp.head
            close(hp.direct_frozen.d_pre, term[:, h.layer, h.head], scale)
            value = 0.0 if replace_with is None else constants[h]
            removed = full_rerun(m, prompts, neuron, token, [Intervention(str(h), value)])
            for got, clean, gone in zip((hp.total.d_pre, hp.total.d_post, hp.total.d_p), base, removed):
                close(got, clean - gone, scale)
        if len(heads) > 1:
            gone = full_rerun(m, prompts, neuron, token, [Intervention(str(h), 0.0 if replace_with is None
                                                                       else constants[h]) for h in heads])
            joint = paths.joint.joint
            for got, clean, g in zip((joint.d_pre, joint.d_post, joint.d_p), base, gone):
                close(got, clean - g, scale)
            np.testing.assert_allclose(paths.joint.interaction.d_pre,
                                       joint.d_pre - sum(hp.total.d_pre for hp in paths.heads), atol=1e-6 * scale)
        else:
            assert paths.joint is None


@settings(max_examples=15, deadline=None)
@given(args=model_args, data=st.data())
def test_mean_ablation_replaces_z_by_its_mean_over_every_real_position(args, data):
    m, neuron, heads, prompts, token = draw_case(args, data, max_heads=2)
    run = trace_run(m, prompts, neuron)
    clean = m.run(prompts, keep={"z"}, logits=None)
    base = full_rerun(m, prompts, neuron, token)
    paths = head_paths(m, run, neuron, token, heads, ablate_with="mean")
    assert paths.removal == "mean"
    for hp in paths.heads:
        z = clean["z", hp.head.layer][:, :, hp.head.head]  # [B, T, Dh]
        mean = np.concatenate([z[b, :n] for b, n in enumerate(clean.lengths)]).astype(np.float64).mean(0)
        removed = full_rerun(m, prompts, neuron, token, [Intervention(str(hp.head), mean.astype(np.float32))])
        scale = float(np.abs(base[0]).max())
        for got, c, g in zip((hp.total.d_pre, hp.total.d_post, hp.total.d_p), base, removed):
            close(got, c - g, scale, tol=2e-5)
    # the constant part is the same everywhere: mean ablation of the context part is mean ablation of z
    constants = {h: head_value_constant(m, h.layer)[h.head] for h in heads}
    paper = head_paths(m, run, neuron, token, heads, replace_with=constants, ablate_with="mean")
    for a, b in zip(paths.heads, paper.heads):
        close(a.total.d_pre, b.total.d_pre, float(np.abs(base[0]).max()), tol=2e-5)


# ---- an independent float64 GPT-2 with hooks on the components' inputs ---------------------------------------
class Reference:
    """GPT-2 in float64, written out from the checkpoint's tensors (no minitf kernels), with δ subtracted from
    the input of chosen attentions (``attn_in``), MLPs (``mlp_in``) or of neuron n alone (``neuron_in``, the
    rest of MLP l keeping its clean activations)."""

    def __init__(self, m: Model):
        self.m, self.w = m, {k: v.astype(np.float64) for k, v in m.w.items()}
        self.H, self.Dh, self.eps = m.cfg.n_head, m.cfg.d_head, m.cfg.eps

    def ln(self, x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def z(self, l, x):
        B, T, D = x.shape
        qkv = self.ln(x, f"h.{l}.ln_1") @ self.w[f"h.{l}.attn.c_attn.weight"] + self.w[f"h.{l}.attn.c_attn.bias"]
        q, k, v = qkv.reshape(B, T, 3, self.H, self.Dh).transpose(2, 0, 3, 1, 4)  # [B, H, T, Dh] each
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(self.Dh) + np.triu(np.full((T, T), -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        return ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3)  # [B, T, H, Dh]

    def attn_out(self, l, z):
        B, T = z.shape[:2]
        return z.reshape(B, T, -1) @ self.w[f"h.{l}.attn.c_proj.weight"] + self.w[f"h.{l}.attn.c_proj.bias"]

    def post(self, l, x):
        """(pre, post) of every neuron of layer l [B, T, M]; gelu_new in float64."""
        pre = self.ln(x, f"h.{l}.ln_2") @ self.w[f"h.{l}.mlp.c_fc.weight"] + self.w[f"h.{l}.mlp.c_fc.bias"]
        return pre, 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre ** 3)))

    def run(self, tokens, lengths, neuron, z_kept=None, head=None, attn_in=(), mlp_in=(), neuron_in=False):
        """(pre, post, p-logits) of ``neuron`` at the last positions; z_kept [B, T, Dh]: what ``head``'s z
        becomes where δ = (z − z_kept) W_O is subtracted; with ``head`` and nothing named, removed everywhere."""
        rows, t = np.arange(len(lengths)), lengths - 1
        x = self.w["wte.weight"][tokens] + self.w["wpe.weight"][:tokens.shape[1]]
        delta = 0.0
        for l in range(self.m.cfg.n_layer):
            z = self.z(l, x - (delta if l in attn_in else 0.0))
            if head is not None and l == head.layer:
                delta = (z[:, :, head.head] - z_kept) @ self.w[f"h.{l}.attn.c_proj.weight"].reshape(
                    self.H, self.Dh, -1)[head.head]  # [B, T, D]
                if not (attn_in or mlp_in or neuron_in):  # total: removed everywhere
                    z = z.copy()
                    z[:, :, head.head] = z_kept
                    delta = 0.0
            x = x + self.attn_out(l, z)
            pre, post = self.post(l, x - (delta if l in mlp_in else 0.0))
            if l == neuron.layer:
                if neuron_in:
                    n_pre, n_post = self.post(l, x - delta)
                    pre, post = pre.copy(), post.copy()
                    pre[..., neuron.index], post[..., neuron.index] = (n_pre[..., neuron.index],
                                                                       n_post[..., neuron.index])
                out_pre, out_post = pre[rows, t, neuron.index], post[rows, t, neuron.index]
            x = x + post @ self.w[f"h.{l}.mlp.c_proj.weight"] + self.w[f"h.{l}.mlp.c_proj.bias"]
        logits = self.ln(x[rows, t], "ln_f") @ self.w.get("lm_head.weight", self.w["wte.weight"]).T
        return out_pre, out_post, logits


def ref_softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@settings(max_examples=25, deadline=None)
@given(args=model_args, data=st.data(), paper=st.booleans())
def test_each_path_equals_a_float64_forward_with_that_input_hooked(args, data, paper):
    m, neuron, heads, prompts, token = draw_case(args, data, max_heads=2)
    run = trace_run(m, prompts, neuron)
    replace_with = {h: head_value_constant(m, h.layer)[h.head] for h in heads} if paper else None
    paths = head_paths(m, run, neuron, token, heads, replace_with=replace_with)
    ref = Reference(m)
    tokens, lengths = run.tokens, run.lengths
    pre0, post0, logits0 = ref.run(tokens, lengths, neuron)
    p0 = ref_softmax(logits0)[:, token]
    scale = float(np.abs(pre0).max())
    for hp in paths.heads:
        h = hp.head
        kept = np.zeros(args["d_head"]) if not paper else (
            ref.w[f"h.{h.layer}.attn.c_attn.bias"].reshape(3, ref.H, ref.Dh)[2, h.head]
            + ref.w[f"h.{h.layer}.ln_1.bias"] @ ref.w[f"h.{h.layer}.attn.c_attn.weight"].reshape(
                -1, 3, ref.H, ref.Dh)[:, 2, h.head])  # c_h = b_V + β₁W_V, in float64

        def hooked(**where):
            pre, post, logits = ref.run(tokens, lengths, neuron, kept, h, **where)
            return pre0 - pre, post0 - post, p0 - ref_softmax(logits)[:, token]

        cases = [(hp.direct, hooked(neuron_in=True)), (hp.total, hooked())]
        cases += [(hp.via_mlp[k], hooked(mlp_in={k})) for k in range(h.layer, neuron.layer)]
        cases += [(hp.via_heads[j], hooked(attn_in={j})) for j in range(h.layer + 1, neuron.layer + 1)]
        assert sorted(hp.via_mlp) == list(range(h.layer, neuron.layer))
        assert sorted(hp.via_heads) == list(range(h.layer + 1, neuron.layer + 1))
        for got, (d_pre, d_post, d_p) in cases:
            close(got.d_pre, d_pre, scale, tol=3e-5)
            close(got.d_post, d_post, scale, tol=3e-5)
            if got.d_p is not None:
                np.testing.assert_allclose(got.d_p, d_p, atol=2e-6)


@settings(max_examples=20, deadline=None)
@given(args=model_args, data=st.data())
def test_a_head_in_the_neurons_layer_has_the_direct_path_only(args, data):
    m, neuron, _, prompts, token = draw_case(args, data)
    heads = [Head(neuron.layer, h) for h in range(args["n_head"])]
    paths = head_paths(m, trace_run(m, prompts, neuron), neuron, token, heads)
    for hp in paths.heads:
        assert hp.via_mlp == {} and hp.via_heads == {}
        scale = float(np.abs(hp.total.d_pre).max())
        close(hp.direct.d_pre, hp.total.d_pre, scale)  # the same LN₂ of the same input: exactly the total
        close(hp.direct.d_post, hp.total.d_post, scale)
        np.testing.assert_array_equal(hp.rest.d_pre, hp.total.d_pre - hp.direct.d_pre)


EPS = [0.02 / 2 ** i for i in range(7)]  # 0.02 … 0.0003: the fraction of h's output removed


def rests(m, run, neuron, head, left_in=()) -> np.ndarray:
    """rest (Δpre) [E, P] at each ε of EPS when z_h ← (1 − ε) z_h: the head's output removed by a fraction ε;
    ``left_in``: groups of paths ("via_mlp", "via_heads") counted in the rest instead of apart."""
    z = m.run(run.tokens, keep={("z", head.layer)}, logits=None, stop_at_layer=head.layer)["z", head.layer]
    out = []
    for eps in EPS:
        hp = head_paths(m, run, neuron, 0, [head], replace_with={head: (1 - eps) * z[:, :, head.head]}).heads[0]
        out.append(hp.rest.d_pre + sum(e.d_pre for g in left_in for e in getattr(hp, g).values()))
    return np.array(out)  # [E, P]


def second_order(rest: np.ndarray, run, neuron) -> bool:
    """At every prompt, at the smallest ε whose rest(2ε) float32 still resolves (≥ 50 × the floor of 1e-6 of the
    largest |pre|): |rest(ε)| ≤ 0.4 |rest(2ε)| + floor. As ε → 0 the ratio tends to 1/4 for an O(ε²) rest and to
    1/2 for an O(ε) one; a larger ε would let the third-order terms of a random model decide."""
    floor = 1e-6 * max(1.0, float(np.abs(run.neuron(neuron)["pre"]).max()))
    for p in range(rest.shape[1]):
        resolved = [i for i in range(len(EPS) - 1) if abs(rest[i, p]) >= 50 * floor]  # i: 2ε, i + 1: ε
        if resolved and abs(rest[resolved[-1] + 1, p]) > 0.4 * abs(rest[resolved[-1], p]) + floor:
            return False
    return True


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n_layer=st.integers(2, 3), n_head=st.integers(1, 3), data=st.data())
def test_the_paths_partition_the_first_order_change(seed, n_layer, n_head, data):
    """total(ε) − direct(ε) − Σ via(ε) = O(ε²): every path from h to n has exactly one first stop after h (n
    itself, an MLP k, or a head of a later layer j), and the chain rule splits d pre / d(h's output) exactly over
    those first stops, so the first-order terms cancel; what is left are products of two or more changes through
    LayerNorm, GELU and softmax. Bound tested: ``second_order`` (halving ε about quarters the rest)."""
    m = random_model(seed=seed, n_layer=n_layer, n_head=n_head, d_head=4, d_vocab=30, n_ctx=8)
    neuron = Neuron(data.draw(st.integers(1, n_layer - 1)), data.draw(st.integers(0, m.cfg.d_mlp - 1)))
    head = Head(data.draw(st.integers(0, neuron.layer - 1)), data.draw(st.integers(0, n_head - 1)))
    rng = np.random.default_rng(seed)
    run = trace_run(m, [rng.integers(0, 30, n).tolist() for n in (8, 5)], neuron)
    rest = rests(m, run, neuron, head)
    assert second_order(rest, run, neuron), rest


def test_the_partition_bound_fails_when_a_group_of_paths_is_left_out():
    """The partition test can fail: count the paths via the MLPs, or via the later heads, in the rest and it
    halves with ε instead of quartering."""
    m = random_model(seed=4, n_layer=3, n_head=2, d_head=4, d_vocab=30, n_ctx=8)
    neuron, head = Neuron(2, 5), Head(0, 1)
    run = trace_run(m, [[1, 2, 3, 4, 5, 6], [7, 8, 9]], neuron)
    assert second_order(rests(m, run, neuron, head), run, neuron)
    for group in ("via_mlp", "via_heads"):
        assert not second_order(rests(m, run, neuron, head, [group]), run, neuron), group


def test_records_and_bad_input():
    m = random_model(n_layer=3)
    prompts = [[1, 2, 3], [4, 5]]
    run = trace_run(m, prompts, Neuron(1, 0))
    assert head_paths(m, run, Neuron(1, 0), 3, []).heads == []
    with pytest.raises(ValueError, match="after L1N0's layer"):
        head_paths(m, run, Neuron(1, 0), 3, [Head(2, 0)])
    with pytest.raises(ValueError, match="ablate_with"):
        head_paths(m, run, Neuron(1, 0), 3, [Head(0, 0)], ablate_with="median")
    paths = head_paths(m, run, Neuron(1, 0), 3, [Head(0, 0), Head(1, 1)])
    active = {Head(0, 0): np.array([True, False])}
    js = paths.to_json(active)
    first = js["heads"][0]
    assert first["head"] == "L0H0" and js["removal"] == "zero" and js["joint"]["heads"] == ["L0H0", "L1H1"]
    assert [v["layer"] for v in first["via_mlp"]] == [0] and [v["layer"] for v in first["via_heads"]] == [1]
    assert first["total"]["mean_dpost_active"] == pytest.approx(float(paths.heads[0].total.d_post[0]))
    assert first["direct"]["frozen"]["mean_dp"] is None
    hp = paths.heads[0]
    fraction = hp.mediated_fraction()
    assert fraction.d_post == pytest.approx(float(hp.direct.d_post.sum() / hp.total.d_post.sum()), rel=1e-5)
    assert first["mediated_fraction"] == {"dpost": fraction.d_post, "dp": fraction.d_p}
