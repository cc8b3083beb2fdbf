"""Build random GPT-NeoX (Pythia-architecture) checkpoints with transformers, the reference implementation, and
a TransformerLens model from them. Only tests and tools import this module (it needs torch)."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM


def random_neox(n_layer=2, n_head=2, d_head=4, d_vocab=50, n_ctx=16, d_mlp=None, rotary_pct=0.25,
                rotary_base=10000.0, parallel=True, seed=0) -> GPTNeoXForCausalLM:
    """A GPT-NeoX with weights ~ N(0, 1/fan-in)·1.5, LayerNorm γ ~ 1 ± 0.2, biases ~ N(0, 0.1²), untied embed_out."""
    cfg = GPTNeoXConfig(vocab_size=d_vocab, hidden_size=n_head * d_head, num_hidden_layers=n_layer,
                        num_attention_heads=n_head, intermediate_size=d_mlp or 4 * n_head * d_head,
                        max_position_embeddings=n_ctx, rotary_pct=rotary_pct, rotary_emb_base=rotary_base,
                        use_parallel_residual=parallel, hidden_act="gelu", layer_norm_eps=1e-5,
                        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name.lower() or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_in" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # torch Linear weights are [out, in]
                p.copy_(1.5 * torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    return model


def save_neox(model: GPTNeoXForCausalLM, folder: Path, dtype: torch.dtype = torch.float32,
              sharded: bool = False) -> Path:
    """save_pretrained as safetensors in ``dtype``, in one file or split into three shards
    ``model-0000x-of-00003.safetensors`` with their ``model.safetensors.index.json`` (as save_pretrained names
    them for a large model); the model is left holding the saved (rounded) weights in float32, so that it is the
    reference for what was saved."""
    from safetensors.torch import load_file, save_file

    copy.deepcopy(model).to(dtype).save_pretrained(folder, safe_serialization=True)
    with torch.no_grad():  # the parameters rounded as saved; buffers (rotary's inv_freq) stay float32
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    if sharded:
        tensors = load_file(folder / "model.safetensors")
        keys, weight_map = sorted(tensors), {}
        for i in range(3):
            name = f"model-{i + 1:05d}-of-00003.safetensors"
            part = keys[i::3]
            save_file({k: tensors[k] for k in part}, folder / name, metadata={"format": "pt"})
            weight_map |= {k: name for k in part}
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def reference_outputs(model: GPTNeoXForCausalLM, tokens: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = model(torch.as_tensor(tokens), output_hidden_states=True, output_attentions=True)
    return {"logits": out.logits.numpy(),  # [B, T, V]
            "hidden": [h.numpy() for h in out.hidden_states],  # L+1 × [B, T, D]
            "attentions": [a.numpy() for a in out.attentions]}  # L × [B, H, T, T]


def transformer_lens_neox(hf_model: GPTNeoXForCausalLM):
    """A HookedTransformer built offline from ``hf_model`` with TransformerLens 3.9's own GPT-NeoX config
    (``loading_from_pretrained``'s GPTNeoXForCausalLM branch, rotary_base added: it does not read it) and
    weight conversion (``convert_neox_weights``), processed as ``from_pretrained`` does by default (fold_ln,
    center_writing_weights, center_unembed, fold_value_biases); the final LayerNorm is folded into W_U
    beforehand, as ``reference.transformer_lens_model`` explains."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_neox_weights

    c = hf_model.config
    d_head = c.hidden_size // c.num_attention_heads
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.layer_norm_eps, d_vocab=c.vocab_size,
        act_fn=c.hidden_act, use_attn_scale=True, use_local_attn=False, scale_attn_by_inverse_layer_idx=False,
        parallel_attn_mlp=c.use_parallel_residual, positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        normalization_type="LN", default_prepend_bos=False, original_architecture="GPTNeoXForCausalLM",
        rotary_dim=round(c.rope_parameters["partial_rotary_factor"] * d_head),
        rotary_base=c.rope_parameters["rope_theta"], device="cpu", dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = convert_neox_weights(hf_model, cfg)
        gamma, beta = state["ln_final.w"].detach(), state["ln_final.b"].detach()  # [D], [D]
        W_U = state["unembed.W_U"].detach()  # [D, V]
        state["unembed.W_U"], state["unembed.b_U"] = gamma[:, None] * W_U, beta @ W_U  # [D, V], [V]
        state["ln_final.w"], state["ln_final.b"] = torch.ones_like(gamma), torch.zeros_like(beta)
        model = HookedTransformer(cfg, move_to_device=False)
        model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                          fold_value_biases=True, refactor_factored_attn_matrices=False)
    return model.eval()
