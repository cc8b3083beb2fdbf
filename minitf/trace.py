"""``trace``: which attention heads switch a neuron on, over a set of prompts — the paper's steps 2, 3 and 5.

1. prompts: given texts, or the neuron's top-activating prompts mined from a corpus (``minitf.prompts``);
2. one forward pass up to the neuron's layer records what ``minitf.attribution`` needs; every component's
   exact direct effect on the neuron's pre-activation at each prompt's last token, and the identity check
   max |Σ terms + constant − pre|;
3. the paper's rules (``minitf.heads``) mark active heads per prompt and differential heads per neuron;
   for the top heads, the source tokens they looked up (their context part split over source positions).
   ``scores`` says what selects: "paper" each head's context part (the authors' scores / σ), "exact" its
   whole term (context + constant part);
4. ablation (``minitf.ablation``): remove each top head, measure Δpost and Δp(token) — "paper" replaces z_h
   by its constant value part (TransformerLens's ``hook_v`` zeroed on folded weights), "exact" zeroes z_h.

The result is a plain dict with a stable schema (``TRACE_SCHEMA``, documented in the README) that the CLI
prints as text or JSON and that the HTML report renders.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minitf.ablation import ablate_heads, ks_2samp
from minitf.attribution import NEEDED, direct_effects, head_sources, head_value_constant
from minitf.errors import MinitfError
from minitf.heads import SCORES, active_mask, candidate_heads, differential
from minitf.model import Model, Run
from minitf.names import Neuron, check_neuron

SCHEMA_VERSION = 2
EFFECTS_NOTE = ("effects are exact direct effects on the neuron's pre-activation, LayerNorm-2's σ frozen; a head's "
                "effect = its context part (what it looked up) + its constant part ((b_V + β₁W_V)·W_O through W_in)")
SCORES_NOTE = {"paper": "heads selected on their context part: the paper's scores (TransformerLens, value biases "
                        "folded) / σ",
               "exact": "heads selected on their whole effect (context + constant part)"}


@dataclass
class Prompt:
    """One prompt to trace: its tokens (BOS included when used) and where it came from."""

    tokens: list[int]
    truncated: bool = False  # the text was longer than the context: its last n_ctx tokens are kept
    mined: dict | None = None  # corpus provenance: doc_id, position, activation, trimmed_activation


@dataclass
class TraceOptions:
    rule: str = "sigma2"  # active heads: "sigma2" (mean + 2·std) or "top3"
    include_same_layer: bool = False  # candidates include the neuron's own layer
    scores: str = "paper"
    top_heads: int = 5  # heads listed per prompt
    sources: int = 3  # source tokens shown per listed head
    ablate: int = 5  # heads ablated: the top ones by mean effect, plus every differential head
    per_position: bool = False  # also each position's activation and top head effects (for the HTML report)
    scores: str = "paper"  # what selects heads: "paper" (each head's context part) or "exact" (its whole effect)


def fit_context(model: Model, ids: list[int], bos: bool) -> tuple[list[int], bool]:
    """([BOS] + the last n_ctx − bos of ``ids``, whether any were cut): the one rule for an over-long prompt
    (``run`` and ``trace`` alike), since what comes next depends most on the end of a text."""
    room = model.cfg.n_ctx - bos
    return ([model.bos] if bos else []) + ids[-room:], len(ids) > room


def prompts_from_texts(model: Model, texts: list[str], bos: bool = True) -> list[Prompt]:
    """Tokenize texts ([BOS] + text); an over-long one keeps its last n_ctx tokens (and says so)."""
    prompts = []
    for i, text in enumerate(texts):
        ids = model.encode(text)
        if not ids:
            raise MinitfError(f"prompt {i + 1} is empty")
        prompts.append(Prompt(*fit_context(model, ids, bos)))
    return prompts


def read_prompt_file(path) -> list[str]:
    """Prompts from a file: ``.txt`` one per line (blank lines skipped) or ``.jsonl`` with a ``text`` field."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise MinitfError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise MinitfError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise MinitfError(f"{path}: cannot read ({e.strerror})") from None
    if path.suffix == ".jsonl":  # the corpus's .jsonl reader: a line that is not {"text": "<string>"} is an error
        from minitf.corpus import read_documents

        texts = [doc.text for doc in read_documents(path)]
    else:
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise MinitfError(f"{path}: no prompts in the file")
    return texts


