"""A head's effect on a neuron by path: direct, through each later component, in total (path-specific ablation).

The paper's ablation removes head h everywhere, which removes every path from h to neuron n at once. Here each
path is removed alone. Neuron n sits in layer l and is read at each prompt's last position t; head h sits in
layer k ≤ l. Every Δ is clean − removed (a drop: positive when h pushes the value up), as in ``minitf.ablation``.

What h's output becomes when it is removed. z_h [B, T, Dh] is replaced by z̃_h at every position, with r_h the
part kept — 0 (``--scores exact``: the whole output goes) or the constant value part c_h = b_V + β₁W_V
(``--scores paper``, ``replace_with``: only the context part goes, as the paper's ablation removes it):

    zero ablation:  z̃_h = r_h
    mean ablation:  z̃_h = r_h + ⟨z_h − r_h⟩,   ⟨·⟩ = the mean over every real (unpadded) position of every prompt
                    (the neuron's prompts, all positions, one vector [Dh]; c_h is constant, so ⟨·⟩ is ⟨z_h⟩ in
                    both scores modes: mean ablation of the whole output and of its context part coincide)
    δ_h = (z_h − z̃_h) W_O[h]   [B, T, D]   the output removed, present in every residual stream after layer k

Let x_mid^j, x_pre^j be the clean residual streams at layer j (what MLP j and attention j read), pre(·) the
neuron's pre-activation read from an x_mid^l, post = gelu_new(pre), p the probability of ``token`` at t.

* direct, recomputed: n alone reads x_mid^l − δ_h (at every position; everything else, the other neurons of MLP
  l included, keeps h):  Δpre = pre(x_mid^l) − pre(x_mid^l − δ_h) at t, LN₂ recomputed, and Δpost likewise.
  Δp through n alone: n's change at every position, Δpost_s · W_out[n], is taken out of resid_post^l and only it
  runs through layers l+1 … L−1:  Δp = p − p(resid_post^l − Δpost ⊗ W_out[n]).
* direct, frozen: LN₂'s σ_t frozen at its clean value, which makes pre linear in its input
  (``minitf.attribution``): Δpre = δ_h[t] · w̃ / σ_t = (z_h − z̃_h)[t] · u_h / σ_t, u_h = W_O[h] w̃ — exactly the
  head's term (zero ablation) or its context part (``--scores paper``); Δpost = post − gelu_new(pre − Δpre).
  (The issue's "minus the head's term" is the same number as a change removed − clean.)
* via MLP j (k ≤ j < l): MLP j alone reads x_mid^j − δ_h (at every position); every component downstream of MLP
  j sees MLP j's changed output, and n reads it; every other input keeps h: Δpre = pre − pre(with MLP j's input
  without h), Δpost likewise. This is the set of paths whose *first* stop after h is MLP j (h → MLP j → n,
  h → MLP j → later heads or MLPs → n) — what subtracting h's output at TransformerLens's ``blocks.j.hook_mlp_in``
  does. (So a path h → MLP j → MLP j' → n counts under MLP j only.)
* via the heads of layer j (k < j ≤ l): the attention of layer j alone reads x_pre^j − δ_h (queries, keys and
  values), its output changes and everything downstream sees it: the paths whose first stop is a head of layer j.
* total: h removed everywhere (``Model.run`` with an ``Intervention``; ``minitf.ablation``'s measurement):
  Δpre, Δpost and Δp.
* rest = total − direct − Σ_j via MLP j − Σ_j via heads j: the first stops after h partition every path from h
  to n, so the chain rule splits the first-order change exactly over them; what is left is second order in δ_h
  (the interactions of paths through LayerNorm, GELU and softmax): rest(εδ) = O(ε²) (``tests/test_paths.py``
  checks that halving ε quarters it). Without the heads' paths (``via_heads=False``) rest holds them too.
* mediated fraction: Σ_prompts direct / Σ_prompts total, of Δpost and of Δp (None where the total sums to 0):
  the share of the paper's ablation effect that the head carries straight to the neuron.
* joint: every listed head removed at once vs the sum of each removed alone; interaction = joint − Σ alone.

Cost per head: the direct path one LN₂ of layer l and one run of layers l+1 …; each path via MLP j one MLP and
layers j+1 … l; each path via heads j layers j … l; the total layers k … (the ablation's own rerun); and once,
a clean run from the earliest head's layer that records the residual streams.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minitf.attribution import read_direction
from minitf.kernels import gelu_new, linear
from minitf.model import Intervention, Model, Run
from minitf.names import Head, Neuron
from minitf.kernels import softmax
from minitf.runs import Recorder

ABLATE_WITH = ("zero", "mean")


# ---- the records ----------------------------------------------------------------------------------------
def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def _ratio(num: np.ndarray, den: np.ndarray) -> float | None:
    """Σ num / Σ den (a ratio of means over the same prompts); None with no prompts or a zero denominator."""
    d = float(np.sum(den, dtype=np.float64))
    return float(np.sum(num, dtype=np.float64)) / d if num.size and d != 0.0 else None


@dataclass(frozen=True)
class Effect:
    """One path's effect on the neuron at each prompt's last position: Δ = clean − with the path removed.
    ``d_p`` (Δp(token)) is None where the path's effect on p is not measured."""

    d_pre: np.ndarray  # [P]
    d_post: np.ndarray  # [P]
    d_p: np.ndarray | None = None  # [P]

    def __sub__(self, other: "Effect") -> "Effect":
        d_p = None if self.d_p is None or other.d_p is None else self.d_p - other.d_p
        return Effect(self.d_pre - other.d_pre, self.d_post - other.d_post, d_p)

    def __add__(self, other: "Effect") -> "Effect":
        d_p = None if self.d_p is None or other.d_p is None else self.d_p + other.d_p
        return Effect(self.d_pre + other.d_pre, self.d_post + other.d_post, d_p)

    def to_json(self, active: np.ndarray | None = None, per_prompt: bool = False) -> dict:
        """{"mean_dpre", "mean_dpost", "mean_dp"} (None when not measured), each also over the prompts where
        the head is ``active`` [P] and where it is not ("…_active", "…_inactive"); ``per_prompt`` adds the lists
        "dpre", "dpost", "dp"."""
        out = {}
        for name, x in (("dpre", self.d_pre), ("dpost", self.d_post), ("dp", self.d_p)):
            out[f"mean_{name}"] = None if x is None else _mean(x)
            if active is not None:
                out[f"mean_{name}_active"] = None if x is None else _mean(x[active])
                out[f"mean_{name}_inactive"] = None if x is None else _mean(x[~active])
        if per_prompt:
            out.update({name: None if x is None else x.tolist() for name, x in
                        (("dpre", self.d_pre), ("dpost", self.d_post), ("dp", self.d_p))})
        return out


