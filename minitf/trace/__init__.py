"""``trace``: which attention heads switch a neuron on, over a set of prompts — the paper's steps 2, 3 and 5
(numbered as in the README: 1 next-token neurons, 2 the prompts that fire them, 3 the heads that drive them,
4 an LLM explanation, scored, 5 the ablation check).

* step 2, prompts: given texts, or the neuron's top-activating prompts mined from a corpus (``minitf.prompts``);
* step 3, heads: one forward pass up to the neuron's layer records what ``minitf.attribution`` needs; every
  component's exact direct effect on the neuron's pre-activation at each prompt's last token, and the
  identity check max |Σ terms + constant − pre|; the paper's rules (``minitf.heads``) mark active heads per
  prompt and differential heads per neuron; for the top heads, the source tokens they looked up (their
  context part split over source positions). ``scores`` (``minitf.scores``) says what selects and ranks
  heads: "paper" each head's context part (the authors' scores / σ), "exact" its whole term (context +
  constant part);
* step 5, ablation (``minitf.ablation``): remove each top head by the selecting score, and every
  differential head, and measure Δpost and Δp(token) — "paper"
  replaces z_h by its constant value part (TransformerLens's ``hook_v`` zeroed on folded weights), "exact"
  zeroes z_h.

The result is a ``Trace`` record; ``Trace.to_json()`` is the stable schema (``docs/trace.schema.json``,
documented in the README) that the CLI prints and the study stores, ``Trace.from_json`` reads it back.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from minitf.ablation import ablate_heads, ks_2samp
from minitf.attribution import NEEDED, direct_effects, head_sources, head_value_constant
from minitf.errors import MinitfError
from minitf.heads import active_mask, both_classes, candidate_heads, in_band
from minitf.model import Model, Run
from minitf.names import Neuron, check_neuron
from minitf.paths import ABLATE_WITH, PathsRecord, head_paths
from minitf.prompts import Mined, Prompt, prompts_from_texts, read_prompt_file
from minitf.runs import TRACE_BATCH_BYTES, trace_batches
from minitf.protocol import Protocol, get_protocol
from minitf.scores import DEFAULT, scores_mode
from minitf.why import NEEDED as WHY_NEEDED, check_model as why_check, top_source_positions, why_for_heads

from minitf.trace.records import (  # noqa: F401  (the records are the trace's API: minitf.trace.Trace, …)
    KS, SCHEMA_VERSION, Ablation, Components, HeadRecord, IdentityCheck, ModelShape, NeuronCard, Position,
    PositionHead, PromptOrigin, PromptRecord, Settings, Source, TokenRef, TokenValue, TopHead, Trace)
SAME_LAYER_NOTE = ("`include_same_layer` has nothing to add: in the parallel residual form the neuron reads its "
                   "layer's resid_pre, which that layer's heads do not write")
EFFECTS_NOTE = ("effects are exact direct effects on the neuron's pre-activation, LayerNorm-2's σ frozen; a head's "
                "effect = its context part (what it looked up) + its constant part ((b_V + β₁W_V)·W_O through W_in)")
KS_MIN_PROMPTS = 5  # the ablation's KS statistic needs this many active and inactive prompts


@dataclass(frozen=True)
class TraceOptions:
    rule: str | None = None  # active heads: "sigma2" (mean + 2·std) or "top3"; None: the protocol's head_rule
    include_same_layer: bool = False  # candidates include the neuron's own layer
    scores: str = DEFAULT  # what selects and ranks heads, and how the ablation removes one (``minitf.scores``)
    top_heads: int = 5  # heads listed per prompt
    sources: int = 3  # source tokens shown per listed head
    ablate: int = 5  # heads ablated: the top ones by mean selecting score, plus every differential head
    per_position: bool = False  # also each position's activation and top head effects (for the HTML report)
    protocol: str | Protocol = "neo2024"  # minitf.protocol: the protocol whose choices apply (neo2024, neo2023, minitf)

    def resolved(self) -> Protocol:
        """The protocol with this trace's flags applied: ``rule`` given overrides head_rule (the record says so)."""
        return get_protocol(self.protocol, head_rule=self.rule)

    # ---- --why (minitf.why): each listed head's score split into (query × key) pairs, its carried part by component
    why: bool = False

    # ---- paths (``trace --paths``, minitf.paths) ----
    paths: bool = False  # also split each differential head's effect by path (direct, via each MLP, total)
    ablate_with: str = "zero"  # the paths' removal: "zero" (as the ablation) or "mean" (over the prompts)


