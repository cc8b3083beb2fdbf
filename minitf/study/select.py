"""Which neurons a study takes (step 1): a neuron file, the paper's random-neuron baseline, or each layer's most
congruent next-token neurons by the protocol's walk, less its reject list and ``exclude``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from minitf.errors import MinitfError
from minitf.names import Neuron, check_layer, parse_neuron
from minitf.neurons import layer_table
from minitf.selection import next_token_neurons
from minitf.util.records import Record


def read_neuron_list(model, path) -> list[Neuron]:
    """Neuron names from a file, one per line (``L3N872``, ``3:872``, ``blocks.3.mlp.hook_pre[872]``);
    blank lines and ``#`` comments are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MinitfError(f"`neurons_file` {path}: no such file", param="neurons_file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MinitfError(f"`neurons_file` {path}: cannot read ({getattr(e, 'strerror', None) or e})",
                          param="neurons_file") from None
    out = []
    for lineno, line in enumerate(lines, 1):
        name = line.split("#", 1)[0].strip()
        if name:
            try:
                out.append(parse_neuron(name, model.cfg.n_layer, model.cfg.d_mlp))
            except (ValueError, MinitfError) as e:
                raise MinitfError(f"`neurons_file` {path}: line {lineno}: {e}", param="neurons_file") from None
    if not out:
        raise MinitfError(f"`neurons_file` {path}: no neuron names in the file", param="neurons_file")
    return out


def select_neurons(model, options) -> list[Neuron]:  # options: a minitf.study.run.StudyOptions
    """``study_selection(model, options).neurons``."""
    return study_selection(model, options).neurons


@dataclass
class SelectionRecord(Record):
    """``settings.selection`` of a study: how step 1 chose the neurons. ``walk``: "skip" (the authors'
    ``find_neurons``: ``minitf.selection.next_token_neurons``), "filtered-argmax" (minitf's
    ``neurons.layer_table``), "random" (the paper's baseline) or "file" (``--neurons``); the authors' reject
    list that applied (``reject_list``: its checkpoint, None when none did; ``reject_count`` neurons on it;
    ``reject_how``: matched by "sha256", "name", "shape", or "none"), ``note``: the one line said about it, and
    ``rejected``: the list's neurons met on the walk and skipped. The user's ``--exclude`` names are
    ``settings.exclude``: they join the list (a named neuron is skipped and the walk goes on)."""

    walk: str
    reject_list: str | None
    reject_count: int
    reject_how: str
    note: str
    rejected: list[str] = field(default_factory=list)


@dataclass
class StudySelection:
    """The neurons a study takes (layer order, then selection order) and how they were chosen."""

    neurons: list[Neuron]
    record: SelectionRecord


def study_selection(model, options) -> StudySelection:  # options: a minitf.study.run.StudyOptions
    """Step 1 of a study, by the protocol's ``neuron_walk``: "skip" (neo2024, neo2023) walks each layer the
    authors' way (``next_token_neurons``: congruence and token over all tokens, a neuron skipped when its token
    fails their filter); "filtered-argmax" (minitf) takes the top ``per_layer`` of ``neurons.layer_table``
    (``min_count`` counts only here: with the authors' walk it is refused). Both skip the protocol's reject list
    (``exclude_list`` "paper" | "none" overrides the protocol's ``exclude``; ``protocol.reject_list``) and the
    ``exclude`` names. Or the file's list (``neurons_file``), or ``random_neurons`` (the authors' sampler, no
    reject list), each less the ``exclude`` names. No neuron twice."""
    from minitf.load.weights import model_sha256
    from minitf.protocol import get_protocol, reject_list

    L = model.cfg.n_layer
    for layer in options.layers:
        check_layer(layer, L, where=f"`layers` {layer}", param="layers")
    if options.per_layer < 1:
        raise MinitfError(f"`per_layer` {options.per_layer}: must be at least 1", param="per_layer")
    excluded = set()
    for name in options.exclude:
        try:
            excluded.add(parse_neuron(name, L, model.cfg.d_mlp))
        except (ValueError, MinitfError) as e:
            raise MinitfError(f"`exclude` {name}: {e}", param="exclude") from None
    proto = get_protocol(options.protocol, exclude=getattr(options, "exclude_list", None))
    layers = options.layers or range(L)
    rejected = []
    if options.neurons_file:
        chosen = read_neuron_list(model, options.neurons_file)
        record = SelectionRecord("file", None, 0, "none", "no reject list: the neurons are --neurons' list")
    elif options.random_neurons:
        from minitf.selection import find_random_neurons

        sel = find_random_neurons(model, layers, options.per_layer + len(excluded), options.seed)
        chosen = []
        for layer in layers:
            chosen += [x.neuron for x in sel.neurons if x.neuron.layer == layer and x.neuron not in excluded
                       ][:options.per_layer]
        record = SelectionRecord("random", None, 0, "none", "no reject list: the paper's random baseline draws "
                                                            "from the whole layer")
    else:
        match = reject_list(model, proto.exclude, sha256=model_sha256(model))
        skip = {Neuron(*n) for n in match.neurons} | excluded
        if proto.neuron_walk == "skip":
            if options.min_count:
                raise MinitfError(f"`min_count` {options.min_count}: counts tokens for minitf's filtered-argmax "
                                  f"walk only; protocol {proto.name} walks the neurons the authors' way (a neuron "
                                  "skipped when its top token fails their filter): use `protocol` minitf",
                                  param="min_count")
            sel = next_token_neurons(model, layers, options.per_layer, "skip", skip)
            chosen = [x.neuron for x in sel.neurons]
            rejected = [x.neuron for x in sel.rejected]
        else:  # minitf's walk, as before the protocols: the top per_layer + |skipped| of the table, less them
            chosen = []
            for layer in layers:
                rows = layer_table(model, layer, top=options.per_layer + len(skip), k=1,
                                   min_count=options.min_count, corpus=options.corpus)
                found = 0
                for n in (Neuron(layer, r["index"]) for r in rows):
                    if found == options.per_layer:
                        break
                    if n in skip:
                        rejected.append(n)
                        continue
                    chosen.append(n)
                    found += 1
        record = SelectionRecord(proto.neuron_walk, match.reject.model if match.reject else None,
                                 len(match.neurons), match.how, match.note,
                                 [str(n) for n in rejected if n not in excluded])
    return StudySelection(list(dict.fromkeys(n for n in chosen if n not in excluded)), record)


# ---- step 2: prompts from the index ----------------------------------------------------------------------
