"""Small read-outs of a model for the ``info`` and ``run`` commands."""
from __future__ import annotations

import numpy as np

from minitf.errors import MinitfError
from minitf.model import Model
from minitf.kernels import softmax
from minitf.load.weights import checkpoint_files, read_safetensors_header


def model_info(model: Model) -> dict:
    """Config, parameter count, float32 bytes and every tensor's shape."""
    cfg = model.cfg
    n_params = sum(a.size for a in model.w.values())
    stored = "?"
    if model.folder is not None:
        dtypes = {v["dtype"] for path in checkpoint_files(model.folder)[0] for v in read_safetensors_header(path)[0].values()}
        stored = "/".join(sorted(dtypes))
    return {
        "folder": str(model.folder),
        "architecture": cfg.arch + (" (parallel residual)" if cfg.parallel_residual else ""),
        "layers": cfg.n_layer, "heads": cfg.n_head, "d_model": cfg.d_model, "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp, "vocab": cfg.d_vocab, "context": cfg.n_ctx,
        "parameters": n_params, "stored dtype": stored, "computed in": "float32", "float32 bytes": n_params * 4,
        "unembedding": "lm_head" if "lm_head.weight" in model.w else "tied to wte",
        "tensors": {name: list(a.shape) for name, a in model.w.items()},
    }


def next_token_predictions(model: Model, text: str, top_k: int = 10, bos: bool = False) -> dict:
    """The ``top_k`` most likely next tokens after ``text`` with their probabilities; an over-long text keeps its
    last n_ctx tokens (``truncated``), as in ``trace``."""
    from minitf.prompts import fit_context

    ids, truncated = fit_context(model, model.encode(text), bos)
    if not ids:
        raise MinitfError("`text`: empty prompt", param="text")
    probs = softmax(model.run(ids, logits="last").logits[0])  # [V]
    top = np.argsort(-probs, kind="stable")[:top_k]
    return {"n_tokens": len(ids), "truncated": truncated, "tokens": [model.token_str(i) for i in ids],
            "predictions": [{"id": int(i), "token": model.token_str(i), "prob": float(probs[i])} for i in top]}
