"""Names of heads and neurons: ``L{l}H{h}`` and ``L{l}N{n}``, as TransformerLens writes them.

Neuron specs also accept ``10:2345`` and TransformerLens hook names ``blocks.10.mlp.hook_pre[2345]``
(or ``hook_post``). Malformed specs raise ``ValueError`` (a usage error); out-of-range ones raise
``MinitfError`` naming the model's sizes, e.g. "the model has 6 layers (0–5)".
"""
from __future__ import annotations

import re
from typing import NamedTuple

from .errors import MinitfError

_NEURON_FORMS = (
    re.compile(r"^L(\d+)N(\d+)$", re.I),
    re.compile(r"^(\d+):(\d+)$"),
    re.compile(r"^blocks\.(\d+)\.mlp\.hook_(?:pre|post)\[(\d+)\]$"),
)
_HEAD_FORMS = (
    re.compile(r"^L(\d+)H(\d+)$", re.I),
    re.compile(r"^(\d+)\.(\d+)$"),
    re.compile(r"^blocks\.(\d+)\.attn\.hook_\w+\[(\d+)\]$"),
)


class Neuron(NamedTuple):
    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer}N{self.index}"


class Head(NamedTuple):
    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"


def _match(spec: str, forms, what: str, example: str) -> tuple[int, int]:
    for form in forms:
        m = form.match(spec.strip())
        if m:
            return int(m.group(1)), int(m.group(2))
    raise ValueError(f"{spec!r} is not a {what} (write it like {example})")


def _check_layer(layer: int, n_layer: int) -> None:
    if layer >= n_layer:
        raise MinitfError(f"layer {layer} is out of range: the model has {n_layer} layers (0–{n_layer - 1})")


def parse_neuron(spec: str, n_layer: int | None = None, d_mlp: int | None = None) -> Neuron:
    """'L10N2345' | '10:2345' | 'blocks.10.mlp.hook_pre[2345]' → Neuron(10, 2345), range-checked if sizes given."""
    layer, index = _match(spec, _NEURON_FORMS, "neuron", "L10N2345, 10:2345 or blocks.10.mlp.hook_pre[2345]")
    if n_layer is not None:
        _check_layer(layer, n_layer)
    if d_mlp is not None and index >= d_mlp:
        raise MinitfError(f"neuron {index} is out of range: layer {layer} has {d_mlp} neurons (0–{d_mlp - 1})")
    return Neuron(layer, index)


def parse_head(spec: str, n_layer: int | None = None, n_head: int | None = None) -> Head:
    """'L1H10' | '1.10' → Head(1, 10), range-checked if sizes given."""
    layer, head = _match(spec, _HEAD_FORMS, "head", "L1H10")
    if n_layer is not None:
        _check_layer(layer, n_layer)
    if n_head is not None and head >= n_head:
        raise MinitfError(f"head {head} is out of range: the model has {n_head} heads per layer (0–{n_head - 1})")
    return Head(layer, head)
