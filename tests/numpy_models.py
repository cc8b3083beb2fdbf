"""Random GPT-2 models built directly in NumPy (no files, no torch), for property tests."""
import numpy as np

from minitf import Model
from minitf.load.weights import Config, expected_shapes


def random_model(seed=0, n_layer=2, n_head=2, d_head=4, d_vocab=40, n_ctx=16, d_mlp=None) -> Model:
    rng = np.random.default_rng(seed)
    D = n_head * d_head
    cfg = Config(n_layer=n_layer, n_head=n_head, d_model=D, n_ctx=n_ctx, d_mlp=d_mlp or 4 * D,
                 d_vocab=d_vocab, eps=1e-5)
    weights = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            a = 1 + 0.2 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            a = 0.1 * rng.standard_normal(shape)
        elif name in ("wte.weight", "wpe.weight"):
            a = rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) * 1.5 / np.sqrt(shape[0])
        weights[name] = a.astype(np.float32)
    return Model(cfg, weights)


# ---- Hypothesis: a small random model, one of its neurons and a batch of prompts (attribution, why) -----------
def model_args():
    """The strategy of ``random_model``'s arguments the property tests draw from."""
    from hypothesis import strategies as st

    return st.fixed_dictionaries({
        "seed": st.integers(0, 10**6), "n_layer": st.integers(1, 3), "n_head": st.integers(1, 4),
        "d_head": st.integers(1, 8), "d_vocab": st.integers(2, 50), "n_ctx": st.integers(1, 16),
    })


def draw_case(args, data):
    """(model, a neuron drawn from it, 1–3 prompts of random tokens, seeded by ``args["seed"]``)."""
    from hypothesis import strategies as st

    from minitf.names import Neuron

    m = random_model(**args)
    layer = data.draw(st.integers(0, args["n_layer"] - 1), label="layer")
    neuron = Neuron(layer, data.draw(st.integers(0, m.cfg.d_mlp - 1), label="n"))
    lengths = data.draw(st.lists(st.integers(1, args["n_ctx"]), min_size=1, max_size=3), label="lengths")
    rng = np.random.default_rng(args["seed"])
    prompts = [rng.integers(0, args["d_vocab"], n).tolist() for n in lengths]
    return m, neuron, prompts
