"""The report's HTML and SVG templates: each section of the page from a trace (``minitf.report.page`` assembles
the data and writes the file). The page's style and script are package data files, ``assets/report.css``
and ``assets/report.js``, inlined into the page; the script is allowed by its sha256 in the page's
Content-Security-Policy, and every string from the trace goes through ``html.escape`` (``_e``).
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from pathlib import Path

from minitf.util.fmt import num, si

ASSETS = Path(__file__).resolve().parent / "assets"
STYLE = "\n" + (ASSETS / "report.css").read_text(encoding="utf-8")
SCRIPT = "\n" + (ASSETS / "report.js").read_text(encoding="utf-8")

HEADS_SHOWN = 16  # heads in the bar chart (by mean selecting score, ``minitf.scores``), plus every differential head
CARD_TOKENS = 10  # promoted / suppressed tokens shown
POS_RGB = (234, 88, 12)  # activation > 0: orange
NEG_RGB = (37, 99, 235)  # activation < 0: blue
DIFF_RGB = (124, 58, 237)  # differential heads: violet


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def _e(x) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(x), quote=True)


def _visible(token: str) -> str:
    """A token's text with its invisible characters made visible (newline ⏎, tab ⇥, CR ␍)."""
    return token.replace("\r", "␍").replace("\n", "⏎").replace("\t", "⇥")


def _tok(token: str, cls: str = "tok") -> str:
    """A token as a chip: escaped, whitespace kept and made visible."""
    return f'<span class="{cls}">{_e(_visible(token)) or "&#8203;"}</span>'


def _num(x, spec: str = "+.3f") -> str:
    """A number with a typographic minus, or "–"."""
    return num(x, spec).replace("-", "−")


def _dp(x) -> str:
    """A probability change: 4 decimals, or scientific notation (−1.2e−5) when smaller than that shows."""
    if x is None or x == 0 or abs(x) >= 5e-4 or not math.isfinite(x):
        return _num(x, "+.4f")
    mantissa, exponent = format(x, "+.1e").split("e")
    return f"{mantissa}e{int(exponent)}".replace("-", "−")


def _pct(x: float) -> str:
    """A share as a percentage, capped at ±999 % (where a head's parts cancel, shares say little)."""
    if abs(x) > 9.99:
        return (">" if x > 0 else "<−") + "999%"
    return f"{x:.0%}".replace("-", "−")


def _rgba(rgb, alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f})"


def _shade(value: float, scale: float, max_alpha: float = 0.8) -> str:
    if not scale or not value or not math.isfinite(value):
        return ""
    alpha = min(abs(value) / scale, 1.0) * max_alpha
    return f"background:{_rgba(POS_RGB if value > 0 else NEG_RGB, alpha)}" if alpha >= 0.01 else ""


def _json_for_script(obj) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>', '&', U+2028 or U+2029 left."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _card_token(card) -> tuple[object, str]:
    """(id, text) of the neuron's token, from the trace's card (``minitf.trace.NeuronCard``)."""
    return card.token.id, card.token.text if card.token.text is not None else "?"


def _card_pairs(items) -> list[tuple[str, float]]:
    """Promoted / suppressed tokens of the trace's card (``TokenValue``) as (text, value)."""
    return [(str(x.token), float(x.value)) for x in items or []]


# ---------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------


def _header(trace) -> str:
    card, model, s = trace.neuron, trace.model, trace.settings
    _, tok = _card_token(card)
    rel, err = trace.identity_check.max_rel_error, trace.identity_check.max_abs_error
    ok = rel <= 1e-4
    shape = f"n_layer {model.n_layer}, n_head {model.n_head}, d_mlp {model.d_mlp}, n_ctx {model.n_ctx}"
    items = [
        ("model", f"<code>{_e(model.folder)}</code> <span class=dim>({_e(shape)})</span>"),
        ("prompts", _e(f"{len(trace.prompts)} · {s.origin.source or 'given'}")),
    ]
    if s.origin.corpus:
        items.append(("corpus", f"<code>{_e(s.origin.corpus)}</code>"
                                + (f" <span class=dim>split {_e(s.origin.split)}</span>" if s.origin.split else "")))
    bos = s.origin.bos
    if bos is None and all(p.tokens[:1] == ["<|endoftext|>"] for p in trace.prompts):
        bos = True  # not recorded (a trace() call without an origin), but every prompt starts with it
    items.append(("BOS", "unknown" if bos is None else ("&lt;|endoftext|&gt; prepended" if bos else "none")))
    if s.protocol is not None:
        items.append(("protocol", _e(s.protocol.line().removeprefix(f"protocol {s.protocol.name}: "))
                      .join([f"<b>{_e(s.protocol.name)}</b> <span class=dim>", "</span>"])))
    items.append(("rule", _e(f"{s.rule} · {s.candidates} candidate heads"
                              + (" (incl. the neuron's layer)" if s.include_same_layer else ""))))
    items.append(("scores", _e(f"{s.scores}: {s.scores_note}")))
    items.append(("identity check",
                  f'<span class="pill {"ok" if ok else "warn"}" title="max |Σ terms + constant − pre| over the '
                  f'prompts; relative to Σ|terms|">{"✓ " if ok else ""}{_e(_num(err, ".1e"))} '
                  f'<span class=dim>(rel {_e(_num(rel, ".1e"))})</span></span>'))
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return (f'<header><div class=kicker>minitf trace</div>'
            f'<h1>Neuron <span class=name>{_e(card.name)}</span> pushes '
            f'{_tok(tok, "tok big")}</h1><dl class=meta>{meta}</dl></header>')