@dataclass(frozen=True)
class MediatedFraction:
    """direct / total (Σ over the prompts of each): of Δpost and of Δp; None where the total sums to 0."""

    d_post: float | None
    d_p: float | None

    def to_json(self) -> dict:
        return {"dpost": self.d_post, "dp": self.d_p}


@dataclass(frozen=True)
class HeadPaths:
    """Head h's effect on the neuron split by path (see the module's formulas). ``via_mlp[k]``: the paths whose
    first stop after h is MLP k; ``via_heads[j]``: those through the heads of layer j first (empty when not
    computed); ``direct``: recomputed LN₂, Δp through the neuron alone; ``direct_frozen``: σ frozen, no Δp."""

    head: Head
    direct: Effect
    direct_frozen: Effect
    via_mlp: dict[int, Effect]
    via_heads: dict[int, Effect]
    total: Effect

    @property
    def rest(self) -> Effect:
        """total − direct − Σ via: second order in h's output (interactions), plus the heads' paths when
        ``via_heads`` is empty; no Δp."""
        rest = self.total - self.direct
        for e in (*self.via_mlp.values(), *self.via_heads.values()):
            rest = rest - e
        return Effect(rest.d_pre, rest.d_post)

    def mediated_fraction(self, mask: np.ndarray | None = None) -> MediatedFraction:
        """direct / total over all prompts or those in ``mask`` [P]."""
        m = slice(None) if mask is None else mask
        return MediatedFraction(_ratio(self.direct.d_post[m], self.total.d_post[m]),
                                _ratio(self.direct.d_p[m], self.total.d_p[m]))

    def largest_mlps(self, n: int = 3) -> list[int]:
        """The layers of the ``n`` MLPs with the largest |mean Δpost| through them, largest first."""
        return sorted(self.via_mlp, key=lambda k: -abs(float(self.via_mlp[k].d_post.mean())))[:n]

    def to_json(self, active: np.ndarray | None = None, per_prompt: bool = False) -> dict:
        """{"head", "direct": {"recomputed", "frozen"}, "via_mlp": [{"layer", …effect}], "via_heads": [...],
        "total", "rest", "mediated_fraction": {"dpost", "dp"} (+ "_active"/"_inactive" splits with ``active``),
        "largest_mlps": [layer, …]}; each effect as ``Effect.to_json``."""
        def effect(e):
            return e.to_json(active, per_prompt)

        out = {"head": str(self.head),
               "direct": {"recomputed": effect(self.direct), "frozen": effect(self.direct_frozen)},
               "via_mlp": [{"layer": k, **effect(e)} for k, e in sorted(self.via_mlp.items())],
               "via_heads": [{"layer": j, **effect(e)} for j, e in sorted(self.via_heads.items())],
               "total": effect(self.total), "rest": effect(self.rest),
               "mediated_fraction": self.mediated_fraction().to_json(),
               "largest_mlps": self.largest_mlps()}
        if active is not None:
            out["mediated_fraction_active"] = self.mediated_fraction(active).to_json()
            out["mediated_fraction_inactive"] = self.mediated_fraction(~active).to_json()
        return out


