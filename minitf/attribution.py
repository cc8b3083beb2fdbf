"""Exact direct effects of every residual component on one MLP neuron's pre-activation (paper step 3).

For neuron n of layer l at position t, LayerNorm-2 reads the residual stream x = resid_mid of layer l:

    pre_t = LN₂(x_t) · W_in[:, n] + b_in[n]
          = (x_t − mean x_t)/σ_t · (γ₂ ⊙ W_in[:, n]) + β₂ · W_in[:, n] + b_in[n]
          = Σ_c c_t · w̃ / σ_t  +  (β₂ · W_in[:, n] + b_in[n]),     w̃ = γ₂⊙W_in[:,n] − mean(γ₂⊙W_in[:,n])

because (x − mean x)·v = x·(v − mean v). With σ_t frozen from the forward pass this is an identity, summed
over every component c that writes into x: the token embedding, the position embedding, every head of
layers 0…l (the neuron's own layer too: its MLP reads resid_mid), each attention bias b_O of layers 0…l,
and every earlier MLP output (each of which splits further over its neurons: post_m · (W_out[m] · w̃)).

GPT-NeoX (Pythia) changes two things here. It has no position embedding (rotary turns q and k, never what a
head writes), so that term is 0. And in its parallel residual form, xˡ⁺¹ = xˡ + attn(LN₁ xˡ) + mlp(LN₂ xˡ),
LN₂ reads x = resid_pre of layer l: the components are the embedding, the heads and b_O of layers 0…l−1 and
the MLPs of layers 0…l−1 — layer l's heads are not among them (their rows of ``DirectEffects`` are exactly 0,
and ``--include-same-layer`` has nothing to add). The sequential form is GPT-2's. Everything below (a head's
context and constant parts, its split over sources) holds unchanged: the value path has no rotary in it.

A head writes z_h W_O[h], so its term is a d_head-long dot product, never a d_model one:

    u_h = W_O[h] @ w̃  [Dh],        term_h,t = z_h[t] · u_h / σ_t

z_h[t] = Σ_s pattern_h[t, s] v_h[s] with v_h[s] = LN₁(x_s) W_V[h] + b_V[h] and LN₁(x_s) = x̂_s⊙γ₁ + β₁
(x̂_s: the centred, σ₁-scaled residual). Each row of the pattern sums to 1, so the term splits exactly into

    term_h,t = Σ_s pattern_h[t, s] · (x̂_s⊙γ₁) W_V[h] · u_h / σ_t  +  c_h · u_h / σ_t,    c_h = b_V[h] + β₁ W_V[h]
               └────── context part: what the head looked up ─────┘   └ constant part ┘ (no token's content in it)

and the context part splits further over the source positions s. TransformerLens (its default
``fold_value_biases``, which the paper's authors used) folds c_h · W_O[h] into the layer's bias b_O, so the
authors' head score ``stack_head_results()[:, t] @ W_in[:, n]`` (folded, centred weights) is σ_t × the
context part. Both selection rules (``minitf.heads``) are invariant to that σ_t, so selecting on the context
part selects the paper's heads; ``--scores exact`` selects on the whole term instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minitf.model import Model, Run
from minitf.names import Head, Neuron
from minitf.scores import DEFAULT, scores_mode

# Internals a run must record for ``direct_effects`` and ``head_sources``.
NEEDED = {"z", "v", "pattern", "ln2_scale", "pre", "mlp_out", "post"}


def head_value_constant(model: Model, layer: int) -> np.ndarray:
    """c [H, Dh]: each head's constant value part c_h = b_V[h] + β₁ W_V[h] (what z_h is when every value's
    context part x̂⊙γ₁ W_V is zeroed — TransformerLens's ``hook_v`` ablation on folded weights). Made once
    per model and layer (read-only): every prompt's and position's direct effects use it."""
    made = model.__dict__.setdefault("_head_value_constant", {})
    if layer not in made:
        beta = model.w[f"h.{layer}.ln_1.bias"]  # [D]
        made[layer] = model.b_V[layer] + np.einsum("D,hDd->hd", beta, model.W_V[layer])  # [H, Dh]
        made[layer].flags.writeable = False
    return made[layer]


def read_direction(model: Model, neuron: Neuron) -> tuple[np.ndarray, np.float32]:
    """(w̃ [D], constant β₂ · W_in[:, n] + b_in[n]): what LN₂ + W_in read from the residual stream for neuron n."""
    p = f"h.{neuron.layer}."
    w_in = model.W_in[neuron.layer][:, neuron.index]  # [D]
    gw = model.w[p + "ln_2.weight"] * w_in  # [D]  γ₂ ⊙ W_in[:, n]
    w_tilde = gw - gw.mean()  # [D]
    constant = model.w[p + "ln_2.bias"] @ w_in + model.w[p + "mlp.c_fc.bias"][neuron.index]
    return w_tilde, np.float32(constant)


@dataclass
class DirectEffects:
    """Each component's direct effect on neuron n's pre-activation at one position per prompt.

    ``heads[b, l, h]`` is head L{l}H{h}'s term = ``head_context`` + ``head_constant`` (its context and constant
    parts); ``total()`` = Σ of every term + constant, which equals ``pre`` (the forward pass's value) up to
    float32 rounding.
    """

    neuron: Neuron
    positions: np.ndarray  # [B] the position read in each prompt
    sigma: np.ndarray  # [B] LN₂'s scale σ_t there
    embed: np.ndarray  # [B] token embedding
    pos_embed: np.ndarray  # [B] position embedding
    heads: np.ndarray  # [B, l+1, H] (layer l's row 0 in the parallel residual form)
    head_context: np.ndarray  # [B, l+1, H] Σ_s pattern[t, s] (x̂_s⊙γ₁) W_V · u_h / σ_t (the paper's score / σ_t)
    head_constant: np.ndarray  # [B, l+1, H] c_h · u_h / σ_t
    attn_bias: np.ndarray  # [B, l+1] b_O of each layer
    mlp: np.ndarray  # [B, l] earlier MLP outputs (with their b_out)
    mlp_neurons: np.ndarray | None  # [B, l, M] the MLP outputs split over neurons (b_out excluded), on request
    constant: np.float32  # β₂ · W_in[:, n] + b_in[n]
    pre: np.ndarray  # [B] the pre-activation the forward pass computed

    def total(self) -> np.ndarray:
        """Σ_c terms + constant [B] — the identity's left-hand side."""
        return (self.embed + self.pos_embed + self.heads.sum((1, 2)) + self.attn_bias.sum(1)
                + self.mlp.sum(1) + self.constant)

    def magnitude(self) -> np.ndarray:
        """Σ_c |term| + |constant| [B]: the scale float32 rounding of ``total()`` is relative to."""
        return (np.abs(self.embed) + np.abs(self.pos_embed) + np.abs(self.heads).sum((1, 2))
                + np.abs(self.attn_bias).sum(1) + np.abs(self.mlp).sum(1) + abs(self.constant))

    def head(self, head: Head) -> np.ndarray:
        return self.heads[:, head.layer, head.head]  # [B]

    def head_scores(self, scores: str = DEFAULT) -> np.ndarray:
        """[B, l+1, H]: what selects heads (``minitf.scores``) — "paper": the context part; "exact": the whole term."""
        return self.head_context if scores_mode(scores).selects == "context" else self.heads


def direct_effects(model: Model, run: Run, neuron: Neuron, positions: np.ndarray | None = None,
                   split_mlp: bool = False) -> DirectEffects:
    """Direct effects at ``positions`` [B] (default: each prompt's last token). ``run`` must record NEEDED."""
    layer, B = neuron.layer, run.tokens.shape[0]
    rows = np.arange(B)  # [B]
    t = run.lengths - 1 if positions is None else np.asarray(positions)  # [B]
    w_tilde, constant = read_direction(model, neuron)  # [D], scalar
    sigma = run["ln2_scale", layer][rows, t]  # [B]

    def through(x):  # a residual component at (b, t_b) → its term
        return (x @ w_tilde) / sigma  # [B]

    embed = through(model.w["wte.weight"][run.tokens[rows, t]])  # [B]
    pos_embed = through(model.w["wpe.weight"][t]) if "wpe.weight" in model.w else np.zeros(B, np.float32)  # [B]
    heads = np.empty((B, layer + 1, model.cfg.n_head), np.float32)  # [B, l+1, H]
    context = np.empty_like(heads)  # [B, l+1, H]
    constant_part = np.empty_like(heads)  # [B, l+1, H]
    attn_bias = np.empty((B, layer + 1), np.float32)  # [B, l+1]
    heads[:, layer] = context[:, layer] = constant_part[:, layer] = attn_bias[:, layer] = 0  # parallel: not read
    for k in range(layer if model.cfg.parallel_residual else layer + 1):
        u = model.W_O[k] @ w_tilde  # [H, Dh]   u_h = W_O[h] @ w̃
        z = run["z", k][rows, t]  # [B, H, Dh]
        c = head_value_constant(model, k)  # [H, Dh]
        heads[:, k] = np.einsum("bhd,hd->bh", z, u) / sigma[:, None]  # [B, H]
        # z − c_h = Σ_s pattern (v_s − c_h): the context part, computed apart (not as term − constant) so that
        # it keeps its own relative precision when the constant dominates
        context[:, k] = np.einsum("bhd,hd->bh", z - c, u) / sigma[:, None]  # [B, H]
        constant_part[:, k] = (np.einsum("hd,hd->h", c, u) / sigma[:, None])  # [B, H]
        attn_bias[:, k] = (model.w[f"h.{k}.attn.c_proj.bias"] @ w_tilde) / sigma  # [B]
    mlp = np.empty((B, layer), np.float32)  # [B, l]
    mlp_neurons = np.empty((B, layer, model.cfg.d_mlp), np.float32) if split_mlp else None  # [B, l, M]
    for k in range(layer):
        mlp[:, k] = through(run["mlp_out", k][rows, t])
        if split_mlp:
            mlp_neurons[:, k] = run["post", k][rows, t] * (model.W_out[k] @ w_tilde) / sigma[:, None]  # [B, M]
    pre = run.neuron(neuron)["pre"][rows, t]  # [B]
    return DirectEffects(neuron, t, sigma, embed, pos_embed, heads, context, constant_part, attn_bias, mlp,
                         mlp_neurons, constant, pre)


def head_sources(model: Model, run: Run, neuron: Neuron, head: Head,
                 positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split head h's context part over the source positions it looked up; its constant part beside.

    Returns (by_source [B, T]: pattern[t, s] · (v[s] − c_h) · u_h / σ_t = pattern[t, s] · (x̂_s⊙γ₁) W_V · u_h / σ_t,
    zero for s > t and padding; constant [B]: c_h · u_h / σ_t). by_source.sum(1) = the context part, and
    + constant = the head's term.
    """
    B = run.tokens.shape[0]
    rows = np.arange(B)  # [B]
    t = run.lengths - 1 if positions is None else np.asarray(positions)  # [B]
    if model.cfg.parallel_residual and head.layer >= neuron.layer:  # not a component (the module docstring)
        return np.zeros(run.tokens.shape, np.float32), np.zeros(B, np.float32)
    w_tilde, _ = read_direction(model, neuron)  # [D]
    sigma = run["ln2_scale", neuron.layer][rows, t]  # [B]
    u = model.W_O[head.layer][head.head] @ w_tilde  # [Dh]
    c = head_value_constant(model, head.layer)[head.head]  # [Dh]
    value_terms = (run["v", head.layer][:, :, head.head] - c) @ u  # [B, T]  (v[s] − c_h) · u
    pattern = run["pattern", head.layer][rows, head.head, t]  # [B, T]  row t of each prompt
    by_source = pattern * value_terms / sigma[:, None]  # [B, T]
    return by_source, (c @ u) / sigma  # [B, T], [B]