def _token_bars(items, rgb, scale: float, k: int = CARD_TOKENS) -> str:
    pairs = _card_pairs(items)[:k]
    if not pairs:
        return "<p class=dim>none</p>"
    rows = []
    for token, value in pairs:
        width = 100 * abs(value) / scale
        rows.append(f'{_tok(token)}<span class=track><span class=bar style="width:{width:.1f}%;'
                    f'background:{_rgba(rgb, 0.75)}"></span></span><span class=val>{_e(_num(value))}</span>')
    return f'<div class=bars>{"".join(rows)}</div>'


def svg_bar(x: float, slot: float, h: float, axis_y: float, tip: str, fill: str, gap: float, above: str,
            label: str, mark: str = "") -> str:
    """One bar of an SVG bar chart as a ``<g>``: its box (``gap`` from each side of the slot), ``tip`` on hover,
    ``above`` it a number, under the axis ``label`` and a ``mark`` below that (each left out when empty)."""
    mid = x + slot / 2
    out = (f'<g><title>{_e(tip)}</title><rect x="{x + gap:.1f}" y="{axis_y - h:.1f}" '
           f'width="{max(slot - 2 * gap, 1):.1f}" height="{max(h, 0):.1f}" rx="2" fill="{fill}"/>')
    if above:
        out += f'<text x="{mid:.1f}" y="{axis_y - h - 3:.1f}" class="ax tiny" text-anchor=middle>{_e(above)}</text>'
    if label:
        out += f'<text x="{mid:.1f}" y="{axis_y + 13}" class=ax text-anchor=middle>{_e(label)}</text>'
    if mark:
        out += f'<text x="{mid:.1f}" y="{axis_y + 30}" class="ax mark" text-anchor=middle>{_e(mark)}</text>'
    return out + "</g>"


def _bins(edges: list[float], n: int) -> list[tuple[float, float]]:
    """(low, high] of each of n bins: edges n − 1 long are the index's open-ended bins, n + 1 long closed ones."""
    if len(edges) == n - 1:
        return list(zip([-math.inf] + edges, edges + [math.inf]))
    return list(zip(edges[:-1], edges[1:]))


def _bin_label(lo: float, hi: float) -> str:
    def short(v):
        return {0.5: "½", 0.25: "¼"}.get(abs(v), format(abs(v), "g")).join(("−" if v < 0 else "", ""))
    if lo == -math.inf:
        return f"≤{short(hi)}"
    if hi == math.inf:
        return f">{short(lo)}"
    return f"{short(lo)}–{short(hi)}"


