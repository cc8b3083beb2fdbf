"""A self-contained HTML report of a trace: one file, no network, inline CSS, SVG and one small script.

The page shows, from a trace dict (``minitf.trace``, ideally built with ``per_position=True``), top to bottom:

* a header: the model, where the prompts came from (corpus), the BOS choice and the identity check;
* the neuron card: promoted / suppressed tokens as bars, congruence, rank, and the activation histogram
  from the neuron index when one is given (how many traced prompts fall in each bin is marked under it);
* a bar chart of the candidate heads by mean effect, marking differential heads and their ablation Δp;
* the LLM explanations and their scores, when given;
* every prompt as text, its tokens shaded by the neuron's activation; hovering or clicking a token shows
  the heads' direct effects at that position; under it, the top heads at the traced (last) position and
  the source tokens they looked up, shaded by their share of the head's effect (hovering a head outlines
  them in the text).

Safety: prompts and tokens are untrusted text. Every string that reaches the HTML goes through
``html.escape``; the data the script needs is embedded as JSON in a ``<script type="application/json">``
block with ``<``, ``>`` and ``&`` written as ``\\u003c`` … so that no token can close the block or open a
comment; the script builds its DOM with ``textContent`` only. A Content-Security-Policy meta tag forbids
every load (``default-src 'none'``) and allows only this page's own script, by hash.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import tempfile
from pathlib import Path

from .errors import MinitfError

__all__ = ["render_html", "write_html", "report_extras", "index_histogram"]

HEADS_SHOWN = 16  # heads in the bar chart (by mean effect), plus every differential head
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


def _num(x, fmt: str = "+.3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, fmt).replace("-", "−")


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


def _round(x, digits: int = 4):
    """A float to ``digits`` significant digits (keeps the embedded JSON small); None and ints unchanged."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    return x


def _json_for_script(obj) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>', '&', U+2028 or U+2029 left."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _card_token(card: dict) -> tuple[object, str]:
    """(id, text) of the neuron's token, whether the card has {"token": {"id", "str"}} or "token" + "token_id"."""
    tok = card.get("token")
    if isinstance(tok, dict):
        return tok.get("id", "?"), tok.get("str") if tok.get("str") is not None else "?"
    return card.get("token_id", "?"), tok if isinstance(tok, str) else "?"


def _card_pairs(items) -> list[tuple[str, float]]:
    """Promoted / suppressed tokens as (text, value), from {"token", "value"} dicts or (id, text, value) rows."""
    out = []
    for x in items or []:
        if isinstance(x, dict):
            out.append((str(x.get("token", x.get("str", "?"))), float(x["value"])))
        elif len(x) >= 3:
            out.append((str(x[1]), float(x[2])))
        else:
            out.append((str(x[0]), float(x[1])))
    return out


def _require(trace: dict, *keys: str) -> None:
    if not isinstance(trace, dict):
        raise MinitfError(f"trace: expected a dict from minitf.trace, got {type(trace).__name__}")
    for key in keys:
        if key not in trace:
            raise MinitfError(f"trace: missing key {key!r} (not a trace from minitf.trace?)")


# ---------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------


