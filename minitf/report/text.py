"""Plain-text views of a trace and a neuron card, as lines for the CLI to print."""
from __future__ import annotations

import json

from minitf.util.fmt import count, num


def show(text: str, width: int = 70) -> str:
    """A one-line quotation of ``text``: newlines as ⏎, the start elided to keep the end (where it fires)."""
    text = text.replace("\r\n", "⏎").replace("\n", "⏎")
    return repr(text if len(text) <= width else "…" + text[-(width - 1):])


def _tokens(pairs, k=6) -> str:
    return " · ".join(f"{t.token!r} {t.value:+.3f}" for t in (pairs or [])[:k])


def card_lines(card, folder: str = "") -> list[str]:
    """A trace's neuron card (``minitf.trace.NeuronCard``) as three or four lines."""
    lines = [f"neuron {card.name}{' of ' + folder if folder else ''}: pushes {card.token.text!r} "
             f"(congruence {card.congruence:.3f}, rank {card.rank} of {card.layer_size} in layer {card.layer})",
             f"  promotes:   {_tokens(card.promoted)}",
             f"  suppresses: {_tokens(card.suppressed)}"]
    if card.kurtosis is not None:
        kind = card.kind or "neither prediction nor suppression"
        lines.append(f"  vocabulary moments: kurtosis {card.kurtosis:.1f}, skew {card.skew:+.2f} ({kind})")
    return lines


def trace_lines(result, max_prompts: int = 20) -> list[str]:
    """The human view of a ``minitf.trace.Trace``: card, prompts with their top heads and looked-up tokens, head
    table, identity check."""
    s, mode = result.settings, result.mode
    lines = card_lines(result.neuron, result.model.folder) + [""]
    lines.append(f"{count(len(result.prompts), 'prompt')} ({s.origin.source or 'given'}); rule {s.rule}; "
                 f"scores {s.scores}; "
                 f"{count(s.candidates, 'candidate head')} (layers < {result.neuron.layer}"
                 f"{' and the same layer' if s.include_same_layer else ''})")
    if s.protocol is not None:
        lines.append(s.protocol.line())
    lines.append(f"note: {s.effects}")
    lines.append(f"note: {s.scores_note}")
    lines.append(f"per prompt: the top heads by {mode.score}, * = active, then the "
                 "constant part; ← the source tokens of the context part: their part of it (attention)")
    for n, p in enumerate(result.prompts[:max_prompts], 1):
        extra = "  [truncated to the context]" if p.truncated else ""
        lines.append("")
        lines.append(f"#{n:<3} post {p.activation:+.3f}  pre {p.pre:+.3f}  {show(p.text)}{extra}")
        for h in p.top_heads:
            mark = "*" if h.active else " "
            src = ", ".join(f"{x.token!r}@{x.position} {x.effect:+.2f} (attn {x.attention:.2f})" for x in h.sources)
            lines.append(f"      {h.head:<7}{mode.of(h):+8.3f}{mark} {h.constant:+7.3f} ← {src}")
    if len(result.prompts) > max_prompts:
        lines.append(f"… {count(len(result.prompts) - max_prompts, 'more prompt')} (--json shows all)")
    lines += ["", f"heads by mean {mode.score} (D = differential: active on 25–75 % of prompts; ablation: "
                  f"{mode.removed})",
              f"{'head':<8}{'mean':>8}{'std':>8}{'const':>8}{'active':>9}  D  "
              f"{'Δpost act/inact':>17}  {'Δp act/inact':<17}  {'KS D':>5}"]
    P = len(result.prompts)
    for h in result.heads[:15]:
        ab = h.ablation

        def pair(a, b):
            return f"{_num(a)}/{_num(b)}"
        abl = (f"{pair(ab.mean_dpost_active, ab.mean_dpost_inactive):>17}  "
               f"{_num(ab.mean_dp_active, '+.1e') + '/' + _num(ab.mean_dp_inactive, '+.1e'):<17}  "
               f"{(format(ab.ks.statistic, '.2f') if ab.ks else '–'):>5}") if ab else ""
        lines.append(f"{h.head:<8}{mode.mean(h):+8.3f}{mode.std(h):8.3f}{h.mean_constant:+8.3f}{h.active_count:>5}/{P:<3}"
                     f"  {'D' if h.differential else ' '}  {abl}")
    if len(result.heads) > 15:
        lines.append(f"… {count(len(result.heads) - 15, 'more head')} (--json shows all)")
    diff = result.differential_heads
    lines.append(f"differential heads: {', '.join(diff) if diff else 'none'}")
    ic = result.identity_check
    lines.append(f"identity check: max |Σ terms + constant − pre| = {ic.max_abs_error:.2e} "
                 f"(relative to Σ|terms|: {ic.max_rel_error:.1e})")
    if result.paths is not None:  # trace --paths
        lines += [""] + paths_lines(result.paths)
    return lines + why_lines(result)


