"""The ablation check (paper step 5): remove a head everywhere and measure what the neuron loses.

Removing head h replaces its z_h at every position: by 0 (``--scores exact``), or by its constant part
b_V + β₁W_V (``--scores paper``: what zeroing TransformerLens's ``hook_v`` on folded weights does, the
authors' ablation). For each prompt, at its last position: Δpost = post(n) − post(n | h removed) and
Δp = p(token) − p(token | h removed), where token is the neuron's promoted token. A head that switches the
neuron on should show larger drops on the prompts where it is active than where it is not; the two-sample
Kolmogorov–Smirnov statistic D = sup_x |F_active(x) − F_inactive(x)| says how different the drops are.

An ablated head changes nothing before its own layer, so each ablated run starts there from the clean run's
residual stream and unembeds only the last positions (``ablate_heads``); it equals a full rerun with the
head ablated to float32 rounding (``tests/test_ablation.py``).
"""
from __future__ import annotations

import math

import numpy as np

from minitf.model import Intervention, Model, Run
from minitf.names import Head, Neuron
from minitf.kernels import softmax


def ablate_heads(model: Model, prompts: list[list[int]], neuron: Neuron, token: int, heads: list[Head], *,
                 run: Run | None = None, replace_with: dict[Head, np.ndarray] | None = None,
                 ) -> dict[Head, tuple[np.ndarray, np.ndarray]]:
    """Head → (Δpost [P], Δp [P]) when that head's z is zeroed at all positions, or, for a head in
    ``replace_with``, replaced by that vector [Dh] (the paper's way: its constant value part,
    ``attribution.head_value_constant``).

    Only what changes is rerun: each head's run starts at the head's own layer from the clean residual stream
    there (``Model.run(start_layer=…, resid_pre=…)``), records the neuron's activation when its layer is
    reached and unembeds the last position only. ``run``: a clean run of ``prompts`` (e.g. the trace's own)
    whose ``resid_pre`` of the heads' layers and of the neuron's layer, and the neuron's ``post``, are reused;
    without them one clean run records them. Nothing is run when there is no head to ablate.
    """
    if not heads:
        return {}
    L = neuron.layer
    needed = {("resid_pre", k) for k in {h.layer for h in heads} | {L}} | {("post", L)}
    if run is None or not needed <= run.cache.keys():
        run = model.run(prompts, logits="last", keep=needed)
    rows, last = np.arange(len(run.lengths)), run.lengths - 1  # [P], [P]
    base_post = run.neuron(neuron)["post"][rows, last]  # [P]
    if run.logits is None or run.logits.shape != (len(rows), model.cfg.d_vocab):  # stopped early: finish it
        base_logits = _rest(model, run, L).logits
    else:
        base_logits = run.logits
    base_p = softmax(base_logits)[:, token]  # [P]
    out = {}
    for head in heads:
        value = 0.0 if replace_with is None or head not in replace_with else replace_with[head]
        ablated = _rest(model, run, head.layer, [Intervention(str(head), value)], keep={("post", L)})
        post = base_post if head.layer > L else ablated.neuron(neuron)["post"][rows, last]  # [P]
        out[head] = (base_post - post, base_p - softmax(ablated.logits)[:, token])
    return out


def _rest(model: Model, run: Run, layer: int, interventions=(), keep=None) -> Run:
    """Rerun ``run``'s prompts from ``layer`` on, from its recorded resid_pre there; logits at each prompt's
    last position only."""
    return model.run(run.tokens, logits=run.lengths - 1, keep=keep, interventions=interventions,
                     start_layer=layer, resid_pre=run["resid_pre", layer])


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic D = sup |F_a − F_b| and its asymptotic p-value
    p ≈ 2 Σ_k (−1)^(k−1) exp(−2k²λ²), λ = (√nₑ + 0.12 + 0.11/√nₑ) D, nₑ = n_a n_b / (n_a + n_b)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    x = np.concatenate([a, b])
    d = float(np.abs(np.searchsorted(a, x, "right") / a.size - np.searchsorted(b, x, "right") / b.size).max())
    ne = a.size * b.size / (a.size + b.size)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, float(min(1.0, max(0.0, p))) if lam > 0 else 1.0