def trace(model: Model, neuron: Neuron, prompts: list[Prompt], options: TraceOptions = TraceOptions(),
          card: dict | None = None, settings: dict | None = None, drops: dict | None = None) -> dict:
    """Trace ``neuron`` over ``prompts``; returns the trace dict (see the README's schema). ``drops``: a dict
    that receives each ablated head's per-prompt (Δpost [P], Δp [P]) (``minitf.study.run`` pools them)."""
    if not prompts:
        raise MinitfError("no prompts to trace")
    if options.scores not in SCORES:
        raise MinitfError(f"scores {options.scores!r}: choose from {', '.join(SCORES)}")
    if card is None:
        from minitf.neurons import neuron_card

        card = card_record(neuron_card(model, neuron), model.cfg.d_mlp)
    token = card["token"]["id"]
    tokens = [p.tokens for p in prompts]
    run = model.run(tokens, keep=NEEDED | {"resid_pre"}, stop_at_layer=neuron.layer)  # resid_pre: ablation reruns from it
    fx = direct_effects(model, run, neuron)
    rows = np.arange(len(prompts))
    post = run.neuron(neuron)["post"][rows, run.lengths - 1]  # [P]

    # parallel residual (Pythia): the neuron's LN₂ reads resid_pre, its own layer's heads add nothing to it
    same_layer = options.include_same_layer and not model.cfg.parallel_residual
    if options.include_same_layer and not same_layer:
        settings = {**(settings or {}), "notes": [*(settings or {}).get("notes", []),
                    "--include-same-layer has nothing to add: in the parallel residual form the neuron reads "
                    "its layer's resid_pre, which that layer's heads do not write"]}
    candidates = candidate_heads(neuron.layer, model.cfg.n_head, same_layer)
    layers = np.array([h.layer for h in candidates], int)  # [N]
    indices = np.array([h.head for h in candidates], int)  # [N]
    parts = {name: a[:, layers, indices] for name, a in  # each [P, N]
             (("effect", fx.heads), ("context", fx.head_context), ("constant", fx.head_constant))}
    effects = fx.head_scores(options.scores)[:, layers, indices]  # [P, N] what selects
    active = active_mask(effects, options.rule)  # [P, N]
    is_differential = differential(active)  # [N]
    order = np.argsort(-effects.mean(0), kind="stable")  # heads by mean selecting score
    to_ablate = [candidates[i] for i in sorted(set(order[:options.ablate].tolist())
                                               | set(np.flatnonzero(is_differential).tolist()))]
    replace_with = None
    if options.scores == "paper":  # removed as the paper does: z_h ← its constant part
        constants = {layer: head_value_constant(model, layer) for layer in {h.layer for h in to_ablate}}  # [H, Dh]
        replace_with = {h: constants[h.layer][h.head] for h in to_ablate}
    ablations = ablate_heads(model, tokens, neuron, token, to_ablate, run=run, replace_with=replace_with)
    if drops is not None:
        drops.update(ablations)

    errors = np.abs(fx.total() - fx.pre)  # [P]
    per_prompt = [_prompt_record(model, run, fx, neuron, candidates, effects, parts, active, post, i, prompts[i],
                                 options) for i in range(len(prompts))]
    heads = []
    for i in order:
        record = {"head": str(candidates[i]), "layer": candidates[i].layer, "index": candidates[i].head,
                  "mean_effect": float(parts["effect"][:, i].mean()), "std_effect": float(parts["effect"][:, i].std()),
                  "mean_context": float(parts["context"][:, i].mean()),
                  "std_context": float(parts["context"][:, i].std()),
                  "mean_constant": float(parts["constant"][:, i].mean()),
                  "active_count": int(active[:, i].sum()), "active_fraction": float(active[:, i].mean()),
                  "differential": bool(is_differential[i]), "ablation": None}
        if candidates[i] in ablations:
            record["ablation"] = _ablation_record(*ablations[candidates[i]], active[:, i])
        heads.append(record)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"folder": str(model.folder), "n_layer": model.cfg.n_layer, "n_head": model.cfg.n_head,
                  "d_mlp": model.cfg.d_mlp, "n_ctx": model.cfg.n_ctx},
        "neuron": card,
        "settings": {"rule": options.rule, "scores": options.scores, "include_same_layer": same_layer,
                     "candidates": len(candidates), "effects": EFFECTS_NOTE, "scores_note": SCORES_NOTE[options.scores],
                     **(settings or {})},
        "prompts": per_prompt,
        "heads": heads,
        "differential_heads": [h["head"] for h in heads if h["differential"]],
        "identity_check": {"max_abs_error": float(errors.max()),
                           "max_rel_error": float((errors / np.maximum(fx.magnitude(), 1e-30)).max())},
    }


