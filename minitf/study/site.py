"""The study's static site: ``index.html`` (the aggregates, their histograms as inline SVG, a sortable table
of every neuron) and one page per neuron, ``neurons/L{l}N{n}.html`` — the ``report`` command's page
(``minitf.report.page.write_html``) with the neuron's stored explanations and index histogram.

Offline and self-contained like the report: inline CSS and SVG, and the same Content-Security-Policy
(``default-src 'none'``; only this page's own script, allowed by its sha256). The table's sort script reads
numbers from ``data-v`` attributes and moves rows; it builds nothing from text. Every string is escaped.
"""
from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path

from minitf.report.page import write_html
from minitf.report.html import STYLE, _e, svg_bar
from minitf.util.fmt import num as _f
from minitf.scores import scores_mode
from minitf.trace import Trace
from minitf.study.summary import paper_lines
from minitf.study.scoring import scorer_lines

_SCRIPT = r"""
(function () {
  const table = document.getElementById("neurons");
  const body = table.tBodies[0];
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      const down = th.getAttribute("aria-sort") !== "descending";
      table.querySelectorAll("th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      const text = th.dataset.kind === "text";
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        let c;
        if (text) { c = x < y ? -1 : x > y ? 1 : 0; }
        else {
          const fx = x === "" ? -Infinity : parseFloat(x), fy = y === "" ? -Infinity : parseFloat(y);
          c = fx - fy;
        }
        return down ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.documentElement.setAttribute("data-ready", "1");
})();
"""

_EXTRASTYLE = """
th[data-kind]{cursor:pointer;user-select:none}
th[aria-sort=descending]::after{content:" ▼"}
th[aria-sort=ascending]::after{content:" ▲"}
td.num{font-variant-numeric:tabular-nums;text-align:right;white-space:nowrap}
td.nw{white-space:nowrap}
.wide{overflow-x:auto}
.wide table{font-size:13px}
.figs{display:flex;flex-wrap:wrap;gap:18px}
.figs figure{margin:0}
.figs figcaption{font-size:12px;color:var(--dim)}
"""


def bar_svg(title: str, labels: list[str], counts: list[int], caption: str) -> str:
    """A small bar chart as inline SVG: one bar per label, its count above it."""
    W, H, pad, top, bottom = 320, 150, 8, 18, 30
    axis_y = H - bottom
    slot = (W - 2 * pad) / max(len(counts), 1)
    peak = max(counts, default=0) or 1
    parts = [f'<line x1="{pad}" x2="{W - pad}" y1="{axis_y}" y2="{axis_y}" stroke="#64748b"/>']
    every = 1 if len(counts) <= 12 else math.ceil(len(counts) / 10)
    for k, (label, c) in enumerate(zip(labels, counts)):
        x = pad + k * slot
        h = (axis_y - top) * c / peak
        parts.append(svg_bar(x, slot, h, axis_y, f"{label}: {c}", "#7c3aed", 1.5, str(c) if c else "",
                             label if k % every == 0 else ""))
    return (f'<figure><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{_e(title)}">'
            f'{"".join(parts)}</svg><figcaption><b>{_e(title)}</b> {_e(caption)}</figcaption></figure>')


def _aggregate_rows(aggs: dict, explained: bool) -> str:
    head = ("<tr><th>layer</th><th>studied</th><th>skipped (no prompt)</th><th>with diff.</th><th>diff. heads / neuron</th>"
            "<th>score (balanced accuracy)</th><th>Δp mean act. / inact.</th><th>Δp median act. / inact.</th>"
            "<th>prompts act. / inact.</th><th>KS D (p)</th><th>Δpost mean act. / inact.</th></tr>")
    rows = []
    for name, a in list(aggs["layers"].items()) + [("all", aggs["all"])]:
        per = a["differential_heads_per_neuron"]
        sc = a["scores"]["balanced_accuracy"] if a["scores"] else None
        score = ("skipped" if sc is None else
                 f"{_f(sc['mean'])} ± {_f(sc['std'])}, median {_f(sc['median'])}, n={sc['count']}, "
                 f"{sc['n_skipped']} skipped")
        dp, dpost = a["ablation"]["dp"], a["ablation"]["dpost"]
        ks = dp["ks"]
        rows.append(
            f"<tr><td>{_e(name)}</td><td class=num>{a['neurons_traced']}</td>"
            f"<td class=num>{a['neurons_without_prompts']}</td>"
            f"<td class=num>{a['neurons_with_differential_heads']}</td>"
            f"<td class=num>{_f(per['mean'], '.2f')} ± {_f(per['std'], '.2f')}</td><td>{_e(score)}</td>"
            f"<td class=nw>{_f(dp['active']['mean'], '+.1e')} / {_f(dp['inactive']['mean'], '+.1e')}</td>"
            f"<td class=nw>{_f(dp['active']['median'], '+.1e')} / {_f(dp['inactive']['median'], '+.1e')}</td>"
            f"<td class=num>{dp['active']['count']} / {dp['inactive']['count']}</td>"
            f"<td class=nw>{'–' if ks is None else _e(format(ks['statistic'], '.2f') + ' (' + format(ks['p_value'], '.1e') + ')')}"
            f"</td><td class=nw>{_f(dpost['active']['mean'], '+.3f')} / {_f(dpost['inactive']['mean'], '+.3f')}</td></tr>")
    return f"<div class=wide><table>{head}{''.join(rows)}</table></div>"


