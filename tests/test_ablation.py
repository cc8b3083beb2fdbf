"""The fast ablation (each head rerun from its own layer on the clean residual stream, last position only)
equals a full rerun with the head's z zeroed or replaced, to float32 rounding."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minitf import Intervention, Model
from minitf.ablation import ablate_heads
from minitf.attribution import NEEDED
from minitf.names import Head, Neuron
from minitf.kernels import softmax
from numpy_models import random_model

model_args = st.fixed_dictionaries({
    "seed": st.integers(0, 10**6), "n_layer": st.integers(1, 4), "n_head": st.integers(1, 3),
    "d_head": st.integers(1, 6), "d_vocab": st.integers(2, 40), "n_ctx": st.integers(1, 12),
})


def neuron_and_token_prob(model: Model, prompts: list[list[int]], neuron: Neuron, token: int,
                          interventions=()) -> tuple[np.ndarray, np.ndarray]:
    """The reference: (post-activation of ``neuron`` [P], p(token) [P]) at each prompt's last position,
    from a full run of every layer."""
    run = model.run(prompts, logits="last", keep={("post", neuron.layer)}, interventions=interventions)
    rows = np.arange(len(prompts))
    post = run["post", neuron.layer][rows, run.lengths - 1, neuron.index]  # [P]
    return post, softmax(run.logits)[:, token]  # [P], [P]


@settings(max_examples=40, deadline=None)
@given(args=model_args, data=st.data())
def test_fast_ablation_equals_a_full_rerun(args, data):
    m = random_model(**args)
    L, H = args["n_layer"], args["n_head"]
    neuron = Neuron(data.draw(st.integers(0, L - 1)), data.draw(st.integers(0, m.cfg.d_mlp - 1)))
    every = [Head(k, h) for k in range(L) for h in range(H)]  # every layer: before, at and after the neuron's
    heads = data.draw(st.lists(st.sampled_from(every), min_size=1, max_size=6, unique=True))
    replaced = data.draw(st.lists(st.sampled_from(heads), unique=True))
    rng = np.random.default_rng(args["seed"])
    replace_with = {h: rng.standard_normal(args["d_head"]).astype(np.float32) for h in replaced}
    lengths = data.draw(st.lists(st.integers(1, args["n_ctx"]), min_size=1, max_size=4))
    prompts = [rng.integers(0, args["d_vocab"], n).tolist() for n in lengths]
    token = data.draw(st.integers(0, args["d_vocab"] - 1))
    # as the trace calls it (its own run, stopped at the neuron's layer), and on its own (run=None)
    trace_run = m.run(prompts, keep=NEEDED | {"resid_pre"}, stop_at_layer=neuron.layer)
    fast = ablate_heads(m, prompts, neuron, token, heads, run=trace_run, replace_with=replace_with)
    alone = ablate_heads(m, prompts, neuron, token, heads, replace_with=replace_with)

    base_post, base_p = neuron_and_token_prob(m, prompts, neuron, token)
    assert set(fast) == set(alone) == set(heads)
    for head in heads:
        value = replace_with.get(head, 0.0)
        post, p = neuron_and_token_prob(m, prompts, neuron, token, [Intervention(str(head), value)])
        for got in (fast[head], alone[head]):
            np.testing.assert_allclose(got[0], base_post - post, rtol=1e-5, atol=1e-5 * max(1, np.abs(post).max()))
            np.testing.assert_allclose(got[1], base_p - p, atol=1e-6)
        if head.layer > neuron.layer:
            assert np.all(fast[head][0] == 0)


def test_nothing_is_run_when_nothing_is_ablated(monkeypatch):
    m = random_model()
    calls = []
    monkeypatch.setattr(m, "run", lambda *a, **k: calls.append(1))
    assert ablate_heads(m, [[1, 2, 3]], Neuron(1, 0), 5, []) == {}
    assert calls == []


def test_reruns_start_at_the_head_layer(monkeypatch):
    m = random_model(n_layer=3)
    prompts = [[1, 2, 3], [4, 5]]
    trace_run = m.run(prompts, keep=NEEDED | {"resid_pre"}, stop_at_layer=2)
    starts = []
    run = m.run
    monkeypatch.setattr(m, "run", lambda *a, **k: starts.append(k.get("start_layer", 0)) or run(*a, **k))
    ablate_heads(m, prompts, Neuron(2, 0), 5, [Head(1, 0), Head(0, 1)], run=trace_run)
    assert starts == [2, 1, 0]  # the baseline's logits from the neuron's layer on, then each head's layer
