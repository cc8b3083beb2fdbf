"""A self-contained HTML report of a trace: one file, no network, inline CSS, SVG and one small script.

The page shows, from a trace (``minitf.trace.Trace`` or its JSON, ideally built with ``per_position=True``), top to
bottom:

* a header: the model, where the prompts came from (corpus), the BOS choice and the identity check;
* the neuron card: promoted / suppressed tokens as bars, congruence, rank, and the activation histogram
  from the neuron index when one is given (how many traced prompts fall in each bin is marked under it);
* a bar chart of the candidate heads by the mean of the score that selected them (``settings.scores``, see
  ``minitf.scores``), marking differential heads and their ablation Δp;
* the LLM explanations and their scores, when given;
* every prompt as text, its tokens shaded by the neuron's activation; hovering or clicking a token shows
  the heads' scores at that position; under it, the top heads at the traced (last) position and
  the source tokens they looked up, shaded by their share of the head's context part (hovering a head
  outlines them in the text).

Safety: prompts and tokens are untrusted text. Every string that reaches the HTML goes through
``html.escape``; the data the script needs is embedded as JSON in a ``<script type="application/json">``
block with ``<``, ``>`` and ``&`` written as ``\\u003c`` … so that no token can close the block or open a
comment; the script builds its DOM with ``textContent`` only. A Content-Security-Policy meta tag forbids
every load (``default-src 'none'``) and allows only this page's own script, by hash.

This module assembles the data (the trace checked, the script's data, the stored explanations and the index's
histogram) and writes the file; ``minitf.report.html`` holds the HTML/SVG templates and inlines the style and
the script (``assets/``).
"""
from __future__ import annotations

import math
from pathlib import Path

from minitf.errors import MinitfError
from minitf.util.files import atomic_write
from minitf.report.html import page
from minitf.trace import PromptOrigin, Trace

__all__ = ["render_html", "write_html", "report_extras"]


def _round(x, digits: int = 4):
    """A float to ``digits`` significant digits (keeps the embedded JSON small); None and ints unchanged."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    return x


def _script_data(trace: Trace) -> dict:
    mode = trace.mode
    prompts = []
    for p in trace.prompts:
        prompts.append({
            "tokens": p.tokens,
            "activation": _round(p.activation),
            "pre": _round(p.pre),
            "positions": [{"a": _round(q.activation), "pre": _round(q.pre),
                           "heads": [[h.head, _round(mode.of(h))] for h in q.heads]} for q in p.positions or []],
            "top": [[h.head, _round(mode.of(h))] for h in p.top_heads],
            **({"why": _why_data(p)} if any(h.why for h in p.top_heads) else {}),
        })
    data = {"prompts": prompts, "differential": trace.differential_heads}
    if trace.paths is not None:  # trace --paths: the path split's numbers, as in the trace's JSON
        data["paths"] = trace.paths.to_json()
    return data


def _why_data(p) -> dict:
    """trace --why for the script: {head: {source position: {a: attention, s: S, c: S̃, pairs: [[query, key, S̃,
    S]], took: [[component, effect]], ctx: context part}}} for the prompt's listed heads."""
    return {h.head: {str(s.position): {"a": _round(s.attention), "s": _round(s.score), "c": _round(s.centred),
                                       "pairs": [[x.query, x.key, _round(x.centred), _round(x.score)] for x in s.pairs],
                                       "took": [[x.component, _round(x.effect)] for x in s.carried],
                                       "ctx": _round(s.context)} for s in h.why.sources}
            for h in p.top_heads if h.why}


def render_html(trace: Trace | dict, explanations: dict | None = None, histogram: dict | None = None) -> str:
    """The trace (a ``Trace``, or its JSON: then read with ``Trace.from_json``) as one self-contained HTML page
    (see the module docstring).

    ``explanations``: {head: {"explanation", "balanced_accuracy", "roc_auc"}} (e.g. ``ResultStore.load()``);
    ``histogram``: the neuron's activation histogram {"edges": [...], "counts": [...]} from the index.
    """
    if not isinstance(trace, Trace):
        trace = Trace.from_json(trace)
    if not trace.prompts:
        raise MinitfError("trace: no prompts")
    return page(trace, explanations, histogram, _script_data(trace))


def write_html(path, trace: Trace | dict, explanations: dict | None = None, histogram: dict | None = None) -> Path:
    """Render the report and write it to ``path`` atomically (``minitf.util.files.atomic_write``)."""
    path = Path(path)
    page = render_html(trace, explanations, histogram)
    if path.is_dir():
        raise MinitfError(f"{path}: is a folder; give a file name such as report.html")
    if not path.parent.is_dir():
        raise MinitfError(f"{path}: the folder {path.parent} does not exist")
    return atomic_write(path, page)


def report_extras(model, neuron, origin: PromptOrigin, cache_dir=None) -> tuple[dict | None, dict | None]:
    """What the CLI adds to a report when it exists: the explain/score results stored for this model and
    neuron (``minitf.explain.driver.ResultStore``) and the neuron's activation histogram from the index of the
    corpus the trace's prompts came from (``origin``, its settings' ``Trace.settings.origin``; else the model's
    own corpus). A missing or stale index gives {"note": why} instead."""
    from minitf.explain.store import ResultStore
    from minitf.index.histogram import index_histogram

    explanations = None
    if model.folder is not None:  # results are stored per model folder
        store = ResultStore(cache_dir, model.folder, str(neuron))
        explanations = store.load() or None
    return explanations, index_histogram(model, neuron, origin)