def trace(model: Model, neuron: Neuron, prompts: list[Prompt], options: TraceOptions | None = None,
          card: NeuronCard | None = None, origin: PromptOrigin | None = None) -> Trace:
    """Trace ``neuron`` over ``prompts``: a ``Trace`` (its ``to_json()``: the README's schema). Each ablated
    head's per-prompt drops (Δpost [P], Δp [P]) are on its record, ``HeadRecord.ablation`` (not in the JSON).
    ``origin``: where the prompts came from, recorded in the settings."""
    if not prompts:
        raise MinitfError("no prompts to trace")
    options = options or TraceOptions()
    if options.why:  # ---- --why: refused before any work where the split does not apply
        why_check(model)
    proto = options.resolved()  # head_rule and band
    mode = scores_mode(options.scores)
    if options.paths and options.ablate_with not in ABLATE_WITH:  # --paths
        raise MinitfError(f"`ablate_with` {options.ablate_with!r}: choose zero or mean", param="ablate_with")
    if card is None:
        from minitf.neurons import neuron_card

        card = card_record(neuron_card(model, neuron), model.cfg.d_mlp)
    # parallel residual (Pythia): the neuron's LN₂ reads resid_pre, its own layer's heads add nothing to it
    same_layer = options.include_same_layer and not model.cfg.parallel_residual
    if options.include_same_layer and not same_layer:
        origin = replace(origin or PromptOrigin(), notes=[*((origin and origin.notes) or []), SAME_LAYER_NOTE])
    candidates = candidate_heads(neuron.layer, model.cfg.n_head, same_layer)
    layers = np.array([h.layer for h in candidates], int)  # [N]
    indices = np.array([h.head for h in candidates], int)  # [N]
    by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i].tokens))  # batches of like lengths
    batches = [[by_length[j] for j in b]
               for b in trace_batches(model, neuron, [prompts[i].tokens for i in by_length])]
    back = np.argsort(np.concatenate(batches), kind="stable")  # [P]: batch order → prompt order
    chunks: dict[str, list[np.ndarray]] = {"effect": [], "context": [], "constant": [], "active": [], "errors": [],
                                           "relative": []}
    per_prompt = []
    kept, kept_bytes = [], 0  # per batch, while small: what its ablation reruns from (no clean run from layer 0)
    for batch in batches:  # pass 1: effects, active heads and the per-prompt records, one bounded batch at a time
        run = model.run([prompts[i].tokens for i in batch], stop_at_layer=neuron.layer,  # resid_pre: ablation
                        keep=NEEDED | {"resid_pre"} | (WHY_NEEDED if options.why else set()))
        fx = direct_effects(model, run, neuron)
        post = run.neuron(neuron)["post"][np.arange(len(batch)), run.lengths - 1]  # [B]
        parts = {name: a[:, layers, indices] for name, a in  # each [B, N]
                 (("effect", fx.heads), ("context", fx.head_context), ("constant", fx.head_constant))}
        active = active_mask(parts[mode.selects], proto.head_rule)  # [B, N]: each prompt's own rule
        per_prompt += [_prompt_record(model, run, fx, neuron, candidates, parts[mode.selects], parts, active, post,
                                      row, prompts[i], options, mode) for row, i in enumerate(batch)]
        errors = np.abs(fx.total() - fx.pre)  # [B]
        for name, a in (*parts.items(), ("active", active), ("errors", errors),
                        ("relative", errors / np.maximum(fx.magnitude(), 1e-30))):
            chunks[name].append(a)
        if len(batches) > 1:
            cache = {("resid_pre", k): run["resid_pre", k] for k in range(neuron.layer + 1)}  # [B, T, D] each
            cache["post", neuron.layer] = run["post", neuron.layer][..., [neuron.index]]  # [B, T, 1]
            kept_bytes += sum(a.nbytes for a in cache.values())
            kept.append(Run(run.tokens, run.lengths, None, cache, {neuron.layer: [neuron.index]})
                        if kept_bytes <= TRACE_BATCH_BYTES else None)
            run = fx = cache = None  # freed before the next batch's run is made (one batch's arrays at a time)
    per_prompt = [per_prompt[j] for j in back]
    parts = {name: np.concatenate(chunks[name])[back] for name in ("effect", "context", "constant")}  # each [P, N]
    effects, active = parts[mode.selects], np.concatenate(chunks["active"])[back]  # [P, N], [P, N]
    is_differential = in_band(active.sum(0), len(prompts), proto.band)  # [N]
    order = np.argsort(-effects.mean(0), kind="stable")  # heads by mean selecting score
    to_ablate = [candidates[i] for i in sorted(set(order[:options.ablate].tolist())
                                               | set(np.flatnonzero(is_differential).tolist()))]
    replace_with = None
    if mode.ablation_keeps_constant:  # removed as the paper does: z_h ← its constant part
        constants = {layer: head_value_constant(model, layer) for layer in {h.layer for h in to_ablate}}  # [H, Dh]
        replace_with = {h: constants[h.layer][h.head] for h in to_ablate}
    if len(batches) == 1:  # pass 2, the ablation: one batch reuses pass 1's run
        drops = [ablate_heads(model, [prompts[i].tokens for i in batches[0]], neuron, card.token.id, to_ablate,
                              run=run, replace_with=replace_with)]
    else:
        drops = [ablate_heads(model, [prompts[i].tokens for i in batch], neuron, card.token.id, to_ablate,
                              run=reuse, replace_with=replace_with) for batch, reuse in zip(batches, kept)]
    ablations = {h: tuple(np.concatenate([d[h][k] for d in drops])[back] for k in (0, 1)) for h in drops[0]}

    # ---- paths (``--paths``): each differential head's effect split by path, removed as the ablation removes it
    paths = None
    if options.paths:  # one run of every prompt (the paths' mean removal is over all of them): not batched
        full = run if len(batches) == 1 and (back == np.arange(len(prompts))).all() else model.run(
            [p.tokens for p in prompts], keep=NEEDED | {"resid_pre"}, stop_at_layer=neuron.layer)
        diff = [candidates[i] for i in order if is_differential[i]]  # as differential_heads lists them
        analysis = head_paths(model, full, neuron, card.token.id, diff, replace_with=replace_with,
                              ablate_with=options.ablate_with)
        paths = PathsRecord.of(analysis, options.ablate_with,
                               {candidates[i]: active[:, i] for i in np.flatnonzero(is_differential)})
    # ---- end paths
    heads = []
    for i in order:
        head = candidates[i]
        heads.append(HeadRecord(
            str(head), head.layer, head.head, mean_effect=float(parts["effect"][:, i].mean()),
            std_effect=float(parts["effect"][:, i].std()), mean_context=float(parts["context"][:, i].mean()),
            std_context=float(parts["context"][:, i].std()), mean_constant=float(parts["constant"][:, i].mean()),
            active_count=int(active[:, i].sum()), active_fraction=float(active[:, i].mean()),
            differential=bool(is_differential[i]),
            ablation=_ablation_record(*ablations[head], active[:, i]) if head in ablations else None))
    return Trace(
        model=ModelShape(str(model.folder), model.cfg.n_layer, model.cfg.n_head, model.cfg.d_mlp, model.cfg.n_ctx),
        neuron=card,
        settings=Settings(proto.head_rule, options.scores, same_layer, len(candidates), EFFECTS_NOTE,
                          mode.note, origin or PromptOrigin(), proto.record()),
        prompts=per_prompt, heads=heads, differential_heads=[h.head for h in heads if h.differential],
        identity_check=IdentityCheck(float(np.concatenate(chunks["errors"]).max()),
                                     float(np.concatenate(chunks["relative"]).max())),
        paths=paths)