@dataclass
class PromptSource:
    """Where ``trace_neuron`` takes its prompts: ``texts``, else the prompts of ``prompt_file``, else the neuron's
    top ``n_prompts`` mined from ``corpus`` (None: the model's own) in ``split`` ("train", "test" or "all")."""

    texts: list[str] = field(default_factory=list)
    prompt_file: str | Path | None = None
    corpus: str | Path | None = None
    split: str = "train"
    n_prompts: int = 20
    bos: bool = True  # prepend <|endoftext|> to each prompt


def trace_neuron(model: Model, neuron: Neuron, source: PromptSource | None = None,
                 options: TraceOptions | None = None) -> dict:
    """The ``trace`` command: the prompts of ``source`` (given, from a file, or mined from a corpus); then ``trace``."""
    from minitf.corpus import default_corpus
    from minitf.prompts import mine_prompts

    source, options = source or PromptSource(), options or TraceOptions()
    texts, prompt_file, corpus, split, bos = source.texts, source.prompt_file, source.corpus, source.split, source.bos
    neuron = check_neuron(Neuron(*neuron), model.cfg.n_layer, model.cfg.d_mlp)
    settings: dict = {"bos": bos, "notes": []}
    if texts or prompt_file:
        texts = list(texts or []) or read_prompt_file(prompt_file)
        prompts = prompts_from_texts(model, texts, bos)
        settings["source"] = f"from {prompt_file}" if prompt_file else "given with --text"
        for i, p in enumerate(prompts):
            if p.truncated:
                settings["notes"].append(f"prompt {i + 1} is longer than the context: kept its last "
                                         f"{model.cfg.n_ctx} tokens")
    else:
        corpus = default_corpus(model, corpus or None, needed_for="give texts, a prompt file or a corpus")
        mined = mine_prompts(model, neuron, corpus, None if split == "all" else split, k=source.n_prompts, bos=bos)
        if not mined:
            raise MinitfError(f"{corpus}: no document activates {neuron} above 0 in the {split} split")
        prompts = [Prompt(m.tokens, mined={"doc_id": m.doc_id, "position": m.position, "activation": m.activation,
                                           "trimmed_activation": m.trimmed_activation}) for m in mined]
        settings |= {"source": f"top {len(prompts)} mined from {corpus}, split {split}", "corpus": str(corpus),
                     "split": split}
    return trace(model, neuron, prompts, options, settings=settings)


def card_record(card: dict, layer_size: int) -> dict:
    """``neurons.neuron_card`` in the trace's schema (token lists as objects), the one the report renders."""
    def tokens(rows):
        return [{"id": i, "token": t, "value": v} for i, t, v in rows]

    return {"name": card["name"], "layer": card["layer"], "index": card["index"],
            "token": {"id": card["token_id"], "str": card["token"]},
            "congruence": card["congruence"], "rank": card["rank"], "layer_size": layer_size,
            "promoted": tokens(card["promoted"]), "suppressed": tokens(card["suppressed"]),
            "kurtosis": card["kurtosis"], "skew": card["skew"], "class": card["class"]}


