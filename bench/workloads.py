"""The benchmarked workloads, each as a zero-argument callable, plus the reference models they run against.

* forward: minitf ``Model.run`` (logits at every position) vs transformers' ``GPT2LMHeadModel``;
* trace: every head's direct effect on one neuron at each prompt's last token —
  minitf's trace path, TransformerLens the way the paper's authors used it, and transformers with hooks;
* index: every neuron's top activations over a token stream.
"""
from __future__ import annotations

import numpy as np

from minitf import attribution
from minitf.model import Model
from minitf.names import Neuron

def trace_keep(layer: int) -> set:
    """Exactly what ``direct_effects`` reads for a neuron of ``layer``: z of layers 0…layer, mlp_out of layers
    0…layer−1, LN-2's scale and the pre-activation of ``layer`` (attribution.NEEDED, which ``minitf.trace``
    records for the source split and the report, adds v, pattern and post, and keeps every layer's)."""
    return ({("z", k) for k in range(layer + 1)} | {("mlp_out", k) for k in range(layer)}
            | {("ln2_scale", layer), ("pre", layer)})


# ---- reference models ----------------------------------------------------------------------------------
def load_transformers(folder):
    """transformers' GPT2LMHeadModel, float32, eval, its default attention (SDPA)."""
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    return GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()


def load_transformer_lens(hf_model):
    """A HookedTransformer built offline from the same weights, processed as ``from_pretrained`` does by
    default (fold_ln, center_writing_weights, center_unembed, fold_value_biases): the tests' builder."""
    from reference import transformer_lens_model  # tests/ is on sys.path (bench/common.py)

    return transformer_lens_model(hf_model)


# ---- forward -------------------------------------------------------------------------------------------
def minitf_forward(model: Model, tokens: np.ndarray):
    return lambda: model.run(tokens).logits


def torch_forward(hf, tokens: np.ndarray):
    import torch

    tt = torch.as_tensor(tokens)

    def go():
        with torch.inference_mode():
            return hf(tt, use_cache=False).logits

    return go


# ---- trace ---------------------------------------------------------------------------------------------
def minitf_trace(model: Model, tokens: np.ndarray, neuron: Neuron, keep=None, one_column: bool = True):
    """The trace path: a run that stops at the neuron's layer and records only ``keep`` (default: exactly
    what the effects need), then the exact direct effects ([B, layer+1, H] heads and every other component)."""
    cols = [neuron.index] if one_column else None
    keep = trace_keep(neuron.layer) if keep is None else keep

    def go():
        run = model.run(tokens, keep=keep, stop_at_layer=neuron.layer, stop_neurons=cols)
        return attribution.direct_effects(model, run, neuron)

    return go


def tl_trace(tl, tokens: np.ndarray, neuron: Neuron):
    """The paper authors' way: ``run_with_cache``, every head's result at the last position, LayerNorm-2's
    cached scale applied, dotted with the neuron's W_in column. Returns [B, layer · H] (heads of layers
    0…layer−1, as ``stack_head_results`` gives them)."""
    import torch

    tt = torch.as_tensor(tokens)
    w_in = tl.blocks[neuron.layer].mlp.W_in[:, neuron.index].detach()  # [D] (tl.W_in would stack all layers)

    def go():
        with torch.inference_mode():
            _, cache = tl.run_with_cache(tt)
            stack = cache.stack_head_results(layer=neuron.layer, pos_slice=-1)  # [layer·H, B, D]
            stack = cache.apply_ln_to_stack(stack, layer=neuron.layer, mlp_input=True, pos_slice=-1)
            return (stack @ w_in).T.numpy()  # [B, layer·H]

    return go


def tl_trace_lean(tl, tokens: np.ndarray, neuron: Neuron):
    """TransformerLens used sparingly (not the paper's way): cache only hook_z and LN-2's scale, stop after
    the neuron's layer, and dot z with W_O[h] @ W_in[:, n] (never a [pos, head, d_model] tensor)."""
    import torch

    tt = torch.as_tensor(tokens)
    L = neuron.layer
    wanted = {f"blocks.{k}.attn.hook_z" for k in range(L)} | {f"blocks.{L}.ln2.hook_scale"}
    w_in = tl.blocks[L].mlp.W_in[:, neuron.index].detach()  # [D] (folded and centred: w̃)

    def go():
        with torch.inference_mode():
            _, cache = tl.run_with_cache(tt, names_filter=lambda name: name in wanted, stop_at_layer=L + 1)
            scale = cache[f"blocks.{L}.ln2.hook_scale"][:, -1, 0]  # [B]
            out = []
            for k in range(L):
                u = tl.blocks[k].attn.W_O @ w_in  # [H, Dh]
                out.append(torch.einsum("bhd,hd->bh", cache[f"blocks.{k}.attn.hook_z"][:, -1], u))
            return (torch.cat(out, 1) / scale[:, None]).numpy()  # [B, L·H]

    return go


