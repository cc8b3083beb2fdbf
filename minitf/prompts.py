"""The prompts a trace reads: given texts (``prompts_from_texts``, ``read_prompt_file``), or a neuron's top prompts
trimmed to the context that still switches it on (paper step 2, its §3.3, ``mine_prompts``).

For a neuron N = L{l}N{n}, the top-activating documents come from the corpus's index when there is a fresh
one that covers N (``minitf.index.build``), else from a scan of the corpus for this one neuron (a forward pass
that stops at layer l and computes only neuron n). Each document contributes its peak: the position p where
N's post-GELU activation A is largest. The prompt ends at p; with b = 1 when a BOS token leads, b = 0 if not,

    prompt(s) = [BOS]·b + doc[p + 1 − s : p + 1]        s = 1 … p + 1 − b text tokens before and at p
    f(s)      = N's activation at the last token of prompt(s)       f(p + 1 − b) = A
    s*        = min { s : f(s) ≥ 0.8 A }                         the trimmed prompt is prompt(s*)

s* is found by binary search, which assumes that the predicate f(s) ≥ 0.8 A is monotone in s (false for
short suffixes, true from some length on). It usually is, but attention can make f non-monotone; then the
search still returns a suffix that meets the threshold, not necessarily the shortest one. Prompts of
``max_tokens`` (100) tokens or more, BOS included, are dropped — the search first tries the longest allowed
suffix and drops the document if even that misses the threshold — and so are documents whose peak A ≤ 0.
The searches of all documents run in lockstep, one batched forward pass per step.

Different documents can trim to the same prompt (e.g. " the LORD thy"): of identical trimmed token lists
only the first, highest-activation one is kept, and further candidates (all of the index's top list, or
2k + 10 documents from a scan) are trimmed in rounds until k distinct prompts are found or none are left.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from minitf.corpus import check_split, documents, read_documents, tokenize_document, tokenized_documents
from minitf.errors import MinitfError
from minitf.names import Neuron, check_neuron, parse_neuron

THRESHOLD = 0.8  # the trimmed prompt keeps ≥ 80 % of the activation


def scan_candidates(k: int) -> int:
    """Documents a scan keeps for k prompts: spares for prompts that are dropped or duplicates."""
    return 2 * k + 10
TOKENS_PER_BATCH = 4096  # padded B·T per forward pass


@dataclass(frozen=True)
class MinedPrompt:
    """A trimmed prompt: ``tokens`` (BOS first when asked) ends at the token where the neuron peaks."""

    tokens: list[int]
    doc_id: int
    position: int  # index of the peak token in the document's tokens (BOS included when bos=True)
    activation: float  # A: the activation at the peak in the whole document
    trimmed_activation: float  # f(s*) ≥ 0.8 A: the activation at the last token of ``tokens``


@dataclass(frozen=True)
class Mined:
    """Where a mined prompt comes from (a trace prompt's ``mined``): the document, its peak and activations."""

    doc_id: int
    position: int  # the peak token's index in the document's tokens (BOS included when bos=True)
    activation: float  # A: the activation at the peak in the whole document
    trimmed_activation: float  # f(s*): the activation at the prompt's last token


@dataclass
class Prompt:
    """One prompt to trace: its tokens (BOS included when used) and where it came from."""

    tokens: list[int]
    truncated: bool = False  # the text was longer than the context: its last n_ctx tokens are kept
    mined: Mined | None = None  # corpus provenance, for a mined prompt

    @classmethod
    def from_mined(cls, m: MinedPrompt) -> "Prompt":
        return cls(m.tokens, mined=Mined(m.doc_id, m.position, m.activation, m.trimmed_activation))


def fit_context(model, ids: list[int], bos: bool) -> tuple[list[int], bool]:
    """([BOS] + the last n_ctx − bos of ``ids``, whether any were cut): the one rule for an over-long prompt
    (``run`` and ``trace`` alike), since what comes next depends most on the end of a text."""
    room = model.cfg.n_ctx - bos
    return ([model.bos] if bos else []) + ids[-room:], len(ids) > room


def prompts_from_texts(model, texts: list[str], bos: bool = True) -> list[Prompt]:
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
        texts = [doc.text for doc in read_documents(path)]
    else:
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise MinitfError(f"{path}: no prompts in the file")
    return texts


def neuron_activations(model, neuron: Neuron, prompts: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The neuron's post-GELU activation at every position of each prompt ([len(p)] each), batched by tokens."""
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batch: list[int] = []

    def flush():
        run = model.run([prompts[i] for i in batch], logits=None, keep={"post"},
                        stop_at_layer=neuron.layer, stop_neurons=[neuron.index])
        post = run["post", neuron.layer][:, :, 0]  # [B, T]
        for row, i in enumerate(batch):
            out[i] = post[row, : len(prompts[i])]

    for i in order:  # ascending length: the batch's padded size is (len(batch) + 1) · len(prompts[i])
        if batch and (len(batch) + 1) * len(prompts[i]) > TOKENS_PER_BATCH:
            flush()
            batch = []
        batch.append(i)
    if batch:
        flush()
    return out


def scan_top_documents(model, neuron: Neuron, corpus: str | Path, split: str | None = "train", k: int = 20,
                       bos: bool = True, progress: bool = True) -> list[tuple[int, int, float, list[int]]]:
    """[(doc_id, peak position, peak activation, document tokens)] of the k documents where the neuron peaks
    highest, best first (ties: lower doc_id, then earlier position). BOS is never a peak. ``progress``: the
    index's progress bar on stderr (labelled "scan"), live on a terminal."""
    from minitf.util.progress import Progress

    first = 1 if bos else 0
    bar = Progress(f"scan for {neuron}", sum(1 for _ in documents(corpus, split)) if progress else 0,
                   unit="documents", counters={"tokens": 0}, rate_of="tokens", enabled=progress, every=15.0)
    n_docs = 0
    best: list[tuple[float, int, int, list[int]]] = []  # (−activation, doc_id, position, tokens)
    pending: list[tuple[int, list[int]]] = []

    def flush():
        acts = neuron_activations(model, neuron, [ids for _, ids in pending])
        for (doc_id, ids), a in zip(pending, acts):
            p = first + int(np.argmax(a[first:]))
            best.append((-float(a[p]), doc_id, p, ids))
        best.sort(key=lambda x: x[:3])
        del best[k:]
        bar.update(n_docs - bar.done, tokens=sum(len(ids) for _, ids in pending))

    n_tok = 0
    for doc in documents(corpus, split):
        n_docs += 1
        ids = tokenize_document(model, doc.text, bos)
        if len(ids) > first:
            pending.append((doc.doc_id, ids))
            n_tok += len(ids)
        if n_tok >= 4 * TOKENS_PER_BATCH:
            flush()
            pending, n_tok = [], 0
    if pending:
        flush()
    bar.update(n_docs - bar.done)
    bar.finish()
    return [(doc_id, p, -neg, ids) for neg, doc_id, p, ids in best]


def shortest_suffixes(evaluate: Callable[[list[tuple[int, int]]], list[float]], lengths: Sequence[int],
                      thresholds: Sequence[float], cap: int) -> list[tuple[int, float] | None]:
    """Binary-search, for each item i in lockstep, s*ᵢ = min {s ≤ min(lengthsᵢ, cap) : f(i, s) ≥ thresholdᵢ}.

    ``evaluate([(i, s), …])`` returns f(i, s) for a batch of queries. f(i, lengthsᵢ) is taken to meet the
    threshold (it is the untrimmed prompt). When lengthsᵢ > cap, f(i, cap) is tried first and the item is
    dropped (None) if it misses. Assumes the predicate is monotone in s (see the module docstring); the
    returned (s, f(i, s)) always meets the threshold, with f = None for the untrimmed length (not evaluated).
    """
    lo = [1] * len(lengths)
    hi = [min(n, cap) for n in lengths]
    value: list[float | None] = [None] * len(lengths)
    alive = [True] * len(lengths)
    over = [i for i, n in enumerate(lengths) if n > cap]
    if over:
        for i, f in zip(over, evaluate([(i, cap) for i in over])):
            if f >= thresholds[i]:
                value[i] = f
            else:
                alive[i] = False
    while True:
        queries = [(i, (lo[i] + hi[i]) // 2) for i in range(len(lengths)) if alive[i] and lo[i] < hi[i]]
        if not queries:
            break
        for (i, mid), f in zip(queries, evaluate(queries)):
            if f >= thresholds[i]:
                hi[i], value[i] = mid, f
            else:
                lo[i] = mid + 1
    return [(hi[i], value[i]) if alive[i] else None for i in range(len(lengths))]


def mine_prompts(model, neuron: Neuron | str, corpus: str | Path, split: str | None = "train", k: int = 20,
                 bos: bool = True, max_tokens: int = 100, progress: bool = True, index=None,
                 docs: dict[int, list[int]] | None = None) -> list[MinedPrompt]:
    """The neuron's top-k documents of ``split``, each trimmed to its shortest suffix that keeps ≥ 80 % of the
    peak activation (see the module docstring), without repeating a trimmed prompt, listed by the activation
    each prompt shows (highest first); documents that
    do not fit in ``max_tokens``, peak at ≤ 0 or repeat a better prompt are dropped and the next candidates
    tried, so fewer than k prompts come back only when the candidates run out. Without an index, the scan of the
    corpus shows ``progress`` on stderr.

    Many neurons at once (``minitf.study.run``): ``index`` is an already loaded ``NeuronIndex`` and ``docs`` the
    tokenized documents by doc_id read in one pass for all of them, so nothing is loaded or scanned per neuron."""
    n = neuron if isinstance(neuron, Neuron) else parse_neuron(neuron)
    check_neuron(n, model.cfg.n_layer, model.cfg.d_mlp, where=str(n))
    corpus = Path(corpus)
    split = check_split(split)
    if k < 1:
        raise MinitfError(f"k={k}: must be at least 1")
    b = 1 if bos else 0
    if max_tokens < b + 2:
        raise MinitfError(f"max_tokens={max_tokens}: too small for a prompt")

    top = _top_from_index(model, n, corpus, split, k, bos, index)
    if top is None:
        top = scan_top_documents(model, n, corpus, split, scan_candidates(k), bos, progress)
    else:
        wanted = {d for d, _, _ in top}
        if docs is None or not wanted <= docs.keys():
            docs = tokenized_documents(model, corpus, wanted, bos, split)
        top = [(d, p, a, docs[d]) for d, p, a in top]
    top = [t for t in top if t[2] > 0]

    def prompt(i: int, s: int) -> list[int]:
        _, p, _, ids = top[i]
        return ids[:b] + ids[p + 1 - s: p + 1]

    out: list[MinedPrompt] = []
    seen: set[tuple[int, ...]] = set()
    done = 0  # candidates top[:done] are trimmed
    while len(out) < k and done < len(top):
        batch = list(range(done, min(done + k - len(out), len(top))))  # as many as prompts still missing
        done = batch[-1] + 1

        def evaluate(queries: list[tuple[int, int]], batch=batch) -> list[float]:
            acts = neuron_activations(model, n, [prompt(batch[j], s) for j, s in queries])
            return [float(a[-1]) for a in acts]

        found = shortest_suffixes(evaluate, [top[i][1] + 1 - b for i in batch],
                                  [THRESHOLD * top[i][2] for i in batch], cap=max_tokens - 1 - b)
        for i, res in zip(batch, found):
            if res is None:
                continue
            s, f = res
            doc_id, p, a, _ = top[i]
            tokens = prompt(i, s)
            if tuple(tokens) in seen:
                continue
            seen.add(tuple(tokens))
            out.append(MinedPrompt(tokens, doc_id, p, a, a if f is None else f))
    out.sort(key=lambda m: -m.trimmed_activation)  # listed by the activation the prompt shows, highest first
    return out


def _top_from_index(model, neuron: Neuron, corpus: Path, split: str | None, k: int, bos: bool, index=None):
    """[(doc_id, position, activation)] from a fresh index that covers the request, else None (then scan):
    all of the index's top list (≥ k entries), the ones past k as spares. ``index``: one already loaded."""
    from minitf.index.build import load_index

    if index is None:  # a stale or unreadable index is refused (MinitfError), as everywhere
        index = load_index(model, corpus)
    if index is None or not index.covers(neuron, split) or index.bos != bos or index.k < k:
        return None
    return index.top(neuron, split)