def _header(trace: dict) -> str:
    card, model, s = trace["neuron"], trace["model"], trace["settings"]
    _, tok = _card_token(card)
    ic = trace.get("identity_check", {})
    rel, err = ic.get("max_rel_error"), ic.get("max_abs_error")
    ok = rel is not None and rel <= 1e-4
    shape = ", ".join(f"{k} {model[k]}" for k in ("n_layer", "n_head", "d_mlp", "n_ctx") if k in model)
    items = [
        ("model", f"<code>{_e(model.get('folder', '?'))}</code> <span class=dim>({_e(shape)})</span>"),
        ("prompts", _e(f"{len(trace['prompts'])} · {s.get('source', 'given')}")),
    ]
    if s.get("corpus"):
        items.append(("corpus", f"<code>{_e(s['corpus'])}</code>"
                                + (f" <span class=dim>split {_e(s['split'])}</span>" if s.get("split") else "")))
    bos = s.get("bos")
    if bos is None and all(p["tokens"][:1] == ["<|endoftext|>"] for p in trace["prompts"]):
        bos = True  # not recorded (a trace() call without settings), but every prompt starts with it
    items.append(("BOS", "unknown" if bos is None else ("&lt;|endoftext|&gt; prepended" if bos else "none")))
    items.append(("rule", _e(f"{s.get('rule', '?')} · {s.get('candidates', '?')} candidate heads"
                              + (" (incl. the neuron's layer)" if s.get("include_same_layer") else ""))))
    items.append(("identity check",
                  f'<span class="pill {"ok" if ok else "warn"}" title="max |Σ terms + constant − pre| over the '
                  f'prompts; relative to Σ|terms|">{"✓ " if ok else ""}{_e(_num(err, ".1e"))} '
                  f'<span class=dim>(rel {_e(_num(rel, ".1e"))})</span></span>'))
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return (f'<header><div class=kicker>minitf trace</div>'
            f'<h1>Neuron <span class=name>{_e(card.get("name", "?"))}</span> pushes '
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
        parts.append(f'<g><title>{_e(tip)}</title><rect x="{x + 2:.1f}" y="{axis_y - h:.1f}" width="{slot - 4:.1f}" '
                     f'height="{max(h, 0):.1f}" rx="2" fill="#94a3b8"/>')
        if c:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{axis_y - h - 3:.1f}" class="ax tiny" '
                         f'text-anchor=middle>{_e(_count(c))}</text>')
        if k % label_every == 0:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{axis_y + 13}" class=ax text-anchor=middle>'
                         f'{_e(_bin_label(lo, hi))}</text>')
        if traced:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{axis_y + 30}" class="ax mark" text-anchor=middle>'
                         f'▲{traced}</text>')
        parts.append("</g>")
    total = histogram.get("positions", sum(counts))
    caption = f"activation over {_count(total)} indexed positions"
    if histogram.get("positive") is not None and total:
        caption += f", positive at {histogram['positive'] / total:.2%}"
    if histogram.get("split"):
        caption += f" ({histogram['split']} split)"
    return (f'<figure class=hist><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="activation histogram">{"".join(parts)}</svg><figcaption>{_e(caption)}; '
            f'<span class=mark>▲n</span>: the traced prompts in that bin</figcaption></figure>')


