"""One shard of a neuron index: the unit of work every executor runs (local process, Ray actor).

A shard is consecutive documents of the corpus (``iter_shards``), cut by characters, so it is fixed by the
corpus alone. ``index_shard`` tokenizes them (``corpus.tokenize_document``), sorts them by (split, length,
doc_id), cuts batches of at most ``tokens_per_batch`` padded tokens, runs each batch up to the last indexed
layer (``model.run(stop_at_layer=…)``, no logits) and adds its post-GELU activations to a fresh
``topk.TopkState``. Run on one BLAS thread (``one_blas_thread``), every float depends only on the shard.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from minitf.corpus import SPLITS, read_documents, split_of, tokenize_document
from minitf.kernels import set_blas_threads
from minitf.index.topk import HIST_EDGES, TopkState


# ---- shards: fixed by the corpus alone ---------------------------------------------------------------
def iter_shards(corpus: Path, split: str | None, shard_chars: int) -> Iterator[tuple[int, list[tuple[int, str]]]]:
    """(shard id, [(doc_id, text)]): consecutive documents of ``split``, a shard closing once its texts
    hold ``shard_chars`` characters."""
    shard, chars, sid = [], 0, 0
    for doc in read_documents(corpus):
        if split is not None and split_of(doc) != split:
            continue
        shard.append((doc.doc_id, doc.text))
        chars += len(doc.text)
        if chars >= shard_chars:
            yield sid, shard
            shard, chars, sid = [], 0, sid + 1
    if shard:
        yield sid, shard


@dataclass(frozen=True)
class ShardSpec:
    """What indexing a shard needs besides the model (small and picklable: sent to every worker)."""

    layers: tuple[int, ...]
    k: int
    bos: bool
    tokens_per_batch: int


def index_shard(model, spec: ShardSpec, docs: list[tuple[int, str]]) -> TopkState:
    """The statistics of one shard's documents [(doc_id, text)]; the caller sets the BLAS threads (one)."""
    state = TopkState.empty(len(spec.layers), spec.k, model.cfg.d_mlp)
    first = 1 if spec.bos else 0
    items = []
    for doc_id, text in docs:
        ids = tokenize_document(model, text, spec.bos)
        if len(ids) > first:
            items.append((SPLITS.index(split_of(text)), doc_id, ids))
    for batch in _batches(items, spec.tokens_per_batch):
        _run_batch(model, spec, state, batch)
    return state


def _batches(items: list, tokens_per_batch: int) -> Iterator[list]:
    """Sort a shard's [(split slot, doc_id, tokens)] by (split, length, doc_id) and cut it into batches of at
    most ``tokens_per_batch`` padded tokens (a longer document goes alone), never mixing splits."""
    batch: list = []
    for item in sorted(items, key=lambda x: (x[0], len(x[2]), x[1])):
        if batch and (item[0] != batch[0][0] or (len(batch) + 1) * len(item[2]) > tokens_per_batch):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _run_batch(model, spec: ShardSpec, state: TopkState, batch: list) -> None:
    s, first = batch[0][0], 1 if spec.bos else 0
    lengths = np.array([len(x[2]) for x in batch])  # [B]
    run = model.run([x[2] for x in batch], logits=None, keep={"post"}, stop_at_layer=max(spec.layers))
    doc_ids = np.array([x[1] for x in batch], np.int64)  # [B]
    n_valid = int(lengths.sum()) - first * len(batch)
    for li, layer in enumerate(spec.layers):
        post = run.cache.pop(("post", layer))  # [B, T, M]
        post[:, :first] = -np.inf  # BOS and padded positions never count
        for b in np.flatnonzero(lengths < post.shape[1]):
            post[b, lengths[b]:] = -np.inf
        _update(state, s, li, post, n_valid, doc_ids)
    run.cache.clear()
    state.seen[s] += n_valid
    state.docs[s] += len(batch)
    state.tokens[s] += int(lengths.sum())


def _count_above(rows: np.ndarray, edge: float) -> np.ndarray:
    """[M] count of rows [N, M] above ``edge``: bytes summed 255 rows at a time (no int64 [N, M] temporary)."""
    above = np.greater(rows, np.float32(edge)).view(np.uint8)  # [N, M] 0/1
    total = np.zeros(rows.shape[1], np.int64)  # [M]
    for i in range(0, rows.shape[0], 255):
        total += np.add.reduce(above[i:i + 255], axis=0, dtype=np.uint8)
    return total


def _first_argmax(post: np.ndarray, doc_max: np.ndarray, rows: int = 64) -> np.ndarray:
    """[B, M] int32: the first t with post[b, t, m] == doc_max[b, m], found ``rows`` positions at a time
    (``argmax`` along a middle axis would copy all of post [B, T, M]; a gather per pair is a cache miss each)."""
    B, T, M = post.shape
    first = np.full((B, M), -1, np.int32)  # [B, M]
    for t0 in range(0, T, rows):
        hit = post[:, t0:t0 + rows] == doc_max[:, None, :]  # [B, r, M]
        new = hit.any(1) & (first < 0)  # [B, M]
        if new.any():
            first[new] = t0 + hit.argmax(1)[new]
    return first


def _update(state: TopkState, s: int, li: int, post: np.ndarray, n_valid: int, doc_ids: np.ndarray) -> None:
    """Add one batch's activations post [B, T, M] of layer li (split s) to the state; positions that do not
    count (BOS, padding) hold −∞, and n_valid is how many do count."""
    B, T, M = post.shape
    above = [_count_above(post.reshape(B * T, M), e) for e in HIST_EDGES]  # 6 × [M] counts above each edge
    state.positive[s, li] += above[0]
    hist = state.hist[s, li]  # [nb, M]
    hist[0] += n_valid - above[0]
    for b in range(1, len(HIST_EDGES)):
        hist[b] += above[b - 1] - above[b]
    hist[-1] += above[-1]

    doc_max = post.max(1)  # [B, M] each document's maximum
    kth = state.top_act[s, li, -1]  # [M] current k-th best (−∞ while not full)
    is_cand = (doc_max >= kth) & (doc_max > -np.inf)  # [B, M] could enter the top-k (a tie may win on doc_id)
    cols = np.flatnonzero(is_cand.any(0))  # [C]
    if cols.size == 0:
        return
    where = _first_argmax(post, doc_max)  # [B, M]
    cand = np.where(is_cand, doc_max, -np.inf)[:, cols]  # [B, C]
    docs = np.where(is_cand, doc_ids[:, None], -1)[:, cols]  # [B, C]
    state.add_candidates(s, li, cand, docs, where[:, cols], cols)


def use_one_blas_thread() -> int | None:
    """Set NumPy's OpenBLAS (and so ``model.run``) to one thread; the previous count, None if not OpenBLAS."""
    return set_blas_threads(1)


@contextmanager
def one_blas_thread():
    """The block runs on one BLAS thread: the same floats in every worker, whatever the machine's default."""
    before = use_one_blas_thread()
    try:
        yield
    finally:
        if before is not None:
            set_blas_threads(before)