def _figures(a: dict) -> str:
    dist = a["layer_distance"]
    gaps = list(range(1, 1 + max([int(k) for k in dist] or [1])))
    per = a["differential_heads_per_neuron"]["counts"]
    n_max = max([int(k) for k in per] or [0])
    figs = [bar_svg("layer distance", [str(g) for g in gaps], [dist.get(str(g), 0) for g in gaps],
                    "neuron's layer − differential head's layer"),
            bar_svg("differential heads per neuron", [str(k) for k in range(n_max + 1)],
                    [per.get(str(k), 0) for k in range(n_max + 1)], "neurons with that many")]
    if a["scores"]:
        sc = a["scores"]["balanced_accuracy"]
        figs.append(bar_svg("explanation scores", [f"{b['low']:.1f}" for b in sc["histogram"]],
                            [b["count"] for b in sc["histogram"]],
                            f"balanced accuracy, bins of 0.1 from 0 to 1; {sc['n_skipped']} skipped"))
    return f'<div class=figs>{"".join(figs)}</div>'


def _neuron_rows(entries: list[dict]) -> str:
    head = ('<thead><tr><th data-kind=text>neuron</th><th data-kind=num>layer</th><th data-kind=text>token</th>'
            '<th data-kind=num>congruence</th><th data-kind=num>prompts</th><th data-kind=num>differential</th>'
            '<th data-kind=text>heads</th><th data-kind=num>mean score</th><th data-kind=num>Δp active</th>'
            '<th data-kind=num>Δp inactive</th></tr></thead>')
    rows = []
    for r in entries:
        card = r["card"]
        diff = r.get("differential_heads", [])
        scores = [e["balanced_accuracy"] for e in (r.get("explanations") or {}).values()
                  if not e["skipped"] and e["balanced_accuracy"] is not None]
        mean_score = sum(scores) / len(scores) if scores else None
        act = [v for s in r.get("ablation_samples", {}).values() for v, a in zip(s["dp"], s["active"]) if a]
        inact = [v for s in r.get("ablation_samples", {}).values() for v, a in zip(s["dp"], s["active"]) if not a]

        def num(x, spec):
            return f'<td class=num data-v="{"" if x is None else repr(float(x))}">{_f(x, spec)}</td>'

        name = _e(r["neuron"])
        link = f'<a href="neurons/{name}.html">{name}</a>' if "skipped" not in r else name
        token = card["token"]["str"] or ""
        rows.append(f'<tr><td data-v="{r["layer"]:04d}{r["index"]:08d}">{link}</td>{num(r["layer"], "d")}'
                    f'<td data-v="{_e(token)}"><span class=tok>{_e(token)}</span></td>'
                    f'{num(card["congruence"], ".3f")}{num(r.get("n_prompts", 0), "d")}{num(len(diff), "d")}'
                    f'<td data-v="{_e(" ".join(diff))}">{_e(", ".join(diff)) or ("<span class=dim>" + _e(r["skipped"]) + "</span>" if "skipped" in r else "–")}</td>'
                    f'{num(mean_score, ".3f")}{num(sum(act) / len(act) if act else None, "+.2e")}'
                    f'{num(sum(inact) / len(inact) if inact else None, "+.2e")}</tr>')
    return f'<table id=neurons>{head}<tbody>{"".join(rows)}</tbody></table>'