def _count(n: int) -> str:
    """12 · 3.4k · 5.6M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _card(trace: dict, histogram: dict | None) -> str:
    card = trace["neuron"]
    token_id, _ = _card_token(card)
    stats = []
    if "congruence" in card:
        stats.append(("congruence", _num(card["congruence"], ".3f")))
    if "rank" in card:
        of = f" of {card['layer_size']}" if "layer_size" in card else ""
        stats.append(("rank", f"{card['rank']}{of} in layer {card.get('layer', '?')}"))
    if "kurtosis" in card:
        stats.append(("kurtosis", _num(card["kurtosis"], ".1f")))
    if "skew" in card:
        stats.append(("skew", _num(card["skew"], "+.2f")))
    if card.get("class"):
        stats.append(("class", card["class"]))
    stats.append(("token id", token_id))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in stats)
    scale = max([abs(v) for _, v in _card_pairs(card.get("promoted")) + _card_pairs(card.get("suppressed"))]
                + [0.0]) or 1.0  # one scale for both lists, so their bars compare
    hist = _histogram_svg(histogram, [p["activation"] for p in trace["prompts"]]) if histogram else ""
    if not hist:
        why = (histogram or {}).get("note") or "build the neuron index to see one"
        hist = f'<p class="dim small">no activation histogram ({_e(why)})</p>'
    return (f'<section id=card><h2>The neuron</h2><div class=cardgrid>'
            f'<div><h3>promotes</h3>{_token_bars(card.get("promoted"), POS_RGB, scale)}</div>'
            f'<div><h3>suppresses</h3>{_token_bars(card.get("suppressed"), NEG_RGB, scale)}</div>'
            f'<div><h3>output direction</h3><dl class=stats>{dl}</dl>{hist}</div></div></section>')


def _prompt_scale(prompts: list[dict]) -> float:
    values = [abs(p["activation"]) for p in prompts]
    for p in prompts:
        values += [abs(q["activation"]) for q in p.get("positions") or []]
    return max([v for v in values if math.isfinite(v)] or [0.0]) or 1.0


def _prompt_text(p: dict, n: int, scale: float) -> str:
    positions = p.get("positions") or []
    last = len(p["tokens"]) - 1
    spans = []
    for i, token in enumerate(p["tokens"]):
        act = positions[i]["activation"] if i < len(positions) else (p["activation"] if i == last else None)
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


def _top_heads_table(p: dict, differential: set[str]) -> str:
    heads = p.get("top_heads") or []
    if not heads:
        return ""
    scale = max(abs(h["effect"]) for h in heads) or 1.0
    rows = []
    for h in heads:
        width = 100 * abs(h["effect"]) / scale
        rgb = POS_RGB if h["effect"] >= 0 else NEG_RGB
        badges = ('<span class="badge act" title="active on this prompt">active</span>' if h.get("active") else "")
        if h["head"] in differential:
            badges += '<span class="badge diff" title="differential: active on 25–75 % of the prompts">D</span>'
        sources = []
        # shade: the source's effect (orange raises the neuron, blue lowers it) relative to the head's effect,
        # or to its largest source where sources cancel out (then shares run past 100 %)
        shade_scale = max([abs(h["effect"])] + [abs(x["effect"]) for x in h.get("sources", [])])
        for src in h.get("sources", []):
            share = src["effect"] / h["effect"] if h["effect"] else 0.0
            style = _shade(src["effect"], shade_scale, 0.75)
            tip = f"position {src['position']}: effect {_num(src['effect'])}, attention {src['attention']:.2f}"
            sources.append(f'<span class=src data-pos="{int(src["position"])}" style="{style}" title="{_e(tip)}">'
                           f'{_e(_visible(src["token"])) or "&#8203;"}<sub>{_e(_pct(share))}</sub></span>')
        bias = h.get("bias_share")
        if bias and abs(bias) >= 0.005:  # shown where it rounds to at least 1 %
            sources.append(f'<span class="dim small" title="share of the value bias (no source token)">'
                           f'bias {_e(_pct(bias))}</span>')
        positions = ",".join(str(int(s["position"])) for s in h.get("sources", []))
        rows.append(f'<tr class=hrow data-sources="{_e(positions)}"><td class=hname>{_e(h["head"])}{badges}</td>'
                    f'<td class=hbar><span class=track><span class=bar style="width:{width:.1f}%;'
                    f'background:{_rgba(rgb, 0.75)}"></span></span></td><td class=val>{_e(_num(h["effect"]))}</td>'
                    f'<td class=srcs>{"".join(sources)}</td></tr>')
    return ('<table class=topheads><thead><tr><th>head</th><th colspan=2>effect on pre at the last token</th>'
            f'<th>looked up (share of the head\'s effect)</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _prompts(trace: dict) -> str:
    prompts = trace["prompts"]
    scale = _prompt_scale(prompts)
    differential = set(trace.get("differential_heads", []))
    has_positions = any(p.get("positions") for p in prompts)
    blocks = []
    for n, p in enumerate(prompts):
        tags = []
        if p.get("truncated"):
            tags.append('<span class="badge warn">truncated to the context</span>')
        mined = p.get("mined")
        if mined:
            tags.append(f'<span class="dim small">doc {_e(mined.get("doc_id"))} · '
                        f'position {_e(mined.get("position"))}</span>')
        active = ", ".join(p.get("active_heads", [])) or "none"
        blocks.append(
            f'<article class=prompt data-p="{n}"><div class=phead><span class=pnum>#{n + 1}</span>'
            f'<span class=act style="{_shade(p["activation"], scale)}">activation {_e(_num(p["activation"]))}</span>'
            f'<span class=dim>pre {_e(_num(p.get("pre")))}</span>{"".join(tags)}'
            f'<span class="dim small right">active heads: {_e(active)}</span></div>'
            f'{_prompt_text(p, n, scale)}'
            f'<div class=detail id="detail-{n}" aria-live=polite></div>'
            f'{_top_heads_table(p, differential)}</article>')
    hint = ("Tokens are shaded by the neuron's activation (orange &gt; 0, blue &lt; 0; the traced last token is "
            "underlined). Hover a token to see the heads' direct effects there; click to pin it. "
            "Hover a head to outline the tokens it looked up.")
    if not has_positions:
        hint = ("Only the last token's activation is in this trace (trace with per_position=True to shade every "
                "token). Hover a head to outline the tokens it looked up.")
    order = "in the trace's order" if all(p.get("mined") for p in prompts) else "in the order given"
    return (f'<section id=prompts><h2>Prompts <span class="dim small">({len(prompts)}, {order})</span></h2>'
            f'<p class="hint">{hint}</p>{"".join(blocks)}</section>')


def _heads_chart(trace: dict) -> str:
    heads = trace.get("heads", [])
    if not heads:
        return '<section id=heads><h2>Heads</h2><p class=dim>no candidate heads (a layer-0 neuron)</p></section>'
    shown = heads[:HEADS_SHOWN] + [h for h in heads[HEADS_SHOWN:] if h.get("differential")]
    P = len(trace["prompts"])
    values = [h["mean_effect"] for h in shown]
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
        v = h["mean_effect"]
        diff = h.get("differential")
        rgb = DIFF_RGB if diff else (POS_RGB if v >= 0 else NEG_RGB)
        x0, x1 = sorted((x(0), x(v)))
        sd = h.get("std_effect") or 0.0
        a, b = x(max(lo, v - sd)), x(min(hi, v + sd))
        ab = h.get("ablation")
        text = f"{h.get('active_count', 0)}/{P}"
        if ab:
            if diff and ab.get("mean_dp_active") is not None:
                text += f" · Δp {_dp(ab.get('mean_dp_active'))} act / {_dp(ab.get('mean_dp_inactive'))} inact"
                if ab.get("ks"):
                    text += f" · KS {ab['ks']['statistic']:.2f}"
            else:
                text += f" · Δp {_dp(ab.get('mean_dp'))}"
        tip = (f"{h['head']}: mean effect {_num(v)} ± {sd:.3f}, active on {h.get('active_count', 0)} of {P} prompts"
               + (", differential" if diff else ""))
        parts.append(
            f'<g class=hbar><title>{_e(tip)}</title>'
            f'<rect x="0" y="{y - 2}" width="{W}" height="{row}" fill="{"#f5f3ff" if diff else "none"}"/>'
            f'<text x="4" y="{y + 14}" class="{"hl diff" if diff else "hl"}">{_e(h["head"])}</text>'
            + (f'<text x="{label_w - 8}" y="{y + 14}" class="hl diff" text-anchor=end>D</text>' if diff else "")
            + f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1):.1f}" height="{row - 10}" rx="2" '
              f'fill="{_rgba(rgb, 0.8)}"/>'
              f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{y + row / 2 - 2}" y2="{y + row / 2 - 2}" stroke="#334155" '
              f'stroke-width="1" opacity="0.5"/>'
              f'<text x="{label_w + bar_w + 14}" y="{y + 14}" class=ht>{_e(_num(v))}  {_e(text)}</text></g>')
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 6}" y2="{H - 6}" stroke="#475569"/>')
    more = len(heads) - len(shown)
    note = f' <span class="dim small">({more} more heads not shown)</span>' if more > 0 else ""
    diff = trace.get("differential_heads", [])
    legend = (f'<p class=hint>Mean direct effect on the pre-activation over the prompts (line: ± one std). '
              f'<span class="badge diff">D</span> differential heads (active on 25–75 % of prompts): '
              f'{_e(", ".join(diff)) if diff else "none"}. Δp: mean change in p(token) when the head is zeroed.</p>')
    return (f'<section id=heads><h2>Heads by mean effect{note}</h2>{legend}'
            f'<svg class=chart viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="heads by mean effect">'
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


def _footer(trace: dict) -> str:
    s = trace["settings"]
    notes = "".join(f"<li>{_e(n)}</li>" for n in s.get("notes", []))
    return (f'<footer><p>{_e(s.get("effects", ""))}</p>{f"<ul>{notes}</ul>" if notes else ""}'
            f'<p>minitf · trace schema {_e(trace.get("schema_version", "?"))} · a reimplementation of Neo, '
            f'Cohen &amp; '
            f'Barez, EMNLP 2024 · this page loads nothing from the network</p></footer>')


# ---------------------------------------------------------------------------------------------------------
# The data for the script, the script and the style
# ---------------------------------------------------------------------------------------------------------


def _script_data(trace: dict) -> dict:
    prompts = []
    for p in trace["prompts"]:
        prompts.append({
            "tokens": p["tokens"],
            "activation": _round(p["activation"]),
            "pre": _round(p.get("pre")),
            "positions": [{"a": _round(q["activation"]), "pre": _round(q.get("pre")),
                           "heads": [[h["head"], _round(h["effect"])] for h in q.get("heads", [])]}
                          for q in p.get("positions") or []],
            "top": [[h["head"], _round(h["effect"])] for h in p.get("top_heads") or []],
        })
    return {"prompts": prompts, "differential": trace.get("differential_heads", [])}


_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("minitf-data").textContent);
  var diff = {};
  data.differential.forEach(function (h) { diff[h] = true; });
  function fmt(x) {
    if (x === null || x === undefined) return "\u2013";
    return (x < 0 ? "\u2212" : "+") + Math.abs(x).toFixed(3);
  }
  function visible(s) { return s.replace(/\r/g, "\u240d").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5"); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function show(box, i) {
    var n = +box.getAttribute("data-p"), p = data.prompts[n], last = p.tokens.length - 1;
    var panel = document.getElementById("detail-" + n);
    var q = p.positions[i];
    var heads = q ? q.heads : (i === last ? p.top : null);
    var act = q ? q.a : (i === last ? p.activation : null);
    var pre = q ? q.pre : (i === last ? p.pre : null);
    panel.textContent = "";
    var head = el("div", "dhead");
    head.appendChild(el("span", "dim", "position " + i + (i === last ? " (traced)" : "") + " "));
    head.appendChild(el("span", "tok", visible(p.tokens[i]) || "\u200b"));
    head.appendChild(el("span", "", " activation " + fmt(act) + "  pre " + fmt(pre)));
    if (box.classList.contains("pinned")) head.appendChild(el("span", "dim small", "  (pinned: click again to unpin)"));
    panel.appendChild(head);
    if (!heads) {
      panel.appendChild(el("div", "dim small", "this trace has no per-position head effects"));
      return;
    }
    var scale = 0;
    heads.forEach(function (h) { scale = Math.max(scale, Math.abs(h[1])); });
    var list = el("div", "dheads");
    heads.forEach(function (h) {
      var row = el("span", "dh" + (diff[h[0]] ? " isdiff" : ""));
      row.appendChild(el("b", "", h[0]));
      var track = el("span", "track mini"), bar = el("span", "bar");
      bar.style.width = (scale ? 100 * Math.abs(h[1]) / scale : 0).toFixed(1) + "%";
      bar.style.background = h[1] >= 0 ? "rgba(234,88,12,0.75)" : "rgba(37,99,235,0.75)";
      track.appendChild(bar);
      row.appendChild(track);
      row.appendChild(el("span", "val", fmt(h[1])));
      list.appendChild(row);
    });
    panel.appendChild(list);
    Array.prototype.forEach.call(box.querySelectorAll(".t.sel"), function (t) { t.classList.remove("sel"); });
    var t = box.querySelector('.t[data-i="' + i + '"]');
    if (t) t.classList.add("sel");
  }
  Array.prototype.forEach.call(document.querySelectorAll("article.prompt"), function (box) {
    var n = +box.getAttribute("data-p"), last = data.prompts[n].tokens.length - 1;
    var text = box.querySelector(".ptext");
    var pinned = null;
    function token(e) {
      var t = e.target.closest ? e.target.closest(".t") : null;
      return t && text.contains(t) ? t : null;
    }
    text.addEventListener("mouseover", function (e) {
      var t = token(e);
      if (t && pinned === null) show(box, +t.getAttribute("data-i"));
    });
    text.addEventListener("mouseleave", function () { if (pinned === null) show(box, last); });
    text.addEventListener("click", function (e) {
      var t = token(e);
      if (!t) return;
      var i = +t.getAttribute("data-i");
      pinned = pinned === i ? null : i;
      box.classList.toggle("pinned", pinned !== null);
      show(box, i);
    });
    Array.prototype.forEach.call(box.querySelectorAll("tr.hrow"), function (row) {
      var positions = (row.getAttribute("data-sources") || "").split(",").filter(Boolean);
      function mark(on) {
        positions.forEach(function (s) {
          var t = text.querySelector('.t[data-i="' + s + '"]');
          if (t) t.classList.toggle("looked", on);
        });
      }
      row.addEventListener("mouseenter", function () { mark(true); });
      row.addEventListener("mouseleave", function () { mark(false); });
    });
    show(box, last);
  });
  document.documentElement.setAttribute("data-ready", "1");
})();
"""