@dataclass(frozen=True)
class JointEffect:
    """Every listed head removed at once vs the sum of each removed alone (their totals)."""

    heads: tuple[Head, ...]
    joint: Effect
    sum_alone: Effect

    @property
    def interaction(self) -> Effect:
        """joint − Σ alone: what removing the heads together does beyond their separate effects."""
        return self.joint - self.sum_alone

    def to_json(self, per_prompt: bool = False) -> dict:
        return {"heads": [str(h) for h in self.heads], "joint": self.joint.to_json(per_prompt=per_prompt),
                "sum_alone": self.sum_alone.to_json(per_prompt=per_prompt),
                "interaction": self.interaction.to_json(per_prompt=per_prompt)}


@dataclass(frozen=True)
class PathAnalysis:
    """``head_paths``'s answer: each head's ``HeadPaths`` and, for two heads or more, the ``JointEffect``.
    ``removal``: "zero" (z_h ← 0), "replaced" (z_h ← ``replace_with``, the paper's constant part) or "mean"."""

    neuron: Neuron
    token: int
    removal: str
    heads: list[HeadPaths] = field(default_factory=list)
    joint: JointEffect | None = None

    def to_json(self, active: dict[Head, np.ndarray] | None = None, per_prompt: bool = False) -> dict:
        """{"neuron", "token", "removal", "heads": [HeadPaths.to_json], "joint": JointEffect.to_json | None};
        ``active`` maps a head to its active prompts [P] for the active/inactive splits."""
        active = active or {}
        return {"neuron": str(self.neuron), "token": int(self.token), "removal": self.removal,
                "heads": [hp.to_json(active.get(hp.head), per_prompt) for hp in self.heads],
                "joint": None if self.joint is None else self.joint.to_json(per_prompt)}


