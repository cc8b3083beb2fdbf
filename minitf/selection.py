"""Which next-token neurons a study takes (step 1), by the protocols of ``minitf.protocol``: the authors' walk
(``src/neuron_texts.py::find_neurons``: skip a neuron whose best token fails their filter), minitf's filtered
argmax, and the authors' random-neuron baseline (notebook 1's ``find_random_neurons``), each over the
congruence tables of ``minitf.neurons``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minitf.errors import MinitfError
from minitf.names import Neuron
from minitf.neurons import _check_layer, _token_str, layer_scores


@dataclass(frozen=True)
class NextTokenNeuron:
    """A selected neuron: its token (id and text) and congruence, as the protocol's walk found them."""

    neuron: Neuron
    token_id: int
    token: str
    congruence: float


@dataclass(frozen=True)
class NeuronSelection:
    """The neurons a walk selected (layer order, then selection order), and the reject-list neurons it met
    and skipped on the way (only those met before the quota was filled, as the authors record them)."""

    neurons: list[NextTokenNeuron]
    rejected: list[NextTokenNeuron]
    walk: str


def authors_token_ok(s: str) -> bool:
    """The authors' test on a decoded token (``find_neurons``: skip iff ``len(s) <= 2 or s[0] != " "``)."""
    return len(s) >= 3 and s[0] == " "


def _by_congruence(cong: np.ndarray) -> np.ndarray:
    """Neuron indices by descending congruence, ties by index (torch.topk leaves ties unspecified)."""
    return np.lexsort((np.arange(cong.size), -cong))  # [M]


def next_token_neurons(model, layers, per_layer: int, walk: str = "skip", reject=frozenset()) -> NeuronSelection:
    """``per_layer`` next-token neurons of each of ``layers``, by the protocol's ``walk``:

    "skip" (the authors' ``src/neuron_texts.py::find_neurons``): congruence_n = max_t s_n[t] and token_n =
        argmax_t s_n[t] over *all* tokens; the neurons are walked by descending congruence and a neuron is
        skipped when its token fails ``authors_token_ok`` (no fallback to its second-best token) or when
        (layer, n) is in ``reject`` (then recorded in ``rejected``);
    "filtered-argmax" (minitf): congruence and token maximised over the tokens ``allowed_token`` keeps, the
        neurons walked by that; ``reject`` skips likewise.

    Fewer than ``per_layer`` come back for a layer only when its neurons run out.
    """
    if per_layer < 1:
        raise MinitfError(f"per_layer={per_layer}: must be at least 1")
    if walk not in ("skip", "filtered-argmax"):
        raise ValueError(f"unknown walk {walk!r}; choose skip or filtered-argmax")
    reject = {(int(a), int(b)) for a, b in reject}
    chosen, rejected = [], []
    for layer in layers:
        _check_layer(model, layer)
        scores = layer_scores(model, layer, filter=walk == "filtered-argmax")
        cong, tok = scores.pick(walk == "filtered-argmax")
        found = 0
        for n in _by_congruence(cong):
            if not np.isfinite(cong[n]):
                break  # no allowed token at all (filtered-argmax): the rest are the same
            s = _token_str(model, int(tok[n]))
            if walk == "skip" and not authors_token_ok(s):
                continue
            entry = NextTokenNeuron(Neuron(layer, int(n)), int(tok[n]), s, float(cong[n]))
            if (layer, int(n)) in reject:
                rejected.append(entry)
                continue
            chosen.append(entry)
            found += 1
            if found >= per_layer:
                break
    return NeuronSelection(chosen, rejected, walk)


def find_random_neurons(model, layers, per_layer: int, seed: int = 0) -> NeuronSelection:
    """The paper's random-neuron baseline (notebooks/1_find_neurons.ipynb ``find_random_neurons``): per layer,
    ``per_layer`` neurons drawn uniformly without replacement (the authors draw a rank i of the congruence
    order and take that neuron; here i ~ rng.choice(M, per_layer, replace=False) with
    ``np.random.default_rng(seed)`` — theirs is unseeded and its inclusive ``randint(0, M)`` can crash);
    token = argmax over all tokens, no filter, no reject list. Draw order is kept."""
    if per_layer < 1:
        raise MinitfError(f"per_layer={per_layer}: must be at least 1")
    rng = np.random.default_rng(seed)
    chosen = []
    for layer in layers:
        _check_layer(model, layer)
        scores = layer_scores(model, layer, filter=False)
        order = _by_congruence(scores.congruence_all)  # [M] rank → neuron
        for rank in rng.choice(order.size, size=min(per_layer, order.size), replace=False):
            n = int(order[rank])
            t = int(scores.token_all[n])
            chosen.append(NextTokenNeuron(Neuron(layer, n), t, _token_str(model, t), float(scores.congruence_all[n])))
    return NeuronSelection(chosen, [], "random")


