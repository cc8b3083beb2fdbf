"""What a forward pass takes and returns: prompts padded into one batch, interventions, and the ``Run`` with
the internals it recorded (``minitf.model`` holds the forward pass itself)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from minitf.errors import MinitfError
from minitf.names import Head, Neuron, parse_head, parse_neuron


@dataclass(frozen=True)
class Intervention:
    """Zero or replace a head's z or a neuron's activation during a run.

    target: ``"L3H5"`` — a head: ``value`` replaces z_h (its output is z_h W_O[h]; 0 zeroes the head);
            ``"L4N100"`` — a neuron: ``value`` replaces its post-GELU activation.
    value: a number, or an array broadcastable to [B, T_sel, Dh] (head) / [B, T_sel] (neuron).
    positions: the positions to change; None means all.
    """

    target: str
    value: float | np.ndarray = 0.0
    positions: Sequence[int] | None = None


@dataclass
class Run:
    """What a forward pass returns: padded tokens, per-prompt lengths, logits and recorded internals.

    ``run["pre", 3]`` is layer 3's MLP pre-activation [B, T, M]; ``run["ln_f_scale"]`` the final LN scale.
    ``run.head("L3H5")`` and ``run.neuron("L4N100")`` slice one head's / neuron's internals.
    """

    tokens: np.ndarray  # [B, T] int64, right-padded with 0
    lengths: np.ndarray  # [B]
    logits: np.ndarray | None  # [B, T, V] ("all"), [B, V] (one position per prompt) or None
    cache: dict = field(default_factory=dict)  # (name, layer) → array; ("ln_f_scale", None) → [B, T]
    neuron_columns: dict = field(default_factory=dict)  # layer → neuron indices when stop_neurons was used

    def __getitem__(self, key):
        name, layer = (key, None) if isinstance(key, str) else key
        try:
            return self.cache[name, layer]
        except KeyError:
            raise KeyError(f"{name!r} of layer {layer} was not recorded: pass keep={{{name!r}}}") from None

    def head(self, spec: str | Head) -> dict[str, np.ndarray]:
        """One head's q, k, v, z [B, T, Dh], pattern [B, T, T], head_out [B, T, D] — those recorded."""
        h = spec if isinstance(spec, Head) else parse_head(spec)
        out = {name: self.cache[name, h.layer][:, :, h.head] for name in ("q", "k", "v", "z", "head_out")
               if (name, h.layer) in self.cache}
        if ("pattern", h.layer) in self.cache:
            out["pattern"] = self.cache["pattern", h.layer][:, h.head]
        return out

    def neuron(self, spec: str | Neuron) -> dict[str, np.ndarray]:
        """One neuron's pre and post activations [B, T] — those recorded."""
        n = spec if isinstance(spec, Neuron) else parse_neuron(spec)
        cols = self.neuron_columns.get(n.layer)
        col = n.index if cols is None else list(cols).index(n.index)
        return {name: self.cache[name, n.layer][..., col] for name in ("pre", "post") if (name, n.layer) in self.cache}


class Recorder:
    """Stores an internal in the run's cache when it was asked for; returns it either way."""

    def __init__(self, keep: set, cache: dict):
        self.keep, self.cache = keep, cache

    def wants(self, name: str, layer: int | None = None) -> bool:
        return name in self.keep or (name, layer) in self.keep

    def __call__(self, name: str, layer: int | None, value):
        if value is not None and self.wants(name, layer):
            self.cache[name, layer] = value
        return value


def pad(tokens, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts → ([B, T] int64 right-padded with 0, lengths [B]). Errors on empty or over-long prompts."""
    if isinstance(tokens, np.ndarray) and tokens.ndim == 2:
        prompts = list(tokens)
    else:
        prompts = [tokens] if len(tokens) and np.ndim(tokens[0]) == 0 else list(tokens)
    if not prompts:
        raise MinitfError("no prompts to run")
    lengths = np.array([len(p) for p in prompts], dtype=np.int64)  # [B]
    if lengths.min() == 0:
        raise MinitfError("empty prompt: a prompt needs at least one token")
    if lengths.max() > n_ctx:
        raise MinitfError(f"prompt of {lengths.max()} tokens is longer than the model's context of {n_ctx}")
    out = np.zeros((len(prompts), lengths.max()), dtype=np.int64)  # [B, T]
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return out, lengths


TRACE_BATCH_BYTES = 128 << 20  # the forward-pass arrays one trace batch may hold (a single longer prompt: alone)


def trace_batches(model, neuron, tokens: list[list[int]]) -> list[list[int]]:
    """Consecutive prompts in batches whose kept arrays fit TRACE_BATCH_BYTES, by the estimate for B prompts
    padded to T tokens, through layers 0 … l of the neuron's layer l:

        bytes ≈ 4 · B · (l + 1) · T · (H · T + 8 · d_model + 2 · d_mlp)     attention patterns + activations

    so a trace holds at most one batch's arrays (≈ 128 MiB) at once, plus each prompt's record (a few KB)
    and the per-head arrays [P, N] (12 bytes per prompt and candidate head)."""
    cfg = model.cfg
    cost = lambda B, T: 4 * B * (neuron.layer + 1) * T * (cfg.n_head * T + 8 * cfg.d_model + 2 * cfg.d_mlp)  # noqa: E731
    batches: list[list[int]] = []
    longest = 0
    for i, t in enumerate(tokens):
        if batches and cost(len(batches[-1]) + 1, max(longest, len(t))) <= TRACE_BATCH_BYTES:
            batches[-1].append(i)
            longest = max(longest, len(t))
        else:
            batches.append([i])
            longest = len(t)
    return batches