# ---- the computation ------------------------------------------------------------------------------------
def head_paths(model: Model, run: Run, neuron: Neuron, token: int, heads: list[Head], *,
               replace_with: dict[Head, np.ndarray] | None = None, ablate_with: str = "zero",
               via_heads: bool = True, joint: bool = True) -> PathAnalysis:
    """Each head's effect on ``neuron`` by path, at each prompt's last position (the module's formulas).

    run: a clean run of the prompts (its tokens and lengths are used; its ``resid_pre`` of the earliest head's
        layer, e.g. the trace's run, saves running the layers before it again).
    heads: heads of layers ≤ the neuron's. replace_with: head → the z_h part kept when removing it, [Dh] (the
        paper's constant part, ``attribution.head_value_constant``) or [B, T, Dh]; others are zeroed.
    ablate_with: "zero" — z_h ← the part kept; "mean" — plus the mean of the part removed.
    via_heads: also the paths through later heads (layers k+1 … l), which cost a rerun each.
    joint: with two heads or more, also remove them all at once.
    """
    if ablate_with not in ABLATE_WITH:
        raise ValueError(f"ablate_with {ablate_with!r}: choose from {ABLATE_WITH}")
    removal = "mean" if ablate_with == "mean" else "replaced" if replace_with else "zero"
    if not heads:
        return PathAnalysis(neuron, token, removal)
    if late := [str(h) for h in heads if h.layer > neuron.layer]:
        raise ValueError(f"heads {late} come after {neuron}'s layer: no path leads from them to it")
    c = _Clean(model, run, neuron, min(h.layer for h in heads), {h.layer for h in heads})
    kept = {h: _removed_z(c, h, (replace_with or {}).get(h, 0.0), ablate_with) for h in heads}  # z̃_h
    out = [_one_head(c, h, kept[h], token, via_heads) for h in heads]
    joint_effect = None
    if joint and len(heads) > 1:
        removed = c.rerun_removed([Intervention(str(h), kept[h]) for h in heads], min(h.layer for h in heads), token)
        alone = out[0].total
        for hp in out[1:]:
            alone = alone + hp.total
        joint_effect = JointEffect(tuple(heads), removed, alone)
    return PathAnalysis(neuron, token, removal, out, joint_effect)


class _Clean:
    """The clean run's internals the paths start from, and the neuron's value read from a residual stream."""

    def __init__(self, model: Model, run: Run, neuron: Neuron, first: int, head_layers: set[int]):
        self.model, self.neuron, self.l = model, neuron, neuron.layer
        self.tokens, self.lengths = run.tokens, run.lengths
        self.P = len(run.lengths)
        self.rows, self.t = np.arange(self.P), run.lengths - 1  # [P], [P]
        l = self.l
        keep = ({("resid_pre", j) for j in range(first, l + 1)} | {("resid_mid", j) for j in range(first, l + 1)}
                | {("z", k) for k in head_layers} | {("resid_post", l), ("ln2_scale", l)})
        start = first if first and ("resid_pre", first) in run.cache else 0
        self.run = model.run(self.tokens, logits=self.t, keep=keep, start_layer=start,
                             resid_pre=run["resid_pre", start] if start else None)  # from the earliest head's layer
        self.w_in, self.b_in = model.W_in[l][:, neuron.index], model.w[f"h.{l}.mlp.c_fc.bias"][neuron.index]  # [D]
        self.w_out = model.W_out[l][neuron.index]  # [D]
        self.w_tilde, _ = read_direction(model, neuron)  # [D]
        self.sigma = self.run["ln2_scale", l][self.rows, self.t]  # [P]
        self.pre_all = self.pre(self.run["resid_mid", l])  # [P, T]  the clean value at every position
        self.pre_t = self.pre_all[self.rows, self.t]  # [P]
        self.post_t = gelu_new(self.pre_t)  # [P]
        self.logits = self.run.logits  # [P, V]
        self.rec = Recorder(set(), {})  # records nothing

    def pre(self, x_mid: np.ndarray) -> np.ndarray:
        """The neuron's pre-activation read from resid_mid x [..., D]: LN₂(x) · W_in[:, n] + b_in[n]  [...]."""
        return self.model.ln(x_mid, f"h.{self.l}.ln_2")[0] @ self.w_in + self.b_in

    def effect_at_t(self, x_mid_t: np.ndarray) -> Effect:
        """Δpre, Δpost of the neuron when it reads x_mid_t [P, D] at the last positions instead of the clean one."""
        pre = self.pre(x_mid_t)  # [P]
        return Effect(self.pre_t - pre, self.post_t - gelu_new(pre))

    def to_neuron(self, x_post: np.ndarray, layer: int) -> np.ndarray:
        """The neuron's resid_mid at the last positions [P, D] when resid_post of ``layer`` (< l) is x_post."""
        r = self.model.run(self.tokens, logits=None, keep={("resid_mid", self.l)}, start_layer=layer + 1,
                           resid_pre=x_post, stop_at_layer=self.l, stop_neurons=[self.neuron.index])
        return r["resid_mid", self.l][self.rows, self.t]  # [P, D]

    def p_token(self, logits: np.ndarray, token: int) -> np.ndarray:
        return softmax(logits)[:, token]  # [P]

    def logits_from_post(self, x_post: np.ndarray) -> np.ndarray:
        """Logits at the last positions [P, V] when the neuron's layer's resid_post is x_post [P, T, D]."""
        model, l = self.model, self.l
        if l + 1 < model.cfg.n_layer:
            return model.run(self.tokens, logits=self.t, start_layer=l + 1, resid_pre=x_post).logits
        return linear(model.ln(x_post[self.rows, self.t], "ln_f")[0], model.W_U)

    def rerun_removed(self, interventions: list[Intervention], layer: int, token: int) -> Effect:
        """The total effect: a rerun from ``layer`` with the interventions (every path removed)."""
        r = self.model.run(self.tokens, logits=self.t, keep={("resid_mid", self.l)}, interventions=interventions,
                           start_layer=layer, resid_pre=self.run["resid_pre", layer] if layer else None)
        e = self.effect_at_t(r["resid_mid", self.l][self.rows, self.t])
        return Effect(e.d_pre, e.d_post, self.p_token(self.logits, token) - self.p_token(r.logits, token))


