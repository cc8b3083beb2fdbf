"""What the scorers past Yes/No show the LLM and compare its answers with (``minitf.explain.scorers``).

For one (neuron, head) pair, :func:`scorer_data` gathers a :class:`ScorerData`: the test prompts and the
negatives, each a :class:`ScorerItem` with

* ``active``: the head rule's label (``minitf.heads.active_mask`` over the candidate heads' selecting scores,
  the rule, scores and candidates of the test trace), the same label the paper's scoring uses;
* ``context``: the head's context part on the prompt (``minitf.attribution``: what it looked up, the paper's
  head score / σ), the quantity simulation predicts;
* ``sources``: the head's top source positions by context part (``attribution.head_sources`` split over
  positions, BOS left out since the LLM never sees it), the tokens source fuzzing marks;
* ``activation``: the neuron's post-GELU activation at the last token.

Test prompts are the test trace's first ``n_test`` prompts, re-tokenised from their text (as the trace made
them, with BOS); their label is the trace's own. Each is run again here for its context part and sources.

Negatives: corpus contexts where the neuron is weak or silent (activation ≤ ``WEAK_FRACTION`` × the largest
test-prompt activation), cut to the test prompts' lengths (the i-th candidate drawn as long as the (i mod n)-th
test prompt, so length is no cue) and labelled by the same head rule on their own forward pass:

* ``random``: positions drawn uniformly (``numpy.random.default_rng(seed)``) from the documents read;
* ``hard`` (nearest neighbours): positions whose token is the last token of some test prompt. For a next-token
  neuron the current token is the strongest single cue, so a context that ends like a top prompt but leaves the
  neuron weak is the closest look-alike there is; telling it apart is what an explanation of *when the head is
  active* must do beyond naming the token. (The index keeps only where a neuron is strong, so the weak
  contexts come from a scan of the corpus: ``SCAN_DOCS`` documents of the test prompts' split drawn with the seed.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from minitf.attribution import NEEDED, direct_effects, head_sources
from minitf.errors import MinitfError
from minitf.heads import active_mask, candidate_heads
from minitf.names import Neuron, parse_head, parse_neuron
from minitf.protocol import get_protocol

WEAK_FRACTION = 0.1
"""A negative's activation is at most this fraction of the largest test-prompt activation (weak or silent)."""

SCAN_DOCS = 64
"""Documents of the split read (drawn with the seed) to find negatives."""

N_RANDOM = 10
N_HARD = 10
"""Negatives of each kind per pair (fewer when the documents read have fewer weak contexts)."""

N_SOURCES = 3
"""Top source positions kept per prompt (the trace's ``sources`` default)."""

FUZZ_MARKS = 3
"""Source tokens marked per fuzzed prompt (fewer in a short prompt: at most half its tokens, so that as many
random ones can be drawn apart from them)."""


@dataclass(frozen=True)
class ScorerItem:
    """One prompt a scorer shows the LLM.

    Attributes:
        text: the prompt's text (BOS left out), as the LLM sees it before formatting.
        tokens: the text of each token, BOS left out (positions below count from the first of these).
        kind: ``test``, ``random`` or ``hard``.
        active: the head rule's label on this prompt.
        context: the head's context part at the last token (``attribution``: the paper's head score / σ).
        activation: the neuron's post-GELU activation at the last token.
        sources: the head's top source positions by context part, largest first (indices into ``tokens``).
        where: ``doc 12 pos 40`` for a negative, ``test prompt 3`` for a test prompt.
    """

    text: str
    tokens: tuple[str, ...]
    kind: str
    active: bool
    context: float
    activation: float
    sources: tuple[int, ...]
    where: str

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": list(self.tokens), "kind": self.kind, "active": self.active,
                "context": self.context, "activation": self.activation, "sources": list(self.sources),
                "where": self.where}


@dataclass(frozen=True)
class ScorerData:
    """A pair's test prompts and negatives (see the module docstring).

    Attributes:
        neuron, head, token: the pair and the neuron's token.
        test: the test prompts (active ones first, as ``driver.head_examples`` orders them).
        negatives: random ones, then hard ones.
        weak: the activation bound every negative is under.
        seed: the seed of the draws; corpus, split: where the negatives came from.
        retokenized: test prompts whose text re-tokenised differently from the trace's tokens.
    """

    neuron: str
    head: str
    token: str
    test: tuple[ScorerItem, ...]
    negatives: tuple[ScorerItem, ...]
    weak: float
    seed: int
    corpus: str | None
    split: str | None
    retokenized: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"neuron": self.neuron, "head": self.head, "token": self.token,
                "test": [i.to_json() for i in self.test], "negatives": [i.to_json() for i in self.negatives],
                "weak": self.weak, "seed": self.seed, "corpus": self.corpus, "split": self.split,
                "retokenized": self.retokenized}