def _histogram_svg(histogram: dict, marks: list[float]) -> str:
    """The neuron's activation histogram from the index (log counts, one bar per bin); under each bin, how
    many of the traced prompts' activations fall in it."""
    edges = [float(v) for v in histogram.get("edges", [])]
    counts = [int(c) for c in histogram.get("counts", [])]
    if not counts or len(edges) not in (len(counts) - 1, len(counts) + 1):
        return ""
    bins = _bins(edges, len(counts))
    W, H, pad_l, top, bottom = 340, 170, 30, 26, 46
    axis_y = H - bottom
    slot = (W - pad_l - 4) / len(counts)
    ymax = math.log10(1 + max(counts)) or 1.0
    parts = ["<text x=\"0\" y=\"10\" class=ax>log count</text>",
             f'<line x1="{pad_l}" x2="{W - 4}" y1="{axis_y}" y2="{axis_y}" stroke="#64748b"/>']
    label_every = 1 if len(counts) <= 10 else math.ceil(len(counts) / 8)
    for k, ((lo, hi), c) in enumerate(zip(bins, counts)):
        x = pad_l + k * slot
        h = (axis_y - top - 6) * math.log10(1 + c) / ymax
        traced = sum(1 for m in marks if lo < m <= hi or (lo == -math.inf and m <= hi))
        tip = f"({_num(lo, 'g')}, {_num(hi, 'g')}]: {c:,} positions" + (f"; {traced} traced prompts" if traced else "")
        parts.append(svg_bar(x, slot, h, axis_y, tip, "#94a3b8", 2, si(c) if c else "",
                             _bin_label(lo, hi) if k % label_every == 0 else "", f"▲{traced}" if traced else ""))
    total = histogram.get("positions", sum(counts))
    caption = f"activation over {si(total)} indexed positions"
    if histogram.get("positive") is not None and total:
        caption += f", positive at {histogram['positive'] / total:.2%}"
    if histogram.get("split"):
        caption += f" ({histogram['split']} split)"
    return (f'<figure class=hist><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="activation histogram">{"".join(parts)}</svg><figcaption>{_e(caption)}; '
            f'<span class=mark>▲n</span>: the traced prompts in that bin</figcaption></figure>')


def _card(trace, histogram: dict | None) -> str:
    card = trace.neuron
    token_id, _ = _card_token(card)
    stats = []
    if card.congruence is not None:
        stats.append(("congruence", _num(card.congruence, ".3f")))
    if card.rank is not None:
        of = f" of {card.layer_size}" if card.layer_size is not None else ""
        stats.append(("rank", f"{card.rank}{of} in layer {card.layer}"))
    if card.kurtosis is not None:
        stats.append(("kurtosis", _num(card.kurtosis, ".1f")))
    if card.skew is not None:
        stats.append(("skew", _num(card.skew, "+.2f")))
    if card.kind:
        stats.append(("class", card.kind))
    stats.append(("token id", token_id))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in stats)
    scale = max([abs(v) for _, v in _card_pairs(card.promoted) + _card_pairs(card.suppressed)]
                + [0.0]) or 1.0  # one scale for both lists, so their bars compare
    hist = _histogram_svg(histogram, [p.activation for p in trace.prompts]) if histogram else ""
    if not hist:
        why = (histogram or {}).get("note") or "build the neuron index to see one"
        hist = f'<p class="dim small">no activation histogram ({_e(why)})</p>'
    return (f'<section id=card><h2>The neuron</h2><div class=cardgrid>'
            f'<div><h3>promotes</h3>{_token_bars(card.promoted, POS_RGB, scale)}</div>'
            f'<div><h3>suppresses</h3>{_token_bars(card.suppressed, NEG_RGB, scale)}</div>'
            f'<div><h3>output direction</h3><dl class=stats>{dl}</dl>{hist}</div></div></section>')


def _prompt_scale(prompts) -> float:
    values = [abs(p.activation) for p in prompts]
    for p in prompts:
        values += [abs(q.activation) for q in p.positions or []]
    return max([v for v in values if math.isfinite(v)] or [0.0]) or 1.0


def _prompt_text(p, n: int, scale: float) -> str:
    positions = p.positions or []
    last = len(p.tokens) - 1
    spans = []
    for i, token in enumerate(p.tokens):
        act = positions[i].activation if i < len(positions) else (p.activation if i == last else None)
        cls = "t"
        if i == 0 and token == "<|endoftext|>":
            cls += " special"
        if i == last:
            cls += " last"
        style = _shade(act, scale) if act is not None else ""
        title = f"#{i}" + (f" activation {_num(act)}" if act is not None else "")
        spans.append(f'<span class="{cls}" data-i="{i}"{f" style={chr(34)}{style}{chr(34)}" if style else ""} '
                     f'title="{_e(title)}">{_e(_visible(token)) or "&#8203;"}</span>')
        if token.endswith("\n"):
            spans.append("<br>")
    return f'<div class=ptext id="ptext-{n}">{"".join(spans)}</div>'