@dataclass
class PromptSource:
    """Where ``trace_neuron`` takes its prompts: ``texts``, else the prompts of ``prompt_file``, else the neuron's
    top ``n_prompts`` mined from ``corpus`` (None: the model's own) in ``split`` ("train", "test" or "all");
    ``n_prompts`` None: the protocol's (given, it overrides the protocol's choice and the record says so)."""

    texts: list[str] = field(default_factory=list)
    prompt_file: str | Path | None = None
    corpus: str | Path | None = None
    split: str = "train"
    n_prompts: int | None = None
    bos: bool = True  # prepend <|endoftext|> to each prompt
    progress: bool = True  # the corpus scan's progress bar on stderr (mining without an index)


def trace_neuron(model: Model, neuron: Neuron, source: PromptSource | None = None,
                 options: TraceOptions | None = None) -> Trace:
    """The ``trace`` command: the prompts of ``source`` (given, from a file, or mined from a corpus); then ``trace``.
    Mined prompts follow ``options.protocol``: its trimming "authors" → ``authors_prompts`` (no BOS while
    trimming, < max_prompt_tokens, newlines per protocol, re-tokenised with BOS, the first n_prompts, duplicate
    strings collapsed; what was dropped is in the origin's notes), else ``mine_prompts``."""
    from minitf.corpus import default_corpus
    from minitf.prompts import mine_prompts

    source, options = source or PromptSource(), options or TraceOptions()
    proto = get_protocol(options.protocol, head_rule=options.rule, n_prompts=source.n_prompts)
    options = replace(options, protocol=proto)
    texts, prompt_file, corpus, split, bos = source.texts, source.prompt_file, source.corpus, source.split, source.bos
    neuron = check_neuron(Neuron(*neuron), model.cfg.n_layer, model.cfg.d_mlp)
    if texts or prompt_file:
        texts = list(texts or []) or read_prompt_file(prompt_file)
        prompts = prompts_from_texts(model, texts, bos)
        notes = [f"prompt {i + 1} is longer than the context: kept its last {model.cfg.n_ctx} tokens"
                 for i, p in enumerate(prompts) if p.truncated]
        origin = PromptOrigin(bos, notes, f"from {prompt_file}" if prompt_file else "given with --text")
    else:
        corpus = default_corpus(model, corpus or None, needed_for="give texts, a prompt file or a corpus")
        if proto.trimming == "authors":
            prompts, origin = authors_trace_prompts(model, neuron, corpus, split, bos, proto)
            return trace(model, neuron, prompts, options, origin=origin)
        mined = mine_prompts(model, neuron, corpus, None if split == "all" else split, k=proto.n_prompts, bos=bos,
                             max_tokens=proto.max_prompt_tokens, progress=source.progress)
        if not mined:
            raise MinitfError(f"{corpus}: no document activates {neuron} above 0 in the {split} split")
        prompts = [Prompt.from_mined(m) for m in mined]
        origin = PromptOrigin(bos, [], f"top {len(prompts)} mined from {corpus}, split {split}", str(corpus), split)
    return trace(model, neuron, prompts, options, origin=origin)


