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
