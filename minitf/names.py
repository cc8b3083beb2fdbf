"""Names of heads and neurons: ``L{l}H{h}`` and ``L{l}N{n}``, as TransformerLens writes them.

Neuron specs also accept ``10:2345`` and TransformerLens hook names ``blocks.10.mlp.hook_pre[2345]``
(or ``hook_post``); layer lists are ``3``, ``3,5`` or ``2-4``. Malformed specs raise ``ValueError`` (a usage
error); out-of-range ones raise ``MinitfError`` naming the model's sizes, e.g. "the model has 6 layers (0–5)".
Every check of a layer, head or neuron number against the model's sizes in minitf is one of these three:
``check_layer``, ``check_neuron``, ``check_head``.
"""
from __future__ import annotations

import re
from typing import Iterable, NamedTuple

from minitf.errors import MinitfError

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


def _out_of_range(where: str, problem: str, param: str | None = None) -> MinitfError:
    return MinitfError(f"{where}: {problem}" if where else problem, param=param)


def check_layer(layer: int, n_layer: int, where: str = "", param: str | None = None) -> int:
    """``0 ≤ layer < n_layer``, else MinitfError "[where: ]layer 7 is out of range: the model has 6 layers (0–5)"."""
    if not 0 <= layer < n_layer:
        raise _out_of_range(where, f"layer {layer} is out of range: the model has {n_layer} layers (0–{n_layer - 1})",
                            param)
    return layer


def _check_index(layer: int, index: int, n_layer: int | None, size: int | None, where: str, kind: str,
                 sizes: str) -> None:
    """The layer, then ``0 ≤ index < size``; ``sizes`` says what has them, e.g. "layer 1 has {n} neurons"."""
    if n_layer is not None:
        check_layer(layer, n_layer, where)
    if size is not None and not 0 <= index < size:
        raise _out_of_range(where, f"{kind} {index} is out of range: {sizes.format(n=size)} (0–{size - 1})")


def check_neuron(neuron: Neuron, n_layer: int | None, d_mlp: int | None, where: str = "") -> Neuron:
    """The neuron's layer and index in range, for the sizes given (else MinitfError naming the model's sizes)."""
    _check_index(neuron.layer, neuron.index, n_layer, d_mlp, where, "neuron",
                 f"layer {neuron.layer} has {{n}} neurons")
    return neuron


def check_head(head: Head, n_layer: int | None, n_head: int | None, where: str = "") -> Head:
    """The head's layer and index in range, for the sizes given (else MinitfError naming the model's sizes)."""
    _check_index(head.layer, head.head, n_layer, n_head, where, "head", "the model has {n} heads per layer")
    return head


def parse_neuron(spec: str, n_layer: int | None = None, d_mlp: int | None = None) -> Neuron:
    """'L10N2345' | '10:2345' | 'blocks.10.mlp.hook_pre[2345]' → Neuron(10, 2345), range-checked if sizes given."""
    neuron = Neuron(*_match(spec, _NEURON_FORMS, "neuron", "L10N2345, 10:2345 or blocks.10.mlp.hook_pre[2345]"))
    return check_neuron(neuron, n_layer, d_mlp)


def parse_head(spec: str, n_layer: int | None = None, n_head: int | None = None) -> Head:
    """'L1H10' | '1.10' → Head(1, 10), range-checked if sizes given."""
    return check_head(Head(*_match(spec, _HEAD_FORMS, "head", "L1H10")), n_layer, n_head)


_LAYER_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


MAX_LAYER = 1000  # the largest layer number parse_layers accepts (GPT-2 XL has 48 layers)


def parse_layers(specs: str | Iterable[str], n_layer: int | None = None, where: str = "") -> list[int]:
    """'3' | '3,5' | '2-4' (or several of them, or space-separated) → sorted distinct layer numbers.

    A malformed part or a reversed range ('4-2') raises ValueError; with ``n_layer``
    each layer is range-checked (``check_layer``). A layer above ``MAX_LAYER`` (no model has that many)
    is refused before the range is built, so '0-2000000000' costs nothing.
    """
    layers: set[int] = set()
    for spec in [specs] if isinstance(specs, str) else specs:
        for part in str(spec).replace(" ", ",").split(","):
            if not part:
                continue
            m = _LAYER_PART.match(part)
            first, last = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (1, 0)
            if not m:
                raise ValueError(f"{part!r}: not a layer (write layers like 3, 3,5 or 2-4)")
            if first > last:
                raise ValueError(f"{part}: reversed range (write {last}-{first})")
            if last > MAX_LAYER:
                raise ValueError(f"{part}: layer {last} is above {MAX_LAYER}, the most any model here has")
            layers |= set(range(first, last + 1))
    if n_layer is not None:
        for layer in sorted(layers):
            check_layer(layer, n_layer, where)
    return sorted(layers)