def authors_trace_prompts(model, neuron, corpus, split, bos, proto) -> tuple[list[Prompt], PromptOrigin]:
    """The neuron's prompts by ``authors_prompts`` on the documents of ``split`` (``authors_prompt_sets``), and
    their origin (what was dropped on the way, in its notes); MinitfError when none survives."""
    prompts, origin = authors_prompt_sets(model, [neuron], corpus, split, proto)[neuron]
    if not prompts:
        raise MinitfError(f"{corpus}: no prompt of {neuron} survives the authors' trimming in the {split} split")
    if not bos:
        origin.notes.append("--no-bos: not applied; the protocol traces each prompt re-tokenised with BOS")
    return prompts, origin


def authors_prompt_sets(model, neurons, corpus, split, proto, index=None) -> dict:
    """{neuron: (prompts, origin)}: each neuron's prompts by ``authors_prompts`` on the documents of ``split``,
    all neurons trimmed in lockstep (one batched forward pass per bisection step), and their origins (what
    was dropped on the way in the notes; no prompt survived: an empty list). The candidates come from the
    corpus's index (``index``, else the one ``load_index`` finds) when it holds the neurons' layers, the split
    and n_candidates documents per neuron (``index_candidates``: no peak pass); else from every document."""
    from minitf.corpus import documents
    from minitf.index.build import load_index
    from minitf.prompts import authors_prompts

    split_, n_cand = None if split == "all" else split, proto.n_candidates
    index = index if index is not None else load_index(model, corpus)
    if (index is not None and index.bos and index.k >= n_cand and all(index.covers(n, split_) for n in neurons)):
        real, a_bos = index_candidates(model, index, neurons, split_, n_cand)
        fill = 2 * n_cand if any(len(rows) < n_cand for rows in real.values()) else 0
        wanted = {d for rows in real.values() for d, _, _ in rows}
        docs = [d for i, d in enumerate(documents(corpus, split_)) if d.doc_id in wanted or i < fill]
        firsts = [d.doc_id for d in docs][:fill]  # the split's first documents (file order): BOS peaks rank so
        top = {n: rows + [(d, 0, a_bos[n]) for d in firsts if d not in {x for x, _, _ in rows}][:n_cand - len(rows)]
               for n, rows in real.items()}
        got = authors_prompts(model, neurons, docs, proto, top=top)
    else:
        got = authors_prompts(model, neurons, documents(corpus, split_), proto)
    out = {}
    for n in neurons:
        g = got[n]
        prompts = [Prompt(p.tokens, mined=Mined(p.doc_id, p.token_pos, p.activation, p.trimmed_activation))
                   for p in g.prompts]
        notes = [f"{proto.name}'s trimming (the authors'): {g.candidates} top documents trimmed without BOS; "
                 f"{g.dropped_long} dropped (≥ {proto.max_prompt_tokens} tokens), {g.cut} past the first "
                 f"{proto.n_prompts}, {g.duplicates} duplicate strings collapsed; {g.below_threshold} kept with an "
                 f"activation not above 0.8·A (as the authors keep them)"]
        if g.dropped_bos_peak:
            notes.append(f"documents {', '.join(map(str, g.dropped_bos_peak))} peak at BOS: dropped (the authors' "
                         "code crashes on them)")
        source = (f"the first {len(prompts)} trimmed the authors' way from {corpus}, split {split}" if prompts
                  else f"none trimmed the authors' way from {corpus}")
        out[n] = prompts, PromptOrigin(True, notes, source, str(corpus), split)
    return out