def _removed_z(c: _Clean, head: Head, kept, ablate_with: str) -> np.ndarray:
    """z̃_h: the part kept r_h (zero ablation), plus ⟨z_h − r_h⟩ over every real position (mean ablation)."""
    kept = np.asarray(kept, np.float32)  # [], [Dh] or [B, T, Dh]
    if ablate_with == "zero":
        return kept
    z = c.run["z", head.layer][:, :, head.head]  # [B, T, Dh]
    real = np.arange(z.shape[1]) < c.lengths[:, None]  # [B, T]
    removed = np.broadcast_to(z - kept, z.shape)[real]  # [N, Dh]  every real position
    return (kept + removed.mean(0, dtype=np.float64)).astype(np.float32)  # [Dh] or [B, T, Dh]


def _one_head(c: _Clean, head: Head, z_removed: np.ndarray, token: int, via_heads: bool) -> HeadPaths:
    model, l, k = c.model, c.l, head.layer
    rows, t = c.rows, c.t
    dz = c.run["z", k][:, :, head.head] - z_removed  # [B, T, Dh]  z_h − z̃_h
    W_O = model.W_O[k][head.head]  # [Dh, D]
    delta = linear(dz, W_O)  # [B, T, D]  δ_h: the output removed

    # direct, σ frozen: δ_h[t] · w̃ / σ_t = (z_h − z̃_h)[t] · u_h / σ_t
    d_pre = (dz[rows, t] @ (W_O @ c.w_tilde)) / c.sigma  # [P]
    direct_frozen = Effect(d_pre, c.post_t - gelu_new(c.pre_t - d_pre))
    # direct, LN₂ recomputed; n's change at every position carried alone through the later layers
    pre_all = c.pre(c.run["resid_mid", l] - delta)  # [B, T]
    d_post_all = gelu_new(c.pre_all) - gelu_new(pre_all)  # [B, T]
    logits = c.logits_from_post(c.run["resid_post", l] - d_post_all[..., None] * c.w_out)  # [P, V]
    direct = Effect(c.pre_t - pre_all[rows, t], d_post_all[rows, t],
                    c.p_token(c.logits, token) - c.p_token(logits, token))

    via_mlp = {}
    for j in range(k, l):  # MLP j alone reads resid_mid − δ_h; its output goes on to everything after it
        x_mid = c.run["resid_mid", j]  # [B, T, D]
        x_post = x_mid + model.mlp(j, x_mid - delta, (), c.rec)  # [B, T, D]
        via_mlp[j] = c.effect_at_t(c.to_neuron(x_post, j))
    via_attn = {}
    for j in range(k + 1, l + 1) if via_heads else ():  # layer j's heads alone read resid_pre − δ_h
        x_pre = c.run["resid_pre", j]  # [B, T, D]
        x_mid = x_pre + model.attention(j, x_pre - delta, (), c.rec)  # [B, T, D]
        if j == l:
            via_attn[j] = c.effect_at_t(x_mid[rows, t])
        else:
            via_attn[j] = c.effect_at_t(c.to_neuron(x_mid + model.mlp(j, x_mid, (), c.rec), j))
    total = c.rerun_removed([Intervention(str(head), z_removed)], k, token)
    return HeadPaths(head, direct, direct_frozen, via_mlp, via_attn, total)