def _top_heads_table(p, differential: set[str], mode, n: int = 0) -> str:
    heads = p.top_heads
    if not heads:
        return ""
    scale = max(abs(mode.of(h)) for h in heads) or 1.0
    rows = []
    for h in heads:
        width = 100 * abs(mode.of(h)) / scale
        rgb = POS_RGB if mode.of(h) >= 0 else NEG_RGB
        badges = ('<span class="badge act" title="active on this prompt">active</span>' if h.active else "")
        if h.head in differential:
            badges += '<span class="badge diff" title="differential: active on 25–75 % of the prompts">D</span>'
        sources = []
        # shade: the source's effect (orange raises the neuron, blue lowers it) relative to the head's context
        # part (what the sources sum to), or to its largest source where sources cancel out (shares past 100 %)
        context = h.context
        shade_scale = max([abs(context)] + [abs(x.effect) for x in h.sources])
        for src in h.sources:
            share = src.effect / context if context else 0.0
            style = _shade(src.effect, shade_scale, 0.75)
            tip = f"position {src.position}: effect {_num(src.effect)}, attention {src.attention:.2f}"
            sources.append(f'<span class=src data-pos="{int(src.position)}" style="{style}" title="{_e(tip)}">'
                           f'{_e(_visible(src.token)) or "&#8203;"}<sub>{_e(_pct(share))}</sub></span>')
        sources.append(f'<span class="dim small" title="the constant part (b_V + β₁W_V)·W_O: no source token; '
                       f'{"not in" if mode.selects == "context" else "in"} the selecting score">'
                       f'constant {_e(_num(h.constant))}</span>')
        positions = ",".join(str(int(s.position)) for s in h.sources)
        rows.append(f'<tr class=hrow data-head="{_e(h.head)}" data-sources="{_e(positions)}"><td class=hname>{_e(h.head)}{badges}</td>'
                    f'<td class=hbar><span class=track><span class=bar style="width:{width:.1f}%;'
                    f'background:{_rgba(rgb, 0.75)}"></span></span></td><td class=val>{_e(_num(mode.of(h)))}</td>'
                    f'<td class=srcs>{"".join(sources)}</td></tr>')
    why = ""  # trace --why: the script fills it when a source token is clicked
    if any(h.why for h in heads):
        why = (f'<div class=why id="why-{n}" aria-live=polite><span class="dim small">Click a looked-up token to see '
               f'why the head looked there and what it took.</span></div>')
    return (f'<table class=topheads><thead><tr><th>head</th><th colspan=2>{mode.score} at the last token</th>'
            f'<th>looked up (share of the context part)</th></tr></thead><tbody>{"".join(rows)}</tbody></table>{why}')


def _prompts(trace) -> str:
    prompts = trace.prompts
    scale = _prompt_scale(prompts)
    differential = set(trace.differential_heads)
    has_positions = any(p.positions for p in prompts)
    blocks = []
    for n, p in enumerate(prompts):
        tags = []
        if p.truncated:
            tags.append('<span class="badge warn">truncated to the context</span>')
        if p.mined:
            tags.append(f'<span class="dim small">doc {_e(p.mined.doc_id)} · position {_e(p.mined.position)}</span>')
        active = ", ".join(p.active_heads) or "none"
        blocks.append(
            f'<article class=prompt data-p="{n}"><div class=phead><span class=pnum>#{n + 1}</span>'
            f'<span class=act style="{_shade(p.activation, scale)}">activation {_e(_num(p.activation))}</span>'
            f'<span class=dim>pre {_e(_num(p.pre))}</span>{"".join(tags)}'
            f'<span class="dim small right">active heads: {_e(active)}</span></div>'
            f'{_prompt_text(p, n, scale)}'
            f'<div class=detail id="detail-{n}" aria-live=polite></div>'
            f'{_top_heads_table(p, differential, trace.mode, n)}</article>')
    hint = ("Tokens are shaded by the neuron's activation (orange &gt; 0, blue &lt; 0; the traced last token is "
            "underlined). Hover a token to see the heads' direct effects there; click to pin it. "
            "Hover a head to outline the tokens it looked up.")
    if not has_positions:
        hint = ("Only the last token's activation is in this trace (trace with per_position=True to shade every "
                "token). Hover a head to outline the tokens it looked up.")
    order = "in the trace's order" if all(p.mined for p in prompts) else "in the order given"
    return (f'<section id=prompts><h2>Prompts <span class="dim small">({len(prompts)}, {order})</span></h2>'
            f'<p class="hint">{hint}</p>{"".join(blocks)}</section>')


