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
from minitf.util.files import regular_file

THRESHOLD = 0.8  # the trimmed prompt keeps ≥ 80 % of the activation


def scan_candidates(k: int) -> int:
    """Documents a scan keeps for k prompts: spares for prompts that are dropped or duplicates."""
    return 2 * k + 10
TOKENS_PER_BATCH = 4096  # padded B·T per forward pass
MAX_PROMPT_FILE_BYTES, MAX_PROMPTS, MAX_PROMPT_CHARS = 64 << 20, 100_000, 100_000  # a prompt file's limits


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
    """Prompts from a file: ``.txt`` one per line (blank lines skipped) or ``.jsonl`` with a ``text`` field; checked
    first: a regular file (not a FIFO, /dev/zero), ≤ 64 MiB, ≤ 100,000 prompts of ≤ 100,000 characters each."""
    path = regular_file(path, "prompt file")
    try:
        if (size := path.stat().st_size) > MAX_PROMPT_FILE_BYTES:
            raise MinitfError(f"{path}: {size} bytes, more than a prompt file may have (64 MiB)", param="prompts")
        lines = path.read_bytes()[:MAX_PROMPT_FILE_BYTES].decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise MinitfError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise MinitfError(f"{path}: cannot read ({e.strerror})") from None
    texts = [d.text for d in read_documents(path)] if path.suffix == ".jsonl" else [x for x in lines if x.strip()]
    if not texts:
        raise MinitfError(f"{path}: no prompts in the file")
    if len(texts) > MAX_PROMPTS:
        raise MinitfError(f"{path}: {len(texts)} prompts, more than a trace takes ({MAX_PROMPTS})", param="prompts")
    if (long := next((i for i, text in enumerate(texts) if len(text) > MAX_PROMPT_CHARS), None)) is not None:
        raise MinitfError(f"{path}: prompt {long + 1} is over {MAX_PROMPT_CHARS} characters", param="prompts")
    return texts


def length_batches(lengths: Sequence[int]) -> list[list[int]]:
    """Indices into ``lengths`` in batches of ascending length, each padded B·T ≤ TOKENS_PER_BATCH (a longer
    one alone): since the lengths ascend, a batch's padded size is (len(batch) + 1) · the next length."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[i] <= TOKENS_PER_BATCH:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def neuron_activations(model, neuron: Neuron, prompts: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The neuron's post-GELU activation at every position of each prompt ([len(p)] each), batched by tokens."""
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(prompts)
    for batch in length_batches([len(p) for p in prompts]):
        run = model.run([prompts[i] for i in batch], logits=None, keep={"post"},
                        stop_at_layer=neuron.layer, stop_neurons=[neuron.index])
        post = run["post", neuron.layer][:, :, 0]  # [B, T]
        for row, i in enumerate(batch):
            out[i] = post[row, : len(prompts[i])]
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


# --------------------------------------------------------------------------- the paper's protocols (minitf.protocol)
# The authors' prompts (neo2024 and neo2023 alike: src/neuron_texts.py and src/datahandlers.py are the same in both):
#
#   A, p   = max_t post_t, argmax_t over ALL positions of [BOS] + doc (BOS included; get_neuron_max_acts)
#   top    = the n_candidates (30) documents by A, stable (ties: lower doc_id first)
#   toks   = doc[0 : p]   text tokens without BOS, the last one the peak token (find_truncated_texts)
#   bisection on start ∈ [0, len − 1]: f(mid) = activation at the last token of toks[mid:] (no BOS);
#       start ← mid if f(mid) > 0.8 A (strict) else end ← mid;  mid = (start + end) // 2;  until start == mid
#   start_pos = mid; trunc_act = f of the LAST evaluated mid (a failed test possibly: the prompt is kept anyway)
#   keep iff p − start_pos < 100; text = decode(toks[start_pos:]) with "\n" → " " (load_truncated_prompts)
#   the first n_prompts (20; neo2023 all) kept, identical strings collapsed to their first occurrence
#   attribution tokens = [BOS] + encode(text)
@dataclass(frozen=True)
class AuthorsPrompt:
    """One prompt the authors' way: ``text`` (decoded, newlines replaced per protocol) and ``tokens`` (what is
    traced: the text re-tokenised with BOS, or the trimmed tokens as measured)."""

    text: str
    tokens: list[int]
    doc_id: int
    token_pos: int  # the peak's position in [BOS] + doc (the authors' BOS coordinates)
    start_pos: int  # the first kept text token (text coordinates, no BOS)
    activation: float  # og_act: the peak activation A with BOS and the whole left context
    trimmed_activation: float  # trunc_act: the activation of the LAST bisection test (the authors' record)

    @property
    def below_threshold(self) -> bool:
        """True when the recorded activation is not > 0.8 A (the authors' quirk: such prompts are kept)."""
        return not self.trimmed_activation > THRESHOLD * self.activation


