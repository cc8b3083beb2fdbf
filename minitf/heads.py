"""The paper's selection rules (step 3): which heads are active on a prompt, and which are differential for a
neuron.

Active heads of one prompt, over the candidate heads' direct effects e_1 … e_N (candidates: the heads of
layers < l, as in the paper; optionally layer l too):
    "sigma2": e_h > mean(e) + 2 · std(e), std with N − 1 (the paper's default);
    "top3":   the 3 largest e_h.
Both rules are unchanged when every e_h of a prompt is multiplied by the same σ_t > 0, so they select the
same heads from the paper's σ-less scores as from minitf's σ-divided ones.

What e_h is (``minitf.scores``, see ``minitf.attribution``):
    "paper": each head's context part — the authors' TransformerLens score (value biases folded) / σ_t,
             so the active and differential heads are the paper's (the default);
    "exact": each head's whole term, context + constant part (c_h = b_V + β₁W_V through W_O).

Differential heads of a neuron: active on 25 %–75 % of its prompts (inclusive), so that the prompts split
into an active and an inactive set that an explanation can tell apart. Whatever needs both sets (explaining,
scoring, the ablation's KS test) asks ``both_classes``.
"""
from __future__ import annotations

import numpy as np

from minitf.names import Head

RULES = ("sigma2", "top3")
DIFFERENTIAL_RANGE = (0.25, 0.75)


def candidate_heads(layer: int, n_head: int, include_same_layer: bool = False) -> list[Head]:
    """Heads that may drive a neuron of ``layer``: layers < layer (≤ layer with include_same_layer)."""
    last = layer + 1 if include_same_layer else layer
    return [Head(k, h) for k in range(last) for h in range(n_head)]


def active_mask(effects: np.ndarray, rule: str = "sigma2") -> np.ndarray:
    """effects [P, N] (prompts × candidate heads) → bool [P, N]: the heads active on each prompt."""
    P, N = effects.shape
    if N == 0:
        return np.zeros((P, 0), bool)
    if rule == "sigma2":
        if N < 2:
            return np.zeros((P, N), bool)  # std needs two heads
        threshold = effects.mean(1, keepdims=True) + 2 * effects.std(1, ddof=1, keepdims=True)  # [P, 1]
        return effects > threshold
    if rule == "top3":
        mask = np.zeros((P, N), bool)  # [P, N]
        top = np.argsort(-effects, axis=1, kind="stable")[:, :3]  # [P, ≤3]
        np.put_along_axis(mask, top, True, axis=1)
        return mask
    raise ValueError(f"unknown rule {rule!r}; choose from {RULES}")


def differential(active: np.ndarray, lo: float = DIFFERENTIAL_RANGE[0], hi: float = DIFFERENTIAL_RANGE[1]) -> np.ndarray:
    """active [P, N] → bool [N]: heads active on a fraction of prompts within [lo, hi]."""
    fraction = active.mean(0)  # [N]
    return (fraction >= lo) & (fraction <= hi)


def both_classes(n_active: int, n_inactive: int, prompt: str = "prompt", at_least: int = 1) -> str | None:
    """None when the prompts split into ≥ ``at_least`` active and ≥ ``at_least`` inactive ones; else why not,
    in the one message every check uses (``prompt``: what the prompts are, e.g. "test prompt")."""
    if n_active >= at_least and n_inactive >= at_least:
        return None
    need = "both active and inactive" if at_least == 1 else f"at least {at_least} active and {at_least} inactive"
    n = n_active + n_inactive
    if n == 0:
        got = "there are none"
    elif n_active and n_inactive:
        got = f"{n_active} active, {n_inactive} inactive"
    else:
        state = "active" if n_active else "inactive"
        got = f"all {n} {prompt}s are {state}" if n > 1 else f"the one {prompt} is {state}"
    return f"need {need} {prompt}s: {got}"


# --------------------------------------------------------------------------- the paper's protocols (minitf.protocol)
BANDS = ("25-75", "over-25")
"""Differential bands over n = the neuron's unique prompts and count_h = the prompts on which head h is active:
    "25-75"   (neo2024, src/neuron_explain.py::generate_explanation_prompt_dict): 0.25·n ≤ count_h ≤ 0.75·n
    "over-25" (neo2023, rule read off its stored outputs): count_h > 0.25·n, no upper bound."""


def active_lists(effects: np.ndarray, rule: str = "sigma2") -> list[list[int]]:
    """effects [P, N] → each prompt's active head indices in the authors' order: ascending for "sigma2"
    (``torch.nonzero``), by descending effect for "top3" (``torch.topk``; ties by index)."""
    mask = active_mask(effects, rule)  # [P, N]
    if rule == "top3":
        order = np.argsort(-effects, axis=1, kind="stable")  # [P, N]
        return [[int(h) for h in row if m[h]] for row, m in zip(order, mask)]
    return [[int(h) for h in np.flatnonzero(m)] for m in mask]


def differential_heads(lists: list[list[int]], band: str = "25-75") -> list[int]:
    """The differential heads of a neuron from its prompts' active lists, in the authors' order: the order in
    which heads first appear when the lists are read in prompt order (``collections.Counter``)."""
    counts: dict[int, int] = {}
    for heads in lists:
        for h in heads:
            counts[h] = counts.get(h, 0) + 1
    heads = list(counts)
    keep = in_band(np.array([counts[h] for h in heads], int), len(lists), band)  # [heads seen]
    return [h for h, k in zip(heads, keep) if k]


def in_band(counts: np.ndarray, n: int, band: str = "25-75") -> np.ndarray:
    """counts [N] (prompts on which each head is active, of n) → bool [N]: the heads inside ``band`` (``BANDS``).
    "25-75" equals ``differential``'s 25 %–75 % of the prompts exactly (0.25·n and 0.75·n are exact floats)."""
    if band == "25-75":
        return (0.25 * n <= counts) & (counts <= 0.75 * n)
    if band == "over-25":
        return counts > 0.25 * n
    raise ValueError(f"unknown band {band!r}; choose from {BANDS}")