class AuthorsPromptSets:
    """``authors_prompt_sets`` for a study's neurons a layer at a time: the first of a layer's neurons asked
    for (``sets(neuron)`` → (prompts, origin)) trims all of them in lockstep, so each bisection step is one
    batched forward pass to that layer for the layer's neurons and documents together."""

    def __init__(self, model, neurons, corpus, split, proto, index=None):
        self.model, self.neurons, self.corpus, self.split, self.proto, self.index = (model, list(neurons), corpus,
                                                                                     split, proto, index)
        self.ready: dict = {}

    def __call__(self, neuron):
        if neuron not in self.ready:
            layer = [n for n in self.neurons if n.layer == neuron.layer and n not in self.ready] or [neuron]
            self.ready |= authors_prompt_sets(self.model, layer, self.corpus, self.split, self.proto, self.index)
        return self.ready.pop(neuron)


def index_candidates(model, index, neurons, split, n: int) -> tuple[dict, dict]:
    """({neuron: [(doc_id, p, A)]}, {neuron: A_bos}): each neuron's top n documents the authors' way (A = max
    over ALL positions of [BOS] + doc, p its first argmax; ties: lower doc_id first) from the index, whose
    peaks leave BOS out. Position 0 sees only BOS, so its activation A_bos is the same in every document and
    A = max(A_bos, A_index): the documents whose index peak is above A_bos rank as the index has them; every
    other document peaks at BOS (p = 0, A = A_bos). A neuron with fewer than n documents above A_bos has
    them all in the index (its k-th is not above A_bos, or it holds every document); the authors' stable sort
    then ranks the split's lowest doc_ids next (``authors_prompt_sets`` adds them)."""
    from minitf.prompts import last_activations

    a_bos = dict(zip(neurons, last_activations(model, [([model.bos], nn) for nn in neurons])))  # BOS alone
    return {nn: [(d, p, a) for d, p, a in index.top(nn, split) if a > a_bos[nn]][:n] for nn in neurons}, a_bos