def render_index(study: dict) -> str:
    """index.html of a study (the dict written to study.json)."""
    s, aggs = study["settings"], study["aggregates"]
    explained = not study["explanations"].startswith("skipped")
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{digest}'; "
           "base-uri 'none'; form-action 'none'")
    meta = [("model", f"{s['model']['folder']} (sha256 {s['model']['sha256'][:16]}…)"),
            ("corpus", f"{s['corpus']} (sha256 {s['corpus_sha256'][:16]}…)"),
            ("prompts", f"top {s['n_prompts']} of the {s['split']} split per neuron"),
            ("active heads", f"rule {s['rule']}, scores {s['scores']}"
                             + (", candidates include the neuron's layer" if s["include_same_layer"] else "")),
            ("explanations", study["explanations"] + (f" ({s['llm']})" if s.get("llm") else "")),
            ("protocol", f"{s.get('protocol', 'minitf')}" + (", random neurons (seed "
                                                              f"{s.get('seed')})" if s.get("random_neurons") else "")),
            ("neurons", f"{len(study['neurons'])}" + ("" if study["complete"] else " (study not complete)"))]
    header = ("<header><div class=kicker>minitf study</div><h1>Context look-ups over "
              f"{len(study['neurons'])} neurons</h1><dl class=meta>"
              + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta) + "</dl></header>")
    body = (header
            + "<section><h2>Aggregates</h2><p class=hint>Per layer and over all neurons. Δp: the drop in p(neuron's "
              f"token) when a differential head is removed ({_e(scores_mode(s['scores']).removed)}, --scores "
              f"{_e(s['scores'])}), pooled over every (neuron, differential head) pair and "
              "prompt, on the prompts where the head is active vs inactive; KS: two-sample Kolmogorov–Smirnov.</p>"
            + _aggregate_rows(aggs, explained) + _figures(aggs["all"]) + "</section>"
            + "<section><h2>The paper's aggregates</h2><p class=hint>As the paper computes them (protocol "
              f"{_e(s.get('protocol', 'minitf'))}; docs/protocols.md); the table above is minitf's pooled version."
              "</p><div class=wide><pre>" + _e("\n".join(paper_lines(study))) + "</pre></div></section>"
            + _scorer_section(study)  # issue 24
            + "<section><h2>Neurons</h2><p class=hint>Click a column to sort; a neuron opens its report.</p>"
            + _neuron_rows(study["neurons"]) + "</section>")
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>minitf study · {len(study['neurons'])} neurons</title><style>{STYLE}{_EXTRASTYLE}</style>"
            f"</head>\n<body><main>{body}</main>\n<script>{_SCRIPT}</script></body></html>\n")


def _scorer_section(study: dict) -> str:
    """How far to trust the scores (issue 24): per scorer its aggregates (``scoring.scorer_lines``), then one row per
    scored pair: the paper's score, its 95 % interval, P(BA ≤ ½), the permutation p-value and each baseline."""
    lines = scorer_lines(study)
    if not lines:
        return ""
    from minitf.explain.baselines import BASELINE_LABEL, interval_text

    rows, names, others = [], [], []
    for entry in study["neurons"]:
        for h, e in sorted((entry.get("explanations") or {}).items()):
            paper = (e.get("scorers") or {}).get("paper")
            if paper is None:
                continue
            names += [b["name"] for b in paper["baselines"] if b["name"] not in names]
            others += [n for n in e["scorers"] if n != "paper" and n not in others]
            base = {b["name"]: interval_text(b["value"], b["interval"]) for b in paper["baselines"]}
            base |= {f"scorer {n}": interval_text(r["value"], r["interval"]) for n, r in e["scorers"].items()}
            rows.append((f"{entry['neuron']} {h}", interval_text(paper["value"], paper["interval"]),
                         _f(paper["detail"].get("p_at_most_chance")), _f(paper["p_value"]), base))
    names += [f"scorer {n}" for n in others]  # the scorers past Yes/No, after the paper's baselines
    head = "".join(f"<th>{_e(x)}</th>" for x in ["pair", "paper [95 % interval]", "P(BA ≤ ½)", "permutation p"]
                   + [BASELINE_LABEL.get(n, n.removeprefix("scorer ")) for n in names])
    body = "".join("<tr>" + "".join(f"<td class=nw>{_e(x)}</td>" for x in (pair, v, pc, p)
                                     + tuple(base.get(n, "–") for n in names)) + "</tr>"
                   for pair, v, pc, p, base in rows)
    return ("<section><h2>How far to trust the scores</h2><p class=hint>Each pair's score with its Beta-posterior "
            "95 % interval, the posterior probability that it does no better than chance, the permutation p-value, "
            "and its baselines scored on the same test prompts (README: how to read an interval and a baseline)."
            "</p><div class=wide><pre>" + _e("\n".join(lines[1:])) + "</pre><table><thead><tr>" + head
            + "</tr></thead><tbody>" + body + "</tbody></table></div></section>")


def _explanations(record: dict) -> dict | None:
    """The report's {head: {"explanation", "balanced_accuracy", "roc_auc"}} from a neuron record."""
    if not record.get("explanations"):
        return None
    return {h: {"explanation": e["explanation"] or f"(skipped: {e['skip_reason']})",
                "balanced_accuracy": e["balanced_accuracy"], "roc_auc": e["roc_auc"]}
            for h, e in record["explanations"].items()}


def write_site(out, study: dict, records: list[dict]) -> None:
    """index.html and each traced neuron's page, every file written atomically."""
    from minitf.util.files import atomic_write

    out = Path(out)
    for r in records:
        if "trace" in r:
            trace = Trace.from_json(r["trace"], f"{r['neuron']}: trace")
            write_html(out / "neurons" / f"{r['neuron']}.html", trace, _explanations(r), r.get("histogram"))
    page = render_index(study)
    atomic_write(out / "index.html", page)
