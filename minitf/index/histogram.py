"""A neuron's activation histogram from the neuron index, for the report page and the study site."""
from __future__ import annotations

from pathlib import Path

from minitf.corpus import default_corpus
from minitf.errors import MinitfError
from minitf.index.build import load_index


def index_histogram(model, neuron, origin, index=None) -> dict | None:
    """{"edges", "counts", "positions", "positive", "split"} from the neuron index of ``origin``'s corpus (a
    trace's ``PromptOrigin``; else the model's own), or {"note": why not}. ``index``: that corpus's index,
    already loaded (``minitf.study.run``)."""
    corpus = default_corpus(model, origin.corpus or None)
    if corpus is None:
        return None
    split = origin.split if origin.split in ("train", "test") else None
    try:
        index = index if index is not None else load_index(model, corpus)
        if index is None:
            return {"note": f"no neuron index of {Path(corpus).name}; build it with the index command"}
        if neuron.layer not in index.layers:
            return {"note": f"layer {neuron.layer} is not in the index of {Path(corpus).name}"}
        if split is not None and index.split not in (None, split):
            split = None
        edges, counts = index.histogram(neuron, split)
        return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
                "positions": index.positions(split), "positive": index.positive_count(neuron, split),
                "split": split or index.split}
    except MinitfError as e:  # a stale or unreadable index: say so on the page, still write the report
        return {"note": str(e)}