_STYLE = """
:root{--fg:#0f172a;--dim:#64748b;--line:#e2e8f0;--bg:#f8fafc;--card:#fff;--accent:#ea580c;--diff:#7c3aed}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
  font:15px/1.5 system-ui,-apple-system,"Segoe UI","DejaVu Sans",Roboto,sans-serif}
main{max-width:1120px;margin:0 auto;padding:24px 28px 40px}
header{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:18px 22px;margin-bottom:18px}
.kicker{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:var(--dim)}
h1{font-size:26px;margin:2px 0 10px;font-weight:650}
h1 .name{font-family:"DejaVu Sans Mono",ui-monospace,Menlo,Consolas,monospace}
h2{font-size:18px;margin:0 0 8px}
h3{font-size:13px;margin:0 0 6px;color:var(--dim);text-transform:uppercase;letter-spacing:.05em;font-weight:600}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:16px 20px;margin-bottom:18px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;font-size:14px}
dl.meta dt,dl.stats dt{color:var(--dim)}
dl.meta dd,dl.stats dd{margin:0}
dl.stats{display:grid;grid-template-columns:max-content 1fr;gap:1px 12px;margin:0 0 10px;font-size:14px}
code{font-family:"DejaVu Sans Mono",ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.dim{color:var(--dim)}
.small{font-size:12.5px}
.hint{color:var(--dim);font-size:13px;margin:0 0 12px}
.tok,.src{font-family:"DejaVu Sans Mono",ui-monospace,Menlo,Consolas,monospace;white-space:pre;background:#f1f5f9;
  border:1px solid var(--line);border-radius:4px;padding:0 4px;font-size:13px}
.tok.big{font-size:22px;padding:0 8px;background:#fff7ed;border-color:#fdba74}
.pill{display:inline-block;border-radius:999px;padding:0 8px;font-size:13px}
.pill.ok{background:#dcfce7;color:#166534}
.pill.warn{background:#fef3c7;color:#92400e}
.badge{display:inline-block;font-size:11px;border-radius:4px;padding:0 4px;margin-left:6px;vertical-align:1px;
  font-weight:600}
.badge.diff{background:#ede9fe;color:var(--diff)}
.badge.act{background:#ffedd5;color:#9a3412}
.badge.warn{background:#fef3c7;color:#92400e}
.cardgrid{display:grid;grid-template-columns:1fr 1fr 360px;gap:22px}
.bars{display:grid;grid-template-columns:minmax(60px,max-content) 1fr max-content;align-items:center;gap:5px 8px}
.bars .tok{overflow:hidden;text-overflow:ellipsis;max-width:150px}
.track{display:block;height:10px;background:#f1f5f9;border-radius:3px;overflow:hidden;min-width:40px}
.track.mini{display:inline-block;width:70px;height:8px;vertical-align:middle;margin:0 6px}
.bar{display:block;height:100%;border-radius:3px}
.val{font-variant-numeric:tabular-nums;text-align:right;font-size:13px;white-space:nowrap}
figure.hist{margin:4px 0 0}
figure.hist figcaption{font-size:12px;color:var(--dim)}
svg .ax{font-size:11px;fill:#64748b}
svg .ax.tiny{font-size:9.5px}
svg .mark{fill:#ea580c;font-weight:600}
.mark{color:#ea580c;font-weight:600}
svg .hl{font-family:"DejaVu Sans Mono",ui-monospace,Menlo,monospace;font-size:13px;fill:#0f172a}
svg .hl.diff{fill:#7c3aed;font-weight:700}
svg .ht{font-size:12.5px;fill:#334155;white-space:pre}
svg.chart{display:block;max-width:100%}
article.prompt{border-top:1px solid var(--line);padding:12px 0 10px}
article.prompt:first-of-type{border-top:0}
.phead{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap;margin-bottom:6px}
.phead .right{margin-left:auto}
.pnum{font-weight:700;color:var(--dim)}
.act{border-radius:4px;padding:0 6px;font-variant-numeric:tabular-nums;font-weight:600}
.ptext{font-family:"DejaVu Sans Mono",ui-monospace,Menlo,Consolas,monospace;font-size:14px;line-height:1.9;
  white-space:pre-wrap;word-break:break-word;background:#fcfcfd;border:1px solid var(--line);border-radius:8px;
  padding:8px 10px}
.ptext .t{border-radius:3px;padding:1px 0;cursor:pointer;box-shadow:inset 0 0 0 0.5px rgba(15,23,42,.08)}
.ptext .t:hover{outline:1px solid #475569}
.ptext .t.special{color:#94a3b8;font-size:11px}
.ptext .t.last{text-decoration:underline 2px var(--accent);text-underline-offset:4px;font-weight:700}
.ptext .t.sel{outline:2px solid #0f172a}
.ptext .t.looked{outline:2px dashed var(--diff);outline-offset:1px}
.detail{min-height:30px;margin:8px 0 6px;font-size:13px}
.dhead{margin-bottom:3px}
.dheads{display:flex;flex-wrap:wrap;gap:4px 18px}
.dh{white-space:nowrap}
.dh b{font-family:"DejaVu Sans Mono",ui-monospace,Menlo,monospace;font-weight:600}
.dh.isdiff b{color:var(--diff)}
article.pinned .detail{background:#f8fafc;border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:13.5px}
th{text-align:left;font-weight:600;color:var(--dim);font-size:12px;border-bottom:1px solid var(--line);padding:3px 8px}
td{padding:3px 8px;border-bottom:1px solid #f1f5f9;vertical-align:middle}
td.hname{font-family:"DejaVu Sans Mono",ui-monospace,Menlo,monospace;white-space:nowrap;width:1%}
td.hbar{width:120px}
td.srcs .src{margin-right:6px;display:inline-block;line-height:1.6}
td.srcs sub{font-family:system-ui,"DejaVu Sans",sans-serif;font-size:10px;color:#475569;margin-left:3px;
  vertical-align:0}
tr.hrow:hover{background:#faf5ff}
td.expl{white-space:pre-wrap}
footer{color:var(--dim);font-size:12.5px;padding:0 4px}
@media (max-width:900px){.cardgrid{grid-template-columns:1fr}}
"""


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------


