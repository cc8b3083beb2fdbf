"""Exact direct effects of every residual component on one MLP neuron's pre-activation (paper step 3).

For neuron n of layer l at position t, LayerNorm-2 reads the residual stream x = resid_mid of layer l:

    pre_t = LN₂(x_t) · W_in[:, n] + b_in[n]
          = (x_t − mean x_t)/σ_t · (γ₂ ⊙ W_in[:, n]) + β₂ · W_in[:, n] + b_in[n]
          = Σ_c c_t · w̃ / σ_t  +  (β₂ · W_in[:, n] + b_in[n]),     w̃ = γ₂⊙W_in[:,n] − mean(γ₂⊙W_in[:,n])

because (x − mean x)·v = x·(v − mean v). With σ_t frozen from the forward pass this is an identity, summed
over every component c that writes into x: the token embedding, the position embedding, every head of
layers 0…l (the neuron's own layer too: its MLP reads resid_mid), each attention bias b_O of layers 0…l,
and every earlier MLP output (each of which splits further over its neurons: post_m · (W_out[m] · w̃)).

A head writes z_h W_O[h], so its term is a d_head-long dot product, never a d_model one:

    u_h = W_O[h] @ w̃  [Dh],        term_h,t = z_h[t] · u_h / σ_t

and since z_h[t] = Σ_s pattern_h[t, s] v_h[s] with v_h[s] = LN₁(x_s) W_V[h] + b_V[h], it splits over the
source positions s the head looked up:

    term_h,t = Σ_s pattern_h[t, s] · (v_h[s] − b_V[h]) · u_h / σ_t  +  b_V[h] · u_h / σ_t   (rows of pattern sum to 1)

The paper describes its scores without σ_t (they would be σ_t × these; ranking the heads within a prompt is
unchanged by that factor). TransformerLens's ``apply_ln_to_stack``, which its authors used, does divide by
σ_t, but its default ``fold_value_biases`` moves each head's constant value part (b_V[h] + β₁ W_V[h]) · W_O[h]
into the layer's bias, so its head scores are these terms minus (b_V[h] + β₁ W_V[h]) · u_h / σ_t (checked
to 3e-6 in bench/RESULTS.md). minitf keeps that part in the head's term and reports the b_V share apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import Model, Run
from .names import Head, Neuron

# Internals a run must record for ``direct_effects`` and ``head_sources``.
NEEDED = {"z", "v", "pattern", "ln2_scale", "pre", "mlp_out", "post"}


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

    ``heads[b, l, h]`` is head L{l}H{h}'s term; ``total()`` = Σ of every term + constant, which equals
    ``pre`` (the forward pass's value) up to float32 rounding.
    """

    neuron: Neuron
    positions: np.ndarray  # [B] the position read in each prompt
    sigma: np.ndarray  # [B] LN₂'s scale σ_t there
    embed: np.ndarray  # [B] token embedding
    pos_embed: np.ndarray  # [B] position embedding
    heads: np.ndarray  # [B, l+1, H]
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
    pos_embed = through(model.w["wpe.weight"][t])  # [B]
    heads = np.empty((B, layer + 1, model.cfg.n_head), np.float32)  # [B, l+1, H]
    attn_bias = np.empty((B, layer + 1), np.float32)  # [B, l+1]
    for k in range(layer + 1):
        u = model.W_O[k] @ w_tilde  # [H, Dh]   u_h = W_O[h] @ w̃
        z = run["z", k][rows, t]  # [B, H, Dh]
        heads[:, k] = np.einsum("bhd,hd->bh", z, u) / sigma[:, None]  # [B, H]
        attn_bias[:, k] = (model.w[f"h.{k}.attn.c_proj.bias"] @ w_tilde) / sigma  # [B]
    mlp = np.empty((B, layer), np.float32)  # [B, l]
    mlp_neurons = np.empty((B, layer, model.cfg.d_mlp), np.float32) if split_mlp else None  # [B, l, M]
    for k in range(layer):
        mlp[:, k] = through(run["mlp_out", k][rows, t])
        if split_mlp:
            mlp_neurons[:, k] = run["post", k][rows, t] * (model.W_out[k] @ w_tilde) / sigma[:, None]  # [B, M]
    pre = run.neuron(neuron)["pre"][rows, t]  # [B]
    return DirectEffects(neuron, t, sigma, embed, pos_embed, heads, attn_bias, mlp, mlp_neurons, constant, pre)


def head_sources(model: Model, run: Run, neuron: Neuron, head: Head,
                 positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split head h's term over the source positions it attended to.

    Returns (by_source [B, T]: pattern[t, s] · (v[s] − b_V) · u_h / σ_t, zero for s > t and padding;
    b_V share [B]: b_V · u_h / σ_t). by_source.sum(1) + b_V share = the head's term.
    """
    B = run.tokens.shape[0]
    rows = np.arange(B)  # [B]
    t = run.lengths - 1 if positions is None else np.asarray(positions)  # [B]
    w_tilde, _ = read_direction(model, neuron)  # [D]
    sigma = run["ln2_scale", neuron.layer][rows, t]  # [B]
    u = model.W_O[head.layer][head.head] @ w_tilde  # [Dh]
    b_v = model.b_V[head.layer][head.head]  # [Dh]
    value_terms = (run["v", head.layer][:, :, head.head] - b_v) @ u  # [B, T]  (v[s] − b_V) · u
    pattern = run["pattern", head.layer][rows, head.head, t]  # [B, T]  row t of each prompt
    by_source = pattern * value_terms / sigma[:, None]  # [B, T]
    return by_source, (b_v @ u) / sigma  # [B, T], [B]
