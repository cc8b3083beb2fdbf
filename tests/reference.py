"""Build random GPT-2 checkpoints with transformers (the reference implementation), in both key styles.

* ``"prefixed"``: ``save_pretrained`` as transformers 5 writes it (``transformer.`` keys, no attn.bias).
* ``"hub"``: as the Hugging Face Hub's real GPT-2 files: unprefixed keys, ``h.N.attn.bias`` causal-mask
  buffers [1, 1, n_ctx, n_ctx], and the data starting at an odd (unaligned) byte offset, like the real
  file's 14291.

Weights are redrawn with larger scales than GPT-2's init (0.02) so that every layer matters numerically.
Only tests and tools import this module (it needs torch).
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from reference_paths import SHARED_GPT2, TOKENIZER_DIR  # noqa: F401

_ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def random_gpt2(n_layer=2, n_head=2, d_head=4, d_vocab=50, n_ctx=16, d_mlp=None, seed=0,
                scale=0.3, tied=True) -> GPT2LMHeadModel:
    """A GPT-2 with weights ~ N(0, scale²/fan-in-ish), LayerNorm γ ~ 1 ± 0.2, biases ~ N(0, 0.1²)."""
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_head * d_head, n_positions=n_ctx,
                     n_inner=d_mlp, vocab_size=d_vocab, activation_function="gelu_new",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied,
                     bos_token_id=d_vocab - 1, eos_token_id=d_vocab - 1)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("wte.weight", "wpe.weight")):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # Conv1D weights are [in, out]: keep activations O(1) whatever the width
                p.copy_(scale * torch.randn(p.shape, generator=gen) / p.shape[0] ** 0.5 * 3)
        if not tied:
            model.lm_head.weight.copy_(scale * torch.randn(model.lm_head.weight.shape, generator=gen))
    return model


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], unaligned: bool = False) -> None:
    """Write a safetensors file by hand; ``unaligned`` pads the header so the data starts at a byte ≡ 3 (mod 8),
    as in the Hub's GPT-2 file (14291)."""
    header, chunks, pos = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": _ST_DTYPE[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    if unaligned:
        text += b" " * ((3 - 8 - len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


def save(model: GPT2LMHeadModel, folder: Path, style: str = "prefixed", dtype: torch.dtype = torch.float32,
         tokenizer_dir: Path | None = None) -> Path:
    """Save ``model`` into ``folder`` in the given key style and dtype; copy a tokenizer if given."""
    folder.mkdir(parents=True, exist_ok=True)
    if style == "prefixed":
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        model.to(torch.float32)
    elif style == "hub":
        cfg = model.config
        tensors = {}
        for name, t in model.state_dict().items():
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            tensors[name.removeprefix("transformer.")] = t.to(dtype)
        for layer in range(cfg.n_layer):  # the Hub file's causal-mask buffers, as old transformers saved them
            mask = torch.tril(torch.ones(cfg.n_positions, cfg.n_positions)).view(1, 1, cfg.n_positions, cfg.n_positions)
            tensors[f"h.{layer}.attn.bias"] = mask.to(dtype)
        write_safetensors(folder / "model.safetensors", tensors, unaligned=True)
        cfg.to_json_file(folder / "config.json")
    else:
        raise ValueError(style)
    if tokenizer_dir is not None:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def reference_outputs(folder: Path, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Load ``folder`` with transformers (float32, eager attention) and run ``tokens`` [B, T]."""
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.inference_mode():
        out = model(torch.as_tensor(tokens), output_hidden_states=True, output_attentions=True)
    return {
        "logits": out.logits.numpy(),  # [B, T, V]
        "hidden": np.stack([h.numpy() for h in out.hidden_states]),  # [L+1, B, T, D]; the last has ln_f applied
        "attentions": np.stack([a.numpy() for a in out.attentions]),  # [L, B, H, T, T]
    }


def transformer_lens_model(hf_model: GPT2LMHeadModel, processed: bool = True):
    """A HookedTransformer built offline from ``hf_model``, processed as ``from_pretrained`` does by default
    (fold_ln, center_writing_weights, center_unembed, fold_value_biases) — the paper authors' setup; with
    ``processed=False`` none of these (as ``from_pretrained_no_processing``): LayerNorms, biases and weights
    stay where GPT-2 has them.

    The final LayerNorm is folded into the unembedding here, before TransformerLens's processing:
    W_U ← diag(γ_f) W_U, b_U ← β_f W_U, γ_f ← 1, β_f ← 0. TransformerLens 3.9's ``fold_layer_norm`` guesses
    W_U's layout from its shape, and when it is square (d_vocab = d_model, e.g. 8 = 8) it takes W_U [D, V]
    for [V, D]: it scales W_U's vocabulary columns by γ_f and sums over the vocabulary for b_U, a different
    model from ``hf_model`` (logits off by O(1)). Folded beforehand, its own fold multiplies by ones and adds
    zeros whichever axis it picks; on GPT-2's real shapes (50257 ≠ 768) the result is the same model either
    way, with W_U and b_U centred as before."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf_model.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function,
        eps=c.layer_norm_epsilon, normalization_type="LN", original_architecture="GPT2LMHeadModel",
        positional_embedding_type="standard", use_attn_scale=True, device="cpu", dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = convert_gpt2_weights(hf_model, cfg)
        gamma, beta = state["ln_final.w"].detach(), state["ln_final.b"].detach()  # [D], [D]
        W_U = state["unembed.W_U"].detach()  # [D, V]
        state["unembed.W_U"], state["unembed.b_U"] = gamma[:, None] * W_U, beta @ W_U  # [D, V], [V]
        state["ln_final.w"], state["ln_final.b"] = torch.ones_like(gamma), torch.zeros_like(beta)
        model = HookedTransformer(cfg, move_to_device=False)
        model.load_and_process_state_dict(state, fold_ln=processed, center_writing_weights=processed,
                                          center_unembed=processed, fold_value_biases=processed,
                                          refactor_factored_attn_matrices=False)
    return model.eval()


def authors_head_scores(tl, prompts: list[list[int]], layer: int, index: int) -> np.ndarray:
    """[P, layer · H]: the paper authors' head scores for neuron ``index`` of ``layer`` at each prompt's last
    token — ``cache.stack_head_results()`` (heads of layers < layer) dotted with the folded, centred
    ``W_in[:, index]``; no LayerNorm-2 scale applied."""
    lengths = [len(p) for p in prompts]
    tokens = torch.zeros((len(prompts), max(lengths)), dtype=torch.long)  # right-padded: causal, so harmless
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = torch.as_tensor(p)
    with torch.inference_mode():
        _, cache = tl.run_with_cache(tokens)
        stack = cache.stack_head_results(layer=layer)  # [layer·H, P, T, D]
        last = stack[:, torch.arange(len(prompts)), torch.as_tensor(lengths) - 1]  # [layer·H, P, D]
        w_in = tl.blocks[layer].mlp.W_in[:, index]  # [D]
        return (last @ w_in).T.double().numpy()  # [P, layer·H]


def authors_selection(scores: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """The authors' procedure on scores [P, N]: active [P, N] (mean + 2·std with torch's unbiased std, or the
    top 3) and differential [N] (active on 25–75 % of the prompts), computed in torch."""
    s = torch.as_tensor(scores)
    if rule == "sigma2":
        active = s > s.mean(1, keepdim=True) + 2 * s.std(1, keepdim=True)
    else:
        active = torch.zeros_like(s, dtype=torch.bool)
        active.scatter_(1, s.topk(min(3, s.shape[1]), dim=1).indices, True)
    fraction = active.double().mean(0)
    return active.numpy(), ((fraction >= 0.25) & (fraction <= 0.75)).numpy()