def _heads_chart(trace) -> str:
    heads = trace.heads
    if not heads:
        return '<section id=heads><h2>Heads</h2><p class=dim>no candidate heads (a layer-0 neuron)</p></section>'
    shown = heads[:HEADS_SHOWN] + [h for h in heads[HEADS_SHOWN:] if h.differential]
    P = len(trace.prompts)
    mode = trace.mode
    paper = mode.selects == "context"
    values = [mode.mean(h) for h in shown]
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    W, row, label_w, text_w, top = 1000, 22, 86, 390, 26
    bar_w = W - label_w - text_w - 20
    H = top + row * len(shown) + 10

    def x(v):
        return label_w + bar_w * (v - lo) / span

    parts = [f'<text x="{x(0):.1f}" y="14" class=ax text-anchor=middle>0</text>',
             f'<text x="{label_w + bar_w + 14}" y="14" class=ax>active on · ablation Δp(token)</text>']
    if x(0) - label_w > 50:  # the ends' labels, where they do not run into the 0
        parts.append(f'<text x="{label_w}" y="14" class=ax>{_e(_num(lo))}</text>')
    if label_w + bar_w - x(0) > 50:
        parts.append(f'<text x="{label_w + bar_w}" y="14" class=ax text-anchor=end>{_e(_num(hi))}</text>')
    for k, h in enumerate(shown):
        y = top + k * row
        v = mode.mean(h)
        diff = h.differential
        rgb = DIFF_RGB if diff else (POS_RGB if v >= 0 else NEG_RGB)
        x0, x1 = sorted((x(0), x(v)))
        sd = mode.std(h) or 0.0
        a, b = x(max(lo, v - sd)), x(min(hi, v + sd))
        ab = h.ablation
        text = f"{h.active_count}/{P}"
        if ab:
            if diff and ab.mean_dp_active is not None:
                text += f" · Δp {_dp(ab.mean_dp_active)} act / {_dp(ab.mean_dp_inactive)} inact"
                if ab.ks:
                    text += f" · KS {ab.ks.statistic:.2f}"
            else:
                text += f" · Δp {_dp(ab.mean_dp)}"
        tip = (f"{h.head}: mean {mode.score} {_num(v)} ± {sd:.3f}"
               + (f" (constant part {_num(h.mean_constant)})" if paper else "")
               + f", active on {h.active_count} of {P} prompts"
               + (", differential" if diff else ""))
        parts.append(
            f'<g class=hbar><title>{_e(tip)}</title>'
            f'<rect x="0" y="{y - 2}" width="{W}" height="{row}" fill="{"#f5f3ff" if diff else "none"}"/>'
            f'<text x="4" y="{y + 14}" class="{"hl diff" if diff else "hl"}">{_e(h.head)}</text>'
            + (f'<text x="{label_w - 8}" y="{y + 14}" class="hl diff" text-anchor=end>D</text>' if diff else "")
            + f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1):.1f}" height="{row - 10}" rx="2" '
              f'fill="{_rgba(rgb, 0.8)}"/>'
              f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{y + row / 2 - 2}" y2="{y + row / 2 - 2}" stroke="#334155" '
              f'stroke-width="1" opacity="0.5"/>'
              f'<text x="{label_w + bar_w + 14}" y="{y + 14}" class=ht>{_e(_num(v))}  {_e(text)}</text></g>')
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 6}" y2="{H - 6}" stroke="#475569"/>')
    more = len(heads) - len(shown)
    note = f' <span class="dim small">({more} more heads not shown)</span>' if more > 0 else ""
    diff = trace.differential_heads
    legend = (f'<p class=hint>Mean {_e(mode.score)}, over the prompts (line: ± one std): {_e(mode.note)} '
              f'(--scores {_e(mode.name)}). '
              f'<span class="badge diff">D</span> differential heads (active on 25–75 % of prompts): '
              f'{_e(", ".join(diff)) if diff else "none"}. Δp: mean change in p(token) when the head is removed '
              f'({_e(mode.removed)}).</p>')
    title = f"mean {mode.score}"
    return (f'<section id=heads><h2>Heads by {title}{note}</h2>{legend}'
            f'<svg class=chart viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="heads by {title}">'
            f'{"".join(parts)}</svg></section>')