def card_record(card: dict, layer_size: int) -> NeuronCard:
    """``neurons.neuron_card`` as the trace's card, the one the report renders."""
    def tokens(rows):
        return [TokenValue(i, t, v) for i, t, v in rows]

    return NeuronCard(card["name"], card["layer"], card["index"], TokenRef(card["token_id"], card["token"]),
                      card["congruence"], card["rank"], layer_size, tokens(card["promoted"]),
                      tokens(card["suppressed"]), card["kurtosis"], card["skew"], card["class"])


# ---- the computations behind the records ------------------------------------------------------------------
def _prompt_record(model, run, fx, neuron, candidates, effects, parts, active, post, i, prompt, options,
                   mode) -> PromptRecord:
    n = int(run.lengths[i])
    toks = run.tokens[i, :n]
    top = np.argsort(-effects[i], kind="stable")[:options.top_heads]
    one = _one(run, i)
    listed = []
    for j in top:
        head = candidates[j]
        by_source, _ = head_sources(model, one, neuron, head)  # the context part over sources
        weights = run["pattern", head.layer][i, head.head, n - 1, :n]  # [n] attention from the last token
        best = top_source_positions(by_source[0, :n], options.sources)
        listed.append(TopHead(str(head), **{k: float(a[i, j]) for k, a in parts.items()}, active=bool(active[i, j]),
                              sources=[Source(int(s), model.token_str(toks[s]), float(by_source[0, s]),
                                              float(weights[s])) for s in best]))
    if options.why:  # ---- --why: the split of each listed head at this prompt (on the same run)
        for head, split in zip(listed, why_for_heads(model, one, neuron, [candidates[j] for j in top], 0,
                                                     options.sources)):
            head.why = split
    return PromptRecord(
        text=model.decode(toks[1:] if toks[0] == model.bos else toks),
        tokens=[model.token_str(t) for t in toks],
        truncated=prompt.truncated, mined=prompt.mined,
        activation=float(post[i]), pre=float(fx.pre[i]), sigma=float(fx.sigma[i]),
        components=Components(float(fx.embed[i]), float(fx.pos_embed[i]), float(fx.heads[i].sum()),
                              fx.attn_bias[i].tolist(), fx.mlp[i].tolist(), float(fx.constant)),
        identity_error=float(abs(fx.total()[i] - fx.pre[i])),
        active_heads=[str(candidates[j]) for j in np.flatnonzero(active[i])],
        top_heads=listed,
        positions=_per_position(model, one, run, neuron, candidates, i, n, options, mode)
        if options.per_position else None)


def _per_position(model, one, run, neuron, candidates, i, n, options, mode) -> list[Position]:
    """Activation and the top candidate heads (by the selecting score) at every position of prompt i (``one``:
    its view), each with its effect and context part."""
    out = []
    for t in range(n):
        fx = direct_effects(model, one, neuron, np.array([t]))
        scores = {"effect": np.array([fx.head(h)[0] for h in candidates]),  # [N]
                  "context": np.array([fx.head_context[0, h.layer, h.head] for h in candidates])}  # [N]
        best = np.argsort(-scores[mode.selects], kind="stable")[:options.top_heads]
        out.append(Position(float(run.neuron(neuron)["post"][i, t]), float(fx.pre[0]),
                            [PositionHead(str(candidates[j]), float(scores["effect"][j]),
                                          float(scores["context"][j])) for j in best]))
    return out


def _one(run, i):
    """A view of prompt i of a run as a batch of one (the cache arrays sliced, not copied)."""
    cache = {key: (value[i:i + 1]) for key, value in run.cache.items()}
    return Run(run.tokens[i:i + 1], run.lengths[i:i + 1], None, cache, run.neuron_columns)


def _ablation_record(d_post: np.ndarray, d_p: np.ndarray, active: np.ndarray) -> Ablation:
    def mean(x):
        return float(x.mean()) if x.size else None

    ks = None
    if both_classes(int(active.sum()), int((~active).sum()), at_least=KS_MIN_PROMPTS) is None:
        ks = KS(*ks_2samp(d_p[active], d_p[~active]))
    return Ablation(mean(d_post), mean(d_p), mean(d_post[active]), mean(d_post[~active]), mean(d_p[active]),
                    mean(d_p[~active]), ks, d_post=d_post, d_p=d_p)