@dataclass(frozen=True)
class Labelled:
    """:func:`label_prompts`'s arrays over B prompts: active [B] bool, context [B], activation [B], sources [B][≤k]
    (positions into each prompt's tokens, BOS included at 0)."""

    active: np.ndarray
    context: np.ndarray
    activation: np.ndarray
    sources: list[tuple[int, ...]]


def label_prompts(model, neuron: Neuron, head, prompts: Sequence[Sequence[int]], *, rule: str, scores: str,
                  include_same_layer: bool, n_sources: int = N_SOURCES, skip_first: bool = True) -> Labelled:
    """The head rule's label, the head's context part, the neuron's activation and the head's top ``n_sources``
    source positions by context part, at each prompt's last token — what ``minitf.trace`` computes for a prompt
    (one forward pass, ``attribution.direct_effects`` and ``head_sources``, ``heads.active_mask`` over the
    candidate heads' selecting scores). ``skip_first``: position 0 (BOS) is never a top source."""
    candidates = candidate_heads(neuron.layer, model.cfg.n_head, include_same_layer and not model.cfg.parallel_residual)
    layers = np.array([h.layer for h in candidates], int)  # [N]
    indices = np.array([h.head for h in candidates], int)  # [N]
    j = next((i for i, h in enumerate(candidates) if h == head), None)
    if j is None:
        raise MinitfError(f"`head` {head}: not a candidate head of {neuron}", param="head")
    run = model.run([list(p) for p in prompts], logits=None, keep=NEEDED, stop_at_layer=neuron.layer)
    fx = direct_effects(model, run, neuron)
    effects = fx.head_scores(scores)[:, layers, indices]  # [B, N]
    active = active_mask(effects, rule)[:, j]  # [B]
    rows = np.arange(len(prompts))  # [B]
    post = run.neuron(neuron)["post"][rows, run.lengths - 1]  # [B]
    by_source, _ = head_sources(model, run, neuron, head)  # [B, T]
    sources = []
    for b, n in enumerate(run.lengths):
        start = 1 if skip_first else 0
        order = start + np.argsort(-by_source[b, start:n], kind="stable")  # positions by context part
        sources.append(tuple(int(s) for s in order[:n_sources]))
    return Labelled(active, fx.head_context[:, head.layer, head.head].astype(np.float64), post.astype(np.float64),
                    sources)


def _item(model, tokens: Sequence[int], bos: bool, kind: str, labelled: Labelled, b: int, where: str,
          active: bool | None = None) -> ScorerItem:
    """An item from prompt b of ``labelled``, positions shifted to count from the first token after BOS."""
    shift = 1 if bos else 0
    shown = list(tokens)[shift:]
    return ScorerItem(text=model.decode(shown), tokens=tuple(model.token_str(t) for t in shown), kind=kind,
                      active=bool(labelled.active[b]) if active is None else active,
                      context=float(labelled.context[b]), activation=float(labelled.activation[b]),
                      sources=tuple(s - shift for s in labelled.sources[b]), where=where)