def render_html(trace: dict, explanations: dict | None = None, histogram: dict | None = None) -> str:
    """The trace as one self-contained HTML page (see the module docstring).

    ``explanations``: {head: {"explanation", "balanced_accuracy", "roc_auc"}} (e.g. ``ResultStore.load()``);
    ``histogram``: the neuron's activation histogram {"edges": [...], "counts": [...]} from the index.
    """
    _require(trace, "neuron", "model", "settings", "prompts", "heads")
    if not trace["prompts"]:
        raise MinitfError("trace: no prompts")
    card = trace["neuron"]
    title = f"minitf · {card.get('name', 'neuron')} → {_card_token(card)[1]!r}"
    data = _json_for_script(_script_data(trace))
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{digest}'; "
           "base-uri 'none'; form-action 'none'")
    body = "".join([_header(trace), _card(trace, histogram), _heads_chart(trace), _explanations(explanations),
                    _prompts(trace), _footer(trace)])
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body><main>{body}</main>\n"
            f'<script type="application/json" id="minitf-data">{data}</script>\n'
            f"<script>{_SCRIPT}</script></body></html>\n")


def write_html(path, trace: dict, explanations: dict | None = None, histogram: dict | None = None) -> Path:
    """Render the report and write it to ``path`` atomically (a temp file beside it, then ``os.replace``)."""
    path = Path(path)
    page = render_html(trace, explanations, histogram)
    if path.is_dir():
        raise MinitfError(f"{path}: is a folder; give a file name such as report.html")
    if not path.parent.is_dir():
        raise MinitfError(f"{path}: the folder {path.parent} does not exist")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise MinitfError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


def report_extras(model, neuron, trace: dict, cache_dir=None) -> tuple[dict | None, dict | None]:
    """What the CLI adds to a report when it exists: the explain/score results stored for this model and
    neuron (``minitf.explain.ResultStore``) and the neuron's activation histogram from the index of the
    trace's corpus (or the model's own corpus). A missing or stale index gives {"note": why} instead."""
    from .explain import ResultStore, default_cache_dir

    explanations = None
    if model.folder is not None:  # results are stored per model folder
        store = ResultStore(Path(cache_dir) if cache_dir else default_cache_dir(), model.folder, str(neuron))
        explanations = store.load() or None
    return explanations, index_histogram(model, neuron, trace)


def index_histogram(model, neuron, trace: dict, index=None) -> dict | None:
    """{"edges", "counts", "positions", "positive", "split"} from the neuron index, or {"note": why not}.
    ``index``: the trace's corpus's index, already loaded (``minitf.study``)."""
    from .corpus import default_corpus
    from .index import load_index

    s = trace.get("settings", {})
    corpus = s.get("corpus") or default_corpus(model)
    if corpus is None:
        return None
    split = s.get("split") if s.get("split") in ("train", "test") else None
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