def _explanations(explanations: dict | None) -> str:
    if not explanations:
        return ""
    rows = []
    for head, r in sorted(explanations.items()):
        if not isinstance(r, dict):
            continue
        bacc, auc = r.get("balanced_accuracy"), r.get("roc_auc")

        def score(v):
            if v is None:
                return "<td class='val dim'>–</td>"
            green = _rgba((22, 163, 74), max(0.0, min(1.0, (v - 0.5) * 2)) * 0.45)  # 0.5 (chance) → none
            return f'<td class=val><span class=pill style="background:{green}">{v:.3f}</span></td>'
        rows.append(f'<tr><td class=hname>{_e(head)}</td><td class=expl>{_e(r.get("explanation") or "–")}</td>'
                    f'{score(bacc)}{score(auc)}</tr>')
    if not rows:
        return ""
    return ('<section id=explanations><h2>Explanations</h2><p class=hint>When each head is active, in an LLM\'s '
            'words, and how well that predicts the head on held-out prompts (0.5 = chance).</p>'
            '<table class=expls><thead><tr><th>head</th><th>explanation</th><th>balanced accuracy</th>'
            f'<th>ROC-AUC</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


# ---- trace --paths (minitf.paths): each differential head's effect by path --------------------------------
def _paths(trace) -> str:
    """A row per differential head: Δpost direct (σ frozen, LN₂ recomputed), via the largest MLPs, via later
    heads (Σ), total; Δp direct and total; the mediated fraction direct / total; then the joint removal."""
    paths = trace.paths
    if paths is None or not paths.heads:
        return ""
    rows = []
    for h in paths.heads:
        mlps = {v.layer: v.effect for v in h.via_mlp}
        largest = ", ".join(f"MLP {k} {_num(mlps[k].mean_dpost)}" for k in h.largest_mlps[:3]) or "–"
        heads = sum(v.effect.mean_dpost for v in h.via_heads) if h.via_heads else None
        mf = h.mediated_fraction
        cells = [_num(h.direct.frozen.mean_dpost), _num(h.direct.recomputed.mean_dpost), _e(largest), _num(heads),
                 _num(h.total.mean_dpost), _dp(h.direct.recomputed.mean_dp), _dp(h.total.mean_dp),
                 _num(mf.dpost, ".2f"), _num(mf.dp, ".2f")]
        rows.append(f'<tr><td class=hname>{_e(h.head)}</td>{"".join(f"<td class=val>{c}</td>" for c in cells)}</tr>')
    joint = ""
    if (j := paths.joint) is not None:
        joint = (f"<p class=hint>{_e(' + '.join(j.heads))} removed at once: Δpost {_num(j.joint.mean_dpost)} vs "
                 f"{_num(j.sum_alone.mean_dpost)} summed alone (interaction {_num(j.interaction.mean_dpost)}); "
                 f"Δp {_dp(j.joint.mean_dp)} vs {_dp(j.sum_alone.mean_dp)}.</p>")
    head = "".join(f"<th>{_e(c)}</th>" for c in (
        "head", "Δpost direct, σ frozen", "direct, LN₂ recomputed", "via the largest MLPs", "via later heads",
        "total (ablation)", "Δp direct", "Δp total", "mediated Δpost", "mediated Δp"))
    return (f'<section id=paths><h2>Direct or through others</h2><p class=hint>Each differential head removed '
            f'({_e(paths.removal)}, ablate with {_e(paths.ablate_with)}) from one path at a time: Δ = clean − path '
            f'removed, means over the prompts; mediated = Σ direct / Σ total (the ablation).</p>'
            f'<table class=paths><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{joint}'
            f'</section>')


def _footer(trace) -> str:
    s = trace.settings
    notes = "".join(f"<li>{_e(n)}</li>" for n in s.origin.notes or [])
    return (f'<footer><p>{_e(s.effects)}</p>{f"<ul>{notes}</ul>" if notes else ""}'
            f'<p>minitf · trace schema {_e(trace.schema_version)} · a reimplementation of Neo, '
            f'Cohen &amp; '
            f'Barez, EMNLP 2024 · this page loads nothing from the network</p></footer>')


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------


def page(trace, explanations: dict | None, histogram: dict | None, script_data: dict) -> str:
    """The whole page from a ``minitf.trace.Trace``: head (CSP, title, style), the sections, the script's data as
    JSON and the script."""
    card = trace.neuron
    title = f"minitf · {card.name} → {_card_token(card)[1]!r}"
    data = _json_for_script(script_data)
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{digest}'; "
           "base-uri 'none'; form-action 'none'")
    body = "".join([_header(trace), _card(trace, histogram), _heads_chart(trace), _explanations(explanations),
                    _paths(trace), _prompts(trace), _footer(trace)])
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><main>{body}</main>\n"
            f'<script type="application/json" id="minitf-data">{data}</script>\n'
            f"<script>{SCRIPT}</script></body></html>\n")
