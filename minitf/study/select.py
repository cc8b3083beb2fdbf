"""Which neurons a study takes (step 1): a neuron file, the paper's random-neuron baseline, or each layer's most
congruent next-token neurons, less ``exclude``."""
from __future__ import annotations

from pathlib import Path

from minitf.errors import MinitfError
from minitf.names import Neuron, check_layer, parse_neuron


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
    """Per layer the top ``per_layer`` neurons by congruence (``neurons.layer_table``), or the file's list;
    minus ``exclude``; in layer order, each layer's best first; no neuron twice."""
    from minitf.neurons import layer_table

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
    if options.neurons_file:
        chosen = read_neuron_list(model, options.neurons_file)
    elif options.random_neurons:
        from minitf.selection import find_random_neurons

        sel = find_random_neurons(model, options.layers or range(L), options.per_layer + len(excluded), options.seed)
        chosen = []
        for layer in options.layers or range(L):
            chosen += [x.neuron for x in sel.neurons if x.neuron.layer == layer and x.neuron not in excluded
                       ][:options.per_layer]
    else:
        chosen = []
        for layer in options.layers or range(L):
            rows = layer_table(model, layer, top=options.per_layer + len(excluded), k=1,
                               min_count=options.min_count, corpus=options.corpus)
            chosen += [n for n in (Neuron(layer, r["index"]) for r in rows) if n not in excluded][:options.per_layer]
    return list(dict.fromkeys(n for n in chosen if n not in excluded))


# ---- step 2: prompts from the index ----------------------------------------------------------------------