def _prompt_record(model, run, fx, neuron, candidates, effects, parts, active, post, i, prompt, options) -> dict:
    n = int(run.lengths[i])
    toks = run.tokens[i, :n]
    top = np.argsort(-effects[i], kind="stable")[:options.top_heads]
    one = _one(run, i)
    listed = []
    for j in top:
        head = candidates[j]
        by_source, _ = head_sources(model, one, neuron, head)  # the context part over sources
        weights = run["pattern", head.layer][i, head.head, n - 1, :n]  # [n] attention from the last token
        best = np.argsort(-by_source[0, :n], kind="stable")[:options.sources]
        listed.append({"head": str(head), **{k: float(a[i, j]) for k, a in parts.items()}, "active": bool(active[i, j]),
                       "sources": [{"position": int(s), "token": model.token_str(toks[s]),
                                    "effect": float(by_source[0, s]), "attention": float(weights[s])} for s in best]})
    record = {
        "text": model.decode(toks[1:] if toks[0] == model.bos else toks),
        "tokens": [model.token_str(t) for t in toks],
        "truncated": prompt.truncated, "mined": prompt.mined,
        "activation": float(post[i]), "pre": float(fx.pre[i]), "sigma": float(fx.sigma[i]),
        "components": {"embed": float(fx.embed[i]), "pos_embed": float(fx.pos_embed[i]),
                       "heads": float(fx.heads[i].sum()), "attn_bias": fx.attn_bias[i].tolist(),
                       "mlp": fx.mlp[i].tolist(), "constant": float(fx.constant)},
        "identity_error": float(abs(fx.total()[i] - fx.pre[i])),
        "active_heads": [str(candidates[j]) for j in np.flatnonzero(active[i])],
        "top_heads": listed,
    }
    if options.per_position:
        record["positions"] = _per_position(model, one, run, neuron, candidates, i, n, options)
    return record


def _per_position(model, one, run, neuron, candidates, i, n, options) -> list[dict]:
    """Activation and the top candidate heads (by the selecting score) at every position of prompt i (``one``:
    its view), each with its effect and context part."""
    out = []
    for t in range(n):
        fx = direct_effects(model, one, neuron, np.array([t]))
        effects = np.array([fx.head(h)[0] for h in candidates])  # [N]
        context = np.array([fx.head_context[0, h.layer, h.head] for h in candidates])  # [N]
        best = np.argsort(-(context if options.scores == "paper" else effects), kind="stable")[:options.top_heads]
        out.append({"activation": float(run.neuron(neuron)["post"][i, t]), "pre": float(fx.pre[0]),
                    "heads": [{"head": str(candidates[j]), "effect": float(effects[j]), "context": float(context[j])}
                              for j in best]})
    return out


def _one(run, i):
    """A view of prompt i of a run as a batch of one (the cache arrays sliced, not copied)."""
    cache = {key: (value[i:i + 1]) for key, value in run.cache.items()}
    return Run(run.tokens[i:i + 1], run.lengths[i:i + 1], None, cache, run.neuron_columns)


def _ablation_record(d_post: np.ndarray, d_p: np.ndarray, active: np.ndarray) -> dict:
    def mean(x):
        return float(x.mean()) if x.size else None

    record = {"mean_dpost": mean(d_post), "mean_dp": mean(d_p),
              "mean_dpost_active": mean(d_post[active]), "mean_dpost_inactive": mean(d_post[~active]),
              "mean_dp_active": mean(d_p[active]), "mean_dp_inactive": mean(d_p[~active]), "ks": None}
    if active.sum() >= 5 and (~active).sum() >= 5:
        d, p = ks_2samp(d_p[active], d_p[~active])
        record["ks"] = {"statistic": d, "p_value": p}
    return record