# ---- trace --why (minitf.why) ---------------------------------------------------------------------------
def why_lines(result, max_prompts: int = 3, k: int = 3) -> list[str]:
    """For each differential head (else the top head by mean score), at up to ``max_prompts`` prompts that list
    it (active ones first): for each of its sources, the top ``k`` (query × key) pairs by S̃ and the top ``k``
    components that wrote what it carried. Empty when the trace has no ``why`` (``trace --why``)."""
    listed = [(n, p, h) for n, p in enumerate(result.prompts, 1) for h in p.top_heads if h.why is not None]
    if not listed:
        return []
    names = result.differential_heads or [h.head for h in result.heads[:1]]
    lines = ["", f"why the {'differential heads' if result.differential_heads else 'top head'} looked there (--why): "
                 "at the last token t, for each source s the score S = q_t·k_s/√Dh",
             "  and S̃ = S − Σ_s' p[t, s']·S (what moves the attention); looked: the top pairs query component × "
             "key component by S̃ (their S);",
             "  took: the components at s that wrote what the head carried from there (its context part, = their sum)"]
    for name in names:
        here = sorted((x for x in listed if x[2].head == name), key=lambda x: not x[2].active)[:max_prompts]
        if not here:
            lines += ["", f"{name}: not among any prompt's listed heads"]
        for n, p, h in here:
            lines += ["", f"{name} at #{n}{' (active)' if h.active else ''}  {show(p.text)}"]
            for s in h.why.sources:
                lines.append(f"    ← {p.tokens[s.position]!r}@{s.position}  attn {s.attention:.2f}  S {s.score:+.3f}  "
                             f"S̃ {s.centred:+.3f}  (Σ pairs − S: {s.error:.0e})")
                lines.append("        looked: " + " · ".join(f"{x.query}×{x.key} {x.centred:+.3f} ({x.score:+.3f})"
                                                             for x in s.pairs[:k]))
                lines.append("        took:   " + " · ".join(f"{c.component} {c.effect:+.3f}" for c in s.carried[:k])
                             + f"  (= {s.context:+.3f} in all)")
    return lines


# ---- trace --paths (minitf.paths) ------------------------------------------------------------------------
def paths_lines(paths) -> list[str]:
    """A ``minitf.paths.PathsRecord`` as one table per head: each path's mean Δpre, Δpost, Δp (Δ = clean − with
    the path removed), the mediated fraction direct / total, and the joint removal vs the sum alone."""
    lines = [f"paths of {paths.neuron}: each differential head's effect by path (removal {paths.removal}, ablate "
             f"with {paths.ablate_with})",
             "note: Δ = clean − with the path removed, means over the prompts; the direct path's Δp goes "
             "through the neuron alone"]
    if not paths.heads:
        return lines + ["no differential head: no path to split"]

    def row(name, e):
        return f"  {name:<24}{_num(e.mean_dpre):>9}{_num(e.mean_dpost):>9}  {_num(e.mean_dp, '+.2e'):>10}"

    for h in paths.heads:
        lines += ["", f"{h.head:<26}{'Δpre':>9}{'Δpost':>9}  {'Δp':>10}",
                  row("direct, σ frozen", h.direct.frozen), row("direct, LN₂ recomputed", h.direct.recomputed)]
        lines += [row(f"via MLP {v.layer}" + (" *" if v.layer in h.largest_mlps[:3] else ""), v.effect)
                  for v in h.via_mlp]
        lines += [row(f"via the heads of layer {v.layer}", v.effect) for v in h.via_heads]
        lines += [row("total (the ablation)", h.total), row("rest (2nd order)", h.rest)]
        mf = h.mediated_fraction
        split = "".join(f"; {name} Δpost {_num(f.dpost, '.2f')}, Δp {_num(f.dp, '.2f')}" for name, f in
                        (("active", h.mediated_fraction_active), ("inactive", h.mediated_fraction_inactive)) if f)
        lines.append(f"  mediated fraction direct / total: Δpost {_num(mf.dpost, '.2f')}, Δp {_num(mf.dp, '.2f')}"
                     f"{split}")
        if h.via_mlp:
            lines.append(f"  * largest via MLP: {', '.join(f'MLP {k}' for k in h.largest_mlps[:3])}")
    if (j := paths.joint) is not None:
        lines += ["", f"{' + '.join(j.heads)} removed at once vs the sum of each alone (interaction = joint − sum):"]
        for name, e in (("Δpost", "mean_dpost"), ("Δp", "mean_dp")):
            spec = "+.3f" if name == "Δpost" else "+.2e"
            lines.append(f"  {name:<6} joint {_num(getattr(j.joint, e), spec)}  sum alone "
                         f"{_num(getattr(j.sum_alone, e), spec)}  interaction {_num(getattr(j.interaction, e), spec)}")
    return lines


def _num(x, spec: str = "+.3f") -> str:
    return num(x, spec)


def _tok(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def neuron_table_lines(result, d_mlp: int) -> list[str]:
    """The ``neurons`` command's tables (``minitf.selection.NeuronTables``): the protocol, the reject list, then
    per layer its neurons with congruence, rank, vocabulary moments, token and promoted / suppressed tokens."""
    p = result.protocol.record()
    lines = [p.line(("neuron_walk", "token_filter", "exclude")) if not result.random else
             f"protocol {p.name}: random neurons (the paper's baseline), no filter, no reject list"]
    if not result.random:
        skipped = f"; skipped {', '.join(str(x.neuron) for x in result.rejected)}" if result.rejected else ""
        lines.append(f"exclude: {result.reject.note}{skipped}")
    lines.append("")
    for layer, rows in result.tables.items():
        lines.append(f"layer {layer}: {'' if result.random else 'top '}{len(rows)} of {d_mlp} neurons by "
                     f"{'draw' if result.random else 'congruence'} over {result.rule}")
        lines.append(f"  {'neuron':<10} {'congr.':>7} {'rank':>5} {'kurt.':>7} {'skew':>6} {'class':<11} "
                     f"{'token':<14} promoted | suppressed")
        for r in rows:
            promoted = ", ".join(f"{_tok(t)} {v:.2f}" for _, t, v in r["promoted"])
            suppressed = ", ".join(f"{_tok(t)} {v:.2f}" for _, t, v in r["suppressed"])
            lines.append(f"  {r['name']:<10} {r['congruence']:7.3f} {r['rank']:5d} {r['kurtosis']:7.1f} "
                         f"{r['skew']:6.2f} {r['class'] or '-':<11} {_tok(r['token'] or ''):<14} {promoted} | "
                         f"{suppressed}")
        lines.append("")
    return lines