@dataclass(frozen=True)
class NeuronPrompts:
    """A neuron's prompts under a protocol's trimming, and what was dropped on the way (for the record)."""

    neuron: Neuron
    prompts: list[AuthorsPrompt]
    candidates: int  # documents trimmed (n_candidates, or fewer when the corpus is smaller)
    dropped_bos_peak: list[int]  # doc_ids whose peak is at BOS: the authors' code crashes; dropped here
    dropped_long: int  # prompts of ≥ max_prompt_tokens tokens
    cut: int  # kept prompts past n_prompts
    duplicates: int  # prompts collapsed into an identical earlier string

    @property
    def below_threshold(self) -> int:
        return sum(p.below_threshold for p in self.prompts)


def authors_bisection(evaluate: Callable[[list[tuple[int, int]]], list[float]], lengths: Sequence[int],
                      activations: Sequence[float], ratio: float = THRESHOLD,
                      longest: int | None = None) -> list[tuple[int, float] | None]:
    """``find_truncated_texts``'s binary search for many items in lockstep: item i has ``lengthsᵢ`` tokens
    (its peak the last) and peak activation Aᵢ; ``evaluate([(i, mid), …])`` returns the activation at the last
    token of item i's tokens[mid:]. Per item: start = 0, end = len − 1, mid = (start + end) // 2;
    while start != mid: start ← mid if f(mid) > ratio·A else end ← mid; mid ← (start + end) // 2.
    Returns (start_pos, trunc_act) with trunc_act the LAST evaluated activation (Aᵢ when nothing was
    evaluated, lengths 1 and 2), or None for an item of length 0 (a peak at BOS: the authors' code crashes).
    ``longest``: the final start_pos is ≤ end, so once len − end ≥ longest the prompt is sure to have
    ≥ longest tokens (the caller drops it): the item stops there, returned as (end, nan)."""
    n = len(lengths)
    start, end = [0] * n, [L - 1 for L in lengths]
    mid = [(s + e) // 2 for s, e in zip(start, end)]
    out: list[tuple[int, float] | None] = [None] * n
    running = []
    for i, L in enumerate(lengths):
        if L == 0:
            continue
        if start[i] == mid[i]:
            out[i] = (mid[i], float(activations[i]))
        else:
            running.append(i)
    while running:
        still = []
        for i, f in zip(running, evaluate([(i, mid[i]) for i in running])):
            f = float(f)
            if f > ratio * float(activations[i]):
                start[i] = mid[i]
            else:
                end[i] = mid[i]
            mid[i] = (start[i] + end[i]) // 2
            if start[i] == mid[i]:
                out[i] = (mid[i], f)
            elif longest is not None and lengths[i] - end[i] >= longest:
                out[i] = (end[i], float("nan"))
            else:
                still.append(i)
        running = still
    return out


def last_activations(model, queries: Sequence[tuple[Sequence[int], Neuron]]) -> list[float]:
    """Each query's neuron activation at the last token of its prompt. Batched by tokens; each forward pass
    stops at the deepest layer asked and computes only the asked neurons of that layer."""
    out = [0.0] * len(queries)
    for batch in length_batches([len(q[0]) for q in queries]):
        layers = {queries[i][1].layer for i in batch}
        top = max(layers)
        cols = sorted({queries[i][1].index for i in batch if queries[i][1].layer == top})
        run = model.run([list(queries[i][0]) for i in batch], logits=None, keep={("post", l) for l in layers},
                        stop_at_layer=top, stop_neurons=cols)
        for row, i in enumerate(batch):
            out[i] = float(run.neuron(queries[i][1])["post"][row, len(queries[i][0]) - 1])
    return out


def peak_activations(model, neurons: Sequence[Neuron], docs: Sequence[Sequence[int]]) -> dict[Neuron, tuple]:
    """{neuron: (A [N] float32, p [N] int64)}: each document's peak activation and its position over ALL
    positions of ``docs`` (token lists, BOS included and counted: the authors' get_neuron_max_acts), first
    position on ties. One batched pass per chunk of documents for all neurons, stopping at the deepest layer."""
    neurons = list(dict.fromkeys(neurons))
    A = {n: np.full(len(docs), -np.inf, np.float32) for n in neurons}
    P = {n: np.zeros(len(docs), np.int64) for n in neurons}
    if not neurons:
        return {}
    layers = {n.layer for n in neurons}
    top = max(layers)
    cols = sorted({n.index for n in neurons if n.layer == top})
    for batch in length_batches([len(d) for d in docs]):
        run = model.run([list(docs[i]) for i in batch], logits=None, keep={("post", l) for l in layers},
                        stop_at_layer=top, stop_neurons=cols)
        T = run.tokens.shape[1]
        pad = np.arange(T)[None, :] >= run.lengths[:, None]  # [B, T]
        for n in neurons:
            post = np.where(pad, -np.inf, run.neuron(n)["post"])  # [B, T]
            p = post.argmax(1)  # [B] first maximum
            A[n][batch] = post[np.arange(len(batch)), p]
            P[n][batch] = p
    return {n: (A[n], P[n]) for n in neurons}


def authors_prompts(model, neurons: Sequence[Neuron], docs: Sequence, protocol=None,
                    top: dict | None = None) -> dict[Neuron, NeuronPrompts]:
    """Each neuron's prompts the authors' way (the module's "paper's protocols" comment; ``protocol`` a
    ``minitf.protocol.Protocol``, default neo2024: its n_candidates, max_prompt_tokens, newlines, n_prompts,
    attribution_tokens, trim_bos and prompt_tokens_counted are used). ``docs``: the corpus's documents, ``Document`` or (doc_id, text)
    in file order. All neurons' searches run in lockstep, one batched forward pass per bisection step.
    ``top``: {neuron: [(doc_id, p, A)]} each neuron's top documents already ranked the authors' way (from the
    index: ``trace.index_candidates``); then ``docs`` need hold only those, and no peak pass runs.

    Where the authors' code crashes (a document whose peak is at BOS) the document is dropped and listed in
    ``dropped_bos_peak``; a neuron with fewer prompts than n_prompts keeps what it has."""
    from minitf.protocol import get_protocol

    proto = get_protocol(protocol)
    if proto.trimming != "authors" or proto.duplicates != "collapse":
        raise ValueError(f"authors_prompts does the authors' trimming with duplicates collapsed; protocol "
                         f"{proto.name} asks trimming={proto.trimming}, duplicates={proto.duplicates} (mine_prompts)")
    neurons = list(dict.fromkeys(neurons))
    for n in neurons:
        check_neuron(n, model.cfg.n_layer, model.cfg.d_mlp, where=str(n))
    docs = [(int(d[0]), str(d[1])) for d in docs]
    n_ctx, bos = model.cfg.n_ctx, model.bos
    with_bos = [tokenize_document(model, text, True) for _, text in docs]
    # to_tokens(doc, prepend_bos=False)[:, :p]: p ≤ len(with_bos) − 1, so the BOS-less tokens past n_ctx − 1
    # (which the authors' tokenisation has) are never used
    text_tokens = [ids[1:] for ids in with_bos]
    items = []  # (neuron, doc index, A, p)
    if top is not None:
        row = {d: i for i, (d, _) in enumerate(docs)}
        items = [(n, row[d], float(a), int(p)) for n in neurons for d, p, a in top[n][:proto.n_candidates]]
    peaks = peak_activations(model, neurons if top is None else [], with_bos)
    for n in peaks:
        A, P = peaks[n]
        order = np.argsort(-A.astype(np.float64), kind="stable")[:proto.n_candidates]  # ties: lower doc first
        items += [(n, int(i), float(A[i]), int(P[i])) for i in order]
    b = [bos] if proto.trim_bos else []

    def evaluate(queries):
        return last_activations(model, [(b + text_tokens[items[i][1]][mid:items[i][3]], items[i][0])
                                        for i, mid in queries])

    extra = len(b) if proto.prompt_tokens_counted == "with-bos" else 0
    found = authors_bisection(evaluate, [p for _, _, _, p in items], [a for _, _, a, _ in items],
                              longest=proto.max_prompt_tokens - extra)
    out = {}
    for n in neurons:
        rows = [(it, res) for it, res in zip(items, found) if it[0] == n]
        bos_peak = [docs[i][0] for (_, i, _, _), res in rows if res is None]
        kept, long = [], 0
        for (_, i, a, p), res in rows:
            if res is None:
                continue
            s, f = res
            if p - s + extra >= proto.max_prompt_tokens:
                long += 1
                continue
            piece = text_tokens[i][s:p]
            text = model.decode(piece)
            if proto.newlines == "space":
                text = text.replace("\n", " ")
            tokens = ([bos] + model.encode(text))[:n_ctx] if proto.attribution_tokens == "retokenized" else b + piece
            kept.append(AuthorsPrompt(text, tokens, docs[i][0], p, s, a, f))
        first = kept[:proto.n_prompts]
        unique, seen = [], set()
        for pr in first:  # head_results[prompt] = …: an identical string counts once, at its first position
            if pr.text not in seen:
                seen.add(pr.text)
                unique.append(pr)
        out[n] = NeuronPrompts(n, unique, len(rows), bos_peak, long, len(kept) - len(first), len(first) - len(unique))
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