def scorer_data(model, trace, head: str, *, n_test: int | None = None, texts: Sequence[str] | None = None,
                corpus=None, seed: int = 0, n_random: int = N_RANDOM, n_hard: int = N_HARD,
                n_sources: int = N_SOURCES, scan_docs: int = SCAN_DOCS) -> ScorerData:
    """Gather a pair's :class:`ScorerData` from the test trace (``minitf.trace.Trace``), the model and a corpus.

    ``n_test``: the trace's first prompts scored (None: the trace protocol's ``n_test``, as the paper's scoring
    takes them); or ``texts``: exactly these prompts of the trace, in this order (the paper scorer's test
    prompts, ``HeadExamples.active + inactive``). ``corpus``: where negatives come from (None: the trace's own
    corpus, else the model's); ``n_random``/``n_hard``: negatives of each kind (0: none, and no corpus is read).
    """
    from minitf.corpus import default_corpus, documents, tokenized_documents
    from minitf.prompts import neuron_activations, prompts_from_texts

    neuron = parse_neuron(trace.neuron.name, model.cfg.n_layer, model.cfg.d_mlp)
    h = parse_head(head, model.cfg.n_layer, model.cfg.n_head)
    settings = trace.settings
    if n_test is None:
        record = settings.protocol  # None: a trace made before protocols (neo2024's n_test then)
        n_test = (record.choices.get("n_test") if record else None) or get_protocol(record and record.name).n_test
    bos = settings.origin.bos is not False
    options = dict(rule=settings.rule, scores=settings.scores, include_same_layer=settings.include_same_layer,
                   n_sources=n_sources)
    if texts is None:
        records = trace.prompts[:n_test]
        records = [r for r in records if str(h) in r.active_heads] + [r for r in records if str(h) not in r.active_heads]
    else:
        by_text = {}
        for r in trace.prompts:
            by_text.setdefault(r.text, r)
        if missing := [t for t in texts if t not in by_text]:
            raise MinitfError(f"test prompt {missing[0]!r} is not a prompt of the test trace of {trace.neuron.name}")
        records = [by_text[t] for t in texts]
    prompts = [p.tokens for p in prompts_from_texts(model, [r.text for r in records], bos)]
    labelled = label_prompts(model, neuron, h, prompts, **options)
    test = tuple(_item(model, p, bos, "test", labelled, b, f"test prompt {trace.prompts.index(r) + 1}",
                       active=str(h) in r.active_heads) for b, (p, r) in enumerate(zip(prompts, records)))
    retokenized = sum(list(i.tokens) != (r.tokens[1:] if bos else r.tokens) for i, r in zip(test, records))
    weak = WEAK_FRACTION * max((i.activation for i in test), default=0.0)
    token = trace.neuron.token.text or ""
    path = corpus or settings.origin.corpus
    split = settings.origin.split if settings.origin.split in ("train", "test") else None
    if not test or n_random + n_hard == 0:
        return ScorerData(trace.neuron.name, str(h), token, test, (), weak, seed, None, None, retokenized)
    path = default_corpus(model, path, needed_for="give a corpus for the scorers' negatives")
    rng = np.random.default_rng(seed)
    ids = [d.doc_id for d in documents(path, split)]
    chosen = sorted(int(i) for i in rng.choice(ids, size=min(scan_docs, len(ids)), replace=False)) if ids else []
    docs = tokenized_documents(model, path, set(chosen), bos, split)
    acts = neuron_activations(model, neuron, [docs[d] for d in chosen])  # [len(doc)] each
    lengths = [len(p) for p in prompts]
    last_tokens = {p[-1] for p in prompts}
    seen = {i.text for i in test}
    negatives: list[ScorerItem] = []
    for kind, wanted in (("random", n_random), ("hard", n_hard)):
        pool = [(d, t) for d, a in zip(chosen, acts) for t in range(1 + bos, len(a)) if a[t] <= weak
                and (kind == "random" or docs[d][t] in last_tokens)]  # weak in the whole document
        order = rng.permutation(len(pool))
        picked: list[ScorerItem] = []
        for start in range(0, len(order), 4 * max(wanted, 1)):
            if len(picked) >= wanted:
                break
            batch = [pool[int(i)] for i in order[start:start + 4 * max(wanted, 1)]]
            cut = [_cut(docs[d], t, lengths[(start + k) % len(lengths)], bos, model.bos)
                   for k, (d, t) in enumerate(batch)]
            lab = label_prompts(model, neuron, h, cut, **options)
            for b, ((d, t), p) in enumerate(zip(batch, cut)):
                item = _item(model, p, bos, kind, lab, b, f"doc {d} pos {t - bos}")
                if len(picked) < wanted and item.activation <= weak and item.text not in seen and item.text.strip():
                    seen.add(item.text)
                    picked.append(item)
        negatives += picked
    return ScorerData(trace.neuron.name, str(h), token, test, tuple(negatives), weak, seed, str(path), split,
                      retokenized)


def _cut(doc: Sequence[int], t: int, length: int, bos: bool, bos_id: int) -> list[int]:
    """The context of ``doc`` ending at position t, ``length`` tokens long counting BOS (re-prefixed)."""
    body = list(doc[1 if bos else 0:t + 1])
    keep = max(1, length - (1 if bos else 0))
    return ([bos_id] if bos else []) + body[-keep:]


# ---- source fuzzing's marks (minitf.explain.scorers.score_fuzz) ----
@dataclass(frozen=True)
class FuzzCase:
    """One fuzzed test prompt: ``true`` (the head's top sources by context part) and ``random`` marks (positions
    into ``data.test[item].tokens``, as many, drawn apart from the true ones)."""

    item: int
    true: tuple[int, ...]
    random: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "true": list(self.true), "random": list(self.random)}


def fuzz_cases(data: ScorerData, seed: int, marks: int = FUZZ_MARKS) -> list[FuzzCase]:
    """For each test prompt on which the head is active: its top ``k = min(marks, len(sources), len(tokens) // 2)``
    sources, and k random positions among the others, drawn in prompt order with ``numpy.random.default_rng(seed)``.
    Prompts with k = 0 (a one-token prompt) are left out."""
    rng = np.random.default_rng(seed)
    cases = []
    for n, item in enumerate(data.test):
        k = min(marks, len(item.sources), len(item.tokens) // 2)
        if not item.active or k == 0:
            continue
        true = tuple(item.sources[:k])
        others = [p for p in range(len(item.tokens)) if p not in true]
        cases.append(FuzzCase(n, true, tuple(sorted(int(p) for p in rng.choice(others, size=k, replace=False)))))
    return cases