@dataclass
class NeuronTables:
    """The ``neurons`` command's tables: per layer the selected neurons' cards (``neurons.neuron_card`` dicts) in
    selection order; ``protocol`` (with ``--exclude`` recorded as an override), the token ``rule`` in words, the
    reject list that applied (``reject``: its one-line note) and the neurons it skipped."""

    protocol: object  # minitf.protocol.Protocol
    tables: dict[int, list[dict]]
    rule: str
    reject: object  # minitf.protocol.RejectMatch
    rejected: list[NextTokenNeuron]
    random: bool = False
    min_count: int = 0

    def to_json(self, model) -> dict:
        return {"model": str(model.folder), "protocol": self.protocol.describe(), "filter": self.rule,
                "min_count": self.min_count,
                "exclude": self.reject.note, "rejected": [str(x.neuron) for x in self.rejected],
                "random": self.random, "layers": {str(layer): rows for layer, rows in self.tables.items()}}


def neuron_tables(model, layers, top: int = 10, k: int = 5, protocol=None, exclude: str | None = None,
                  filter: bool = True, min_count: int = 0, corpus=None, random_neurons: int = 0,
                  seed: int = 0) -> NeuronTables:
    """``top`` next-token neurons of each of ``layers`` (k tokens per card) by the protocol's ``neuron_walk``
    ("skip": ``next_token_neurons``, cards over all tokens; "filtered-argmax": ``neurons.layer_table``, cards over
    the allowed tokens — ``filter``/``min_count`` apply only to it), the protocol's reject list unless
    ``exclude`` ("paper" | "none") overrides it; or ``random_neurons`` per layer by ``find_random_neurons``."""
    from minitf.neurons import filter_rule, layer_table, neuron_card
    from minitf.protocol import get_protocol, reject_list

    proto = get_protocol(protocol, exclude=exclude)
    skip = proto.neuron_walk == "skip"
    if skip and (not filter or min_count):
        raise MinitfError(f"`protocol` {proto.name} walks the neurons the authors' way (skip); no filter and "
                          "min_count choose among minitf's filtered argmax: use protocol minitf", param="protocol")
    if random_neurons:
        sel = find_random_neurons(model, layers, random_neurons, seed)
        match = reject_list(model, "none")
        tables = {layer: [neuron_card(model, x.neuron, k=k, filter=False) for x in sel.neurons
                          if x.neuron.layer == layer] for layer in layers}
        return NeuronTables(proto, tables, f"a uniform draw (seed {seed}), token over all tokens", match, [], True)
    match = reject_list(model, proto.exclude)
    if skip:
        sel = next_token_neurons(model, layers, top, "skip", match.neurons)
        tables = {layer: [neuron_card(model, x.neuron, k=k, filter=False) for x in sel.neurons
                          if x.neuron.layer == layer] for layer in layers}
        return NeuronTables(proto, tables, "all tokens, a neuron skipped when its token is not ' ' + ≥ 2 characters",
                            match, sel.rejected)
    tables, rejected = {}, []
    for layer in layers:
        rows = layer_table(model, layer, top=top + len(match.neurons), filter=filter, k=k, min_count=min_count,
                           corpus=corpus)
        rejected += [NextTokenNeuron(Neuron(layer, r["index"]), r["token_id"], r["token"], r["congruence"])
                     for r in rows if (layer, r["index"]) in match.neurons]
        tables[layer] = [r for r in rows if (layer, r["index"]) not in match.neurons][:top]
    return NeuronTables(proto, tables, filter_rule(model, filter, min_count, corpus), match, rejected,
                        min_count=min_count)