class _Stop(Exception):
    pass


def hf_head_directions(hf, neuron: Neuron):
    """u [L+1, H, Dh] = W_O[h] @ w̃ for every head of layers ≤ L, from the transformers model's weights
    (w̃ = γ₂ ⊙ W_in[:, n] centred), so that a head's effect is z_h · u_h / σ."""
    import torch

    L, c = neuron.layer, hf.config
    H, D = c.n_head, c.n_embd
    blocks = hf.transformer.h
    with torch.no_grad():
        gw = blocks[L].ln_2.weight * blocks[L].mlp.c_fc.weight[:, neuron.index]  # [D]
        w_tilde = gw - gw.mean()  # [D]
        return torch.stack([blk.attn.c_proj.weight.view(H, D // H, D) @ w_tilde for blk in blocks[:L + 1]])


def hf_hooks_trace(hf, tokens: np.ndarray, neuron: Neuron):
    """transformers with forward pre-hooks: each layer's per-head z (the input of attn.c_proj) and the input
    of layer ``L``'s ln_2 at the last position; the forward stops there (an exception from the hook).
    Effects = z_h · (W_O[h] @ w̃) / σ, as minitf defines them. Returns [B, L+1, H]."""
    import torch

    L, c = neuron.layer, hf.config
    H, Dh = c.n_head, c.n_embd // c.n_head
    blocks = hf.transformer.h
    u = hf_head_directions(hf, neuron)  # [L+1, H, Dh]
    tt = torch.as_tensor(tokens)
    last = tt.shape[1] - 1
    captured: dict = {}

    def z_hook(k):
        def hook(module, args):
            captured[k] = args[0][:, last]  # [B, D] the heads' z side by side
        return hook

    def ln2_hook(module, args):
        captured["x"] = args[0][:, last]  # [B, D] resid_mid of layer L
        raise _Stop

    def go():
        handles = [blocks[k].attn.c_proj.register_forward_pre_hook(z_hook(k)) for k in range(L + 1)]
        handles.append(blocks[L].ln_2.register_forward_pre_hook(ln2_hook))
        try:
            with torch.inference_mode():
                try:
                    hf.transformer(tt, use_cache=False)
                except _Stop:
                    pass
                x = captured["x"]
                sigma = torch.sqrt(x.var(-1, unbiased=False) + c.layer_norm_epsilon)  # [B]
                z = torch.stack([captured[k].view(-1, H, Dh) for k in range(L + 1)], 1)  # [B, L+1, H, Dh]
                return (torch.einsum("bkhd,khd->bkh", z, u) / sigma[:, None, None]).numpy()
        finally:
            for h in handles:
                h.remove()

    return go


# ---- index ---------------------------------------------------------------------------------------------
def index_fallback(model: Model, batches: list[np.ndarray], k: int = 16):
    """Stand-in for ``minitf.index.build``: a forward per batch recording only ``post`` (no logits, the last
    layer's MLP output skipped) and a running top-k activation per neuron of every layer."""
    L, M = model.cfg.n_layer, model.cfg.d_mlp

    def go():
        best = np.full((L, k, M), -np.inf, np.float32)  # [L, k, M]
        where = np.zeros((L, k, M), np.int64)  # [L, k, M] global token index
        seen = 0
        for tokens in batches:
            run = model.run(tokens, keep={"post"}, logits=None, stop_at_layer=L - 1)
            n = tokens.size
            for layer in range(L):
                post = run["post", layer].reshape(n, M)  # [N, M]
                top = np.argpartition(post, n - k, axis=0)[n - k:]  # [k, M] this batch's top rows
                vals = np.take_along_axis(post, top, 0)  # [k, M]
                cand = np.concatenate([best[layer], vals])  # [2k, M]
                idx = np.concatenate([where[layer], top + seen])
                keep = np.argpartition(cand, k, axis=0)[k:]  # [k, M]
                best[layer] = np.take_along_axis(cand, keep, 0)
                where[layer] = np.take_along_axis(idx, keep, 0)
            seen += n
        return best, where

    return go
