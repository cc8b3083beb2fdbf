"""A neuron index: one streaming pass over a corpus that records, for every neuron of the chosen layers,

* its top-k documents: (doc_id, position, activation) where activation = max over the document's positions
  of the post-GELU activation and position its first argmax — each document counts once (the paper keeps
  k = 30 per neuron);
* how many positions it was positive at, out of how many positions were seen;
* a coarse histogram of its activations over fixed bins (−∞,0] (0,½] (½,1] (1,2] (2,4] (4,8] (8,∞).

Documents are ``tokenize_document(model, text, bos)`` (BOS + tokens, truncated to the context); the BOS
position is not text and is left out of every statistic. Train and test documents (``corpus.split_of``)
are kept apart: every array has a leading split axis (0 train, 1 test), so one index serves both.

Memory is bounded whatever the corpus size: per batch, each neuron's per-document maxima [B, M] are merged
into the running top-k [k, M] (only columns where some document beats the current k-th value), and the
counts are sums. The forward pass stops after the last requested layer (``stop_at_layer``), no logits.

Files, next to the corpus by default (``<corpus>.index/``), named after the model folder:

* ``<name>.npz`` — arrays ``top_act`` [2, L, k, M] float32 (descending along k; −inf where empty),
  ``top_doc`` [2, L, k, M] int64 (−1 where empty), ``top_pos`` [2, L, k, M] int32, ``positive`` [2, L, M]
  int64, ``hist`` [2, L, 7, M] int64, ``seen`` [2] int64 (positions), ``docs`` [2] int64, ``tokens`` [2]
  int64 (tokens run, BOS included), ``layers`` [L], ``hist_edges`` [6] float32, and ``manifest`` (JSON text);
* ``<name>.json`` — the same manifest for people: format, version, model (name, sha256 of the float32
  weights and tokenizer files), corpus (path, sha256, size, mtime), layers, k, split, bos, n_ctx, counts.

An index whose model or corpus sha256 differs from the current ones is stale: ``load_index`` refuses it.

Interrupting (Ctrl-C) or a crash leaves ``<name>.partial/``: each worker's state at its last block of
documents, saved atomically (every ``CHECKPOINT_SECONDS`` and when stopped). Rerunning the same command
resumes there; blocks, batches and the merge are deterministic, so the result equals an uninterrupted
run's exactly. ``MINITF_INDEX_STOP_AFTER=N`` stops each worker after N blocks as if interrupted (tests).

Two worker processes (``workers=2``) each take every other document (doc_id mod workers) with NumPy's
BLAS limited to one thread each (OPENBLAS/OMP/MKL_NUM_THREADS=1 in the spawned process's environment), so
the non-BLAS work (softmax, GELU, LayerNorm, top-k) runs on both cores too; the parent merges their states.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .corpus import SPLITS, check_split, corpus_format, file_sha256, read_documents, split_of, tokenize_document
from .errors import MinitfError
from .names import Neuron, parse_neuron

FORMAT = "minitf-neuron-index"
VERSION = 1
HIST_EDGES = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0], np.float32)  # bins: (−∞,0] (0,½] … (8,∞)
TOKENS_PER_BATCH = 4096  # padded B·T of one forward pass
BLOCK_TOKENS = 2 * TOKENS_PER_BATCH  # documents read, sorted by length and batched together; the resume unit
CHECKPOINT_SECONDS = 60.0
STOP_AFTER_ENV = "MINITF_INDEX_STOP_AFTER"
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_MODEL_SHA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class IndexInterrupted(KeyboardInterrupt):
    """The build stopped early (Ctrl-C or ``MINITF_INDEX_STOP_AFTER``); its progress is saved."""


# ---- fingerprints and paths -----------------------------------------------------------------------
def model_sha256(model) -> str:
    """sha256 over the float32 weights (sorted names, shapes, bytes) and the folder's tokenizer files."""
    if model not in _MODEL_SHA:
        h = hashlib.sha256()
        for name in sorted(model.w):
            a = np.ascontiguousarray(model.w[name], dtype=np.float32)
            h.update(f"{name}:{a.shape}\n".encode())
            h.update(memoryview(a).cast("B"))
        if model.folder is not None:
            for name in ("vocab.json", "merges.txt"):
                if (Path(model.folder) / name).is_file():
                    h.update(name.encode() + bytes.fromhex(file_sha256(Path(model.folder) / name)))
        _MODEL_SHA[model] = h.hexdigest()
    return _MODEL_SHA[model]


def model_name(model) -> str:
    """The index file's stem: the model folder's name ("tiny", "gpt2"), or "model" without a folder."""
    return Path(model.folder).resolve().name if model.folder is not None else "model"


def index_paths(model, corpus: Path, index_dir: Path | None = None) -> tuple[Path, Path, Path]:
    """(<dir>/<name>.npz, <dir>/<name>.json, <dir>/<name>.partial/) with <dir> = <corpus>.index by default."""
    d = Path(index_dir) if index_dir is not None else Path(str(corpus) + ".index")
    name = model_name(model)
    return d / f"{name}.npz", d / f"{name}.json", d / f"{name}.partial"


def _corpus_info(corpus: Path, known: dict | None = None) -> dict:
    """path, size, mtime_ns and sha256 (re-hashed only when size or mtime changed since ``known``)."""
    try:
        st = corpus.stat()
    except FileNotFoundError:
        raise MinitfError(f"{corpus}: no such corpus file") from None
    info = {"path": str(corpus.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        info["sha256"] = known["sha256"]
    else:
        info["sha256"] = file_sha256(corpus)
    return info


def _atomic_write(path: Path, write: Callable) -> None:
    """Write with ``write(file)`` to a temp name in the same folder, then ``os.replace`` it onto ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MinitfError(f"{path}: cannot write ({e.strerror or e})") from None


def _save_npz(path: Path, arrays: dict, meta: dict) -> None:
    _atomic_write(path, lambda f: np.savez(f, manifest=np.array(json.dumps(meta)), **arrays))


# ---- the per-worker state -------------------------------------------------------------------------
@dataclass
class _State:
    """Running statistics of one worker (or the merged index); the leading axis is the split (train, test)."""

    top_act: np.ndarray  # [2, L, k, M] float32, descending along k
    top_doc: np.ndarray  # [2, L, k, M] int64
    top_pos: np.ndarray  # [2, L, k, M] int32
    positive: np.ndarray  # [2, L, M] int64
    hist: np.ndarray  # [2, L, nb, M] int64
    seen: np.ndarray  # [2] int64 positions counted (BOS excluded)
    docs: np.ndarray  # [2] int64 documents counted
    tokens: np.ndarray  # [2] int64 tokens run (BOS included)

    ARRAYS = ("top_act", "top_doc", "top_pos", "positive", "hist", "seen", "docs", "tokens")

    @classmethod
    def empty(cls, n_layers: int, k: int, d_mlp: int) -> "_State":
        shape = (2, n_layers, k, d_mlp)
        return cls(np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int64), np.full(shape, -1, np.int32),
                   np.zeros((2, n_layers, d_mlp), np.int64),
                   np.zeros((2, n_layers, len(HIST_EDGES) + 1, d_mlp), np.int64),
                   np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64))

    def arrays(self) -> dict:
        return {name: getattr(self, name) for name in self.ARRAYS}

    @classmethod
    def from_npz(cls, data) -> "_State":
        return cls(**{name: data[name] for name in cls.ARRAYS})


def _topk_order(act: np.ndarray, doc: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Row order along axis 0 of [N, C] entries: activation descending, then doc_id, then position."""
    return np.lexsort((pos, doc, -act), axis=0)  # [N, C]


def _merge_topk(state: _State, s: int, li: int, act: np.ndarray, doc: np.ndarray, pos: np.ndarray,
                cols: np.ndarray) -> None:
    """Merge candidates [N, C] (columns ``cols`` of the layer) into state's top-k of split s, layer li."""
    k = state.top_act.shape[2]
    all_act = np.concatenate([state.top_act[s, li][:, cols], act])  # [k + N, C]
    all_doc = np.concatenate([state.top_doc[s, li][:, cols], doc])  # [k + N, C]
    all_pos = np.concatenate([state.top_pos[s, li][:, cols], pos])  # [k + N, C]
    order = _topk_order(all_act, all_doc, all_pos)[:k]  # [k, C]
    state.top_act[s, li][:, cols] = np.take_along_axis(all_act, order, 0)
    state.top_doc[s, li][:, cols] = np.take_along_axis(all_doc, order, 0)
    state.top_pos[s, li][:, cols] = np.take_along_axis(all_pos, order, 0)


def _update(state: _State, s: int, li: int, post: np.ndarray, valid: np.ndarray, doc_ids: np.ndarray) -> None:
    """Add one batch's activations post [B, T, M] of layer li (split s) to the state.

    valid [B, T] marks real, non-BOS positions; post is overwritten with −∞ elsewhere.
    """
    post[~valid] = -np.inf  # [B, T, M] padded and BOS positions never count
    n_valid = int(valid.sum())
    above = [np.count_nonzero(post > e, axis=(0, 1)) for e in HIST_EDGES]  # 6 × [M] counts above each edge
    state.positive[s, li] += above[0]
    hist = state.hist[s, li]  # [nb, M]
    hist[0] += n_valid - above[0]
    for b in range(1, len(HIST_EDGES)):
        hist[b] += above[b - 1] - above[b]
    hist[-1] += above[-1]

    doc_max = post.max(1)  # [B, M] each document's maximum
    kth = state.top_act[s, li, -1]  # [M] current k-th best (−∞ while not full)
    cols = np.flatnonzero((doc_max > kth).any(0))  # [C] neurons with a new candidate (a tie keeps the earlier)
    if cols.size == 0:
        return
    cand = doc_max[:, cols]  # [B, C]
    where = post[:, :, cols].argmax(1).astype(np.int32)  # [B, C] first argmax position
    docs = np.broadcast_to(doc_ids[:, None], cand.shape)  # [B, C]
    has = cand > -np.inf  # [B, C] documents with a real position
    where = np.where(has, where, -1)
    _merge_topk(state, s, li, cand, np.where(has, docs, -1), where, cols)


def _merge_states(states: list[_State]) -> _State:
    """One state from several workers' states, by the same order (activation, then doc_id, then position)."""
    out = _State(*(np.copy(getattr(states[0], name)) for name in _State.ARRAYS))
    for st in states[1:]:
        for name in ("positive", "hist", "seen", "docs", "tokens"):
            getattr(out, name)[...] += getattr(st, name)
        k = out.top_act.shape[2]
        for s in range(2):
            for li in range(out.top_act.shape[1]):
                act = np.concatenate([out.top_act[s, li], st.top_act[s, li]])  # [2k, M]
                doc = np.concatenate([out.top_doc[s, li], st.top_doc[s, li]])  # [2k, M]
                pos = np.concatenate([out.top_pos[s, li], st.top_pos[s, li]])  # [2k, M]
                order = _topk_order(act, doc, pos)[:k]  # [k, M]
                out.top_act[s, li] = np.take_along_axis(act, order, 0)
                out.top_doc[s, li] = np.take_along_axis(doc, order, 0)
                out.top_pos[s, li] = np.take_along_axis(pos, order, 0)
    return out


# ---- one worker: a shard of the corpus --------------------------------------------------------------
@dataclass
class _Job:
    """What a worker needs; picklable for spawned processes (``weights`` are sent separately, see _worker_main)."""

    cfg: object
    weights: dict
    folder: Path | None
    tokenizer: object  # a tiktoken Encoding when the model has no folder, else None (rebuilt from the folder)
    corpus: Path
    layers: list[int]
    k: int
    split: str | None
    bos: bool
    n_workers: int
    partial: Path
    params: dict
    stop_after: int | None
    tokens_per_batch: int
    block_tokens: int
    checkpoint_seconds: float

    def model(self):
        from .model import Model

        m = Model(self.cfg, self.weights, self.folder)
        if self.tokenizer is not None:
            m._tokenizer = self.tokenizer
        return m


def _part_path(partial: Path, shard: int, n: int) -> Path:
    return partial / f"worker{shard}of{n}.npz"


def _load_part(job: _Job, shard: int) -> tuple[_State, int]:
    """(state, documents of the shard done) from a worker checkpoint whose params match, else a fresh state."""
    path = _part_path(job.partial, shard, job.n_workers)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["manifest"]))
                if meta.get("params") == job.params:
                    return _State.from_npz(data), int(meta["docs_done"])
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # unreadable checkpoint: start this shard over
    return _State.empty(len(job.layers), job.k, job.cfg.d_mlp), 0


def _shard_documents(job: _Job, shard: int, skip: int) -> Iterator:
    n = 0
    for doc in read_documents(job.corpus):
        if doc.doc_id % job.n_workers != shard:
            continue
        if job.split is not None and split_of(doc) != job.split:
            continue
        n += 1
        if n > skip:
            yield doc


def _blocks(model, job: _Job, docs: Iterable) -> Iterator[tuple[int, list]]:
    """(documents consumed, [(split slot, doc_id, tokens)]) blocks of about ``block_tokens`` tokens."""
    block, consumed, n_tok = [], 0, 0
    first = 1 if job.bos else 0
    for doc in docs:
        consumed += 1
        ids = tokenize_document(model, doc.text, job.bos)
        if len(ids) > first:
            block.append((SPLITS.index(split_of(doc)), doc.doc_id, ids))
            n_tok += len(ids)
        if n_tok >= job.block_tokens:
            yield consumed, block
            block, consumed, n_tok = [], 0, 0
    if consumed:
        yield consumed, block


def _batches(block: list, tokens_per_batch: int) -> Iterator[list]:
    """Sort a block by (split, length, doc_id) and cut it into batches of at most ``tokens_per_batch`` padded
    tokens (a longer document goes alone), never mixing splits."""
    items = sorted(block, key=lambda x: (x[0], len(x[2]), x[1]))
    batch: list = []
    for item in items:
        if batch and (item[0] != batch[0][0] or (len(batch) + 1) * len(item[2]) > tokens_per_batch):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _run_batch(model, job: _Job, state: _State, batch: list) -> int:
    s = batch[0][0]
    lengths = np.array([len(x[2]) for x in batch])  # [B]
    run = model.run([x[2] for x in batch], logits=None, keep={"post"}, stop_at_layer=max(job.layers))
    T = run.tokens.shape[1]
    pos = np.arange(T)  # [T]
    valid = (pos[None, :] < lengths[:, None]) & (pos[None, :] >= (1 if job.bos else 0))  # [B, T]
    doc_ids = np.array([x[1] for x in batch], np.int64)  # [B]
    for li, layer in enumerate(job.layers):
        _update(state, s, li, run.cache.pop(("post", layer)), valid, doc_ids)
    run.cache.clear()
    state.seen[s] += int(valid.sum())
    state.docs[s] += len(batch)
    state.tokens[s] += int(lengths.sum())
    return int(lengths.sum())


def _index_shard(job: _Job, shard: int, report: Callable[[int, int], None], stop: Callable[[], bool]) -> bool:
    """Index shard ``shard`` of ``n_workers``; returns True when finished, False when stopped early.

    report(documents done in this shard, tokens run since the last report) after each batch. A stop asked
    for in the middle of a block saves the state as it was when the block began (a copy of the arrays).
    """
    model = job.model()
    state, done = _load_part(job, shard)
    path = _part_path(job.partial, shard, job.n_workers)
    report(done, 0)
    last_save, blocks = time.monotonic(), 0

    def save(st: _State, docs_done: int):
        _save_npz(path, st.arrays(), {"params": job.params, "docs_done": docs_done})

    for consumed, block in _blocks(model, job, _shard_documents(job, shard, done)):
        at_start = _State(*(a.copy() for a in state.arrays().values()))
        for batch in _batches(block, job.tokens_per_batch):
            if stop():
                save(at_start, done)
                return False
            report(done, _run_batch(model, job, state, batch))
        done += consumed
        blocks += 1
        report(done, 0)
        if stop() or (job.stop_after is not None and blocks >= job.stop_after):
            save(state, done)
            return False
        if time.monotonic() - last_save >= job.checkpoint_seconds:
            save(state, done)
            last_save = time.monotonic()
    save(state, done)
    return True


def _worker_main(job: _Job, shard: int, messages, stop_event, weights) -> None:
    """Entry point of a spawned worker: Ctrl-C is the parent's to handle (it sets ``stop_event``).

    The weights come through the ``weights`` queue, not with the process object: CPython's spawn writes that
    object to the child's pipe from ``Process.start``, which would block forever if a child died early.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        job.weights = weights.get()
        finished = _index_shard(job, shard, lambda d, t: messages.put(("progress", shard, d, t)), stop_event.is_set)
        messages.put(("done" if finished else "stopped", shard, None, None))
    except MinitfError as e:
        messages.put(("error", shard, str(e), None))
    except BaseException as e:  # noqa: BLE001 — report anything to the parent, then die
        messages.put(("error", shard, f"index worker {shard} failed: {type(e).__name__}: {e}", None))
        raise


# ---- progress ---------------------------------------------------------------------------------------
class _Progress:
    """A one-line progress bar on stderr: documents, tokens, tokens/s and ETA."""

    label = "index"  # the line's first word (prompts.py's corpus scan says "scan for L3N157")

    def __init__(self, total_docs: int, enabled: bool):
        self.total, self.enabled = total_docs, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = time.monotonic()  # the first line after 0.5 s (tty) / 15 s
        self.done: dict[int, int] = {}
        self.resumed = 0  # documents already done when this run started
        self.tokens = 0

    def update(self, shard: int, done: int, tokens: int, force: bool = False) -> None:
        if shard not in self.done:
            self.resumed += done
        self.done[shard] = done
        self.tokens += tokens
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < (0.5 if self.tty else 15.0)):
            return
        self.last = now
        docs = sum(self.done.values())
        elapsed = max(now - self.start, 1e-9)
        rate_docs = (docs - self.resumed) / elapsed
        eta = (self.total - docs) / rate_docs if rate_docs > 0 else float("nan")
        pct = 100.0 * docs / self.total if self.total else 100.0
        line = (f"{self.label}: {docs}/{self.total} documents ({pct:.0f}%)  {self.tokens:,} tokens  "
                f"{self.tokens / elapsed:,.0f} tokens/s  ETA {_fmt_seconds(eta)}")
        print(("\r" + line + "\x1b[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self.enabled:
            print(("\n" if self.tty else "") + text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.done:
            self.update(next(iter(self.done)), self.done[next(iter(self.done))], 0, force=True)
        if self.tty:
            print(file=sys.stderr, flush=True)


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ---- building ---------------------------------------------------------------------------------------
def _check_layers(model, layers) -> list[int]:
    L = model.cfg.n_layer
    layers = list(range(L)) if not layers else sorted(set(int(x) for x in layers))
    for layer in layers:
        if not 0 <= layer < L:
            raise MinitfError(f"--layers {layer}: the model has {L} layers (0–{L - 1})")
    return layers


def _count_documents(corpus: Path, split: str | None) -> int:
    return sum(1 for doc in read_documents(corpus) if split is None or split_of(doc) == split)


def build_index(model, corpus: str | Path, layers: Iterable[int] | None = None, k: int = 30,
                split: str | None = None, workers: int = 2, progress: bool = True, bos: bool = True,
                index_dir: str | Path | None = None, rebuild: bool = False) -> Path:
    """Index ``corpus`` for ``model`` (see the module docstring) and return the path of the .npz.

    An up-to-date index with the same settings is returned as is (``rebuild=True`` redoes it); a partial
    build with the same settings is resumed. Raises ``IndexInterrupted`` (a KeyboardInterrupt) when stopped.
    """
    corpus = Path(corpus)
    corpus_format(corpus)
    split = check_split(split)
    layers = _check_layers(model, layers)
    if k < 1:
        raise MinitfError(f"--top-k {k}: must be at least 1")
    if workers < 1:
        raise MinitfError(f"--workers {workers}: must be at least 1")
    if not _can_spawn():
        workers = 1
    npz, manifest_path, partial = index_paths(model, corpus, index_dir)
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinitfError(f"{partial.parent}: cannot create the index folder ({e.strerror}); pass index_dir") from None

    known = _read_manifest(npz) if npz.is_file() else None
    corpus_info = _corpus_info(corpus, (known or {}).get("corpus"))
    settings = {"layers": layers, "k": k, "split": split, "bos": bos, "n_ctx": model.cfg.n_ctx}
    model_info = {"name": model_name(model), "sha256": model_sha256(model), "n_layer": model.cfg.n_layer,
                  "d_mlp": model.cfg.d_mlp}
    if known and not rebuild and known.get("complete") and known.get("model") == model_info \
            and known["corpus"]["sha256"] == corpus_info["sha256"] \
            and all(known.get(key) == value for key, value in settings.items()):
        shutil.rmtree(partial, ignore_errors=True)
        return npz

    params = {"format": FORMAT, "version": VERSION, "model_sha256": model_info["sha256"],
              "corpus_sha256": corpus_info["sha256"], "workers": workers, "tokens_per_batch": TOKENS_PER_BATCH,
              "block_tokens": BLOCK_TOKENS, **settings}
    counts_path = partial / "documents.json"
    total = None
    if counts_path.is_file():
        try:
            saved = json.loads(counts_path.read_text())
            total = saved["documents"] if saved.get("params") == params else None
        except (OSError, ValueError, KeyError):
            total = None
    if total is None:
        for old in partial.glob("worker*.npz"):
            old.unlink()
        total = _count_documents(corpus, split)
        _atomic_write(counts_path, lambda f: f.write(json.dumps({"params": params, "documents": total}).encode()))

    stop_after = int(os.environ[STOP_AFTER_ENV]) if os.environ.get(STOP_AFTER_ENV) else None
    job = _Job(model.cfg, model.w, model.folder, None if model.folder is not None else model._tokenizer,
               corpus, layers, k, split, bos, workers, partial, params, stop_after,
               TOKENS_PER_BATCH, BLOCK_TOKENS, CHECKPOINT_SECONDS)
    bar = _Progress(total, progress)
    t0 = time.monotonic()
    try:
        finished = (_run_in_process if workers == 1 else _run_workers)(job, bar)
    except KeyboardInterrupt:
        raise IndexInterrupted(f"index: interrupted; rerun to resume from the last checkpoint in {partial}") from None
    finally:
        bar.close()
    if not finished:
        raise IndexInterrupted(f"index: stopped; progress saved in {partial} (rerun to resume)")

    parts = []
    for shard in range(workers):
        with np.load(_part_path(partial, shard, workers), allow_pickle=False) as data:
            parts.append(_State.from_npz(data))
    state = _merge_states(parts)
    manifest = {"format": FORMAT, "version": VERSION, "complete": True, "model": model_info, "corpus": corpus_info,
                **settings, "hist_edges": HIST_EDGES.tolist(),
                "documents": dict(zip(SPLITS, state.docs.tolist())),
                "positions": dict(zip(SPLITS, state.seen.tolist())),
                "tokens": dict(zip(SPLITS, state.tokens.tolist())), "workers": workers,
                "seconds": round(time.monotonic() - t0, 3),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    arrays = state.arrays() | {"layers": np.array(layers, np.int64), "hist_edges": HIST_EDGES}
    _save_npz(npz, arrays, manifest)
    _atomic_write(manifest_path, lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
    shutil.rmtree(partial, ignore_errors=True)
    return npz


def _can_spawn() -> bool:
    """Spawned workers re-import the main script: impossible when it came from stdin ("python -")."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or Path(main_file).is_file()


def _run_in_process(job: _Job, bar: _Progress) -> bool:
    """workers=1: index here; the first Ctrl-C stops after the current block (saved), a second one at once."""
    stopping = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum, frame):
            if stopping.is_set():
                raise KeyboardInterrupt
            stopping.set()
            bar.note("index: stopping after the current batch (Ctrl-C again to quit now)")
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return _index_shard(job, 0, lambda d, t: bar.update(0, d, t), stopping.is_set)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run_workers(job: _Job, bar: _Progress) -> bool:
    """Spawn ``job.n_workers`` processes (one BLAS thread each) and follow their progress."""
    ctx = mp.get_context("spawn")
    messages, stop_event, weights = ctx.Queue(), ctx.Event(), ctx.Queue()
    weights.cancel_join_thread()  # a dead child must not keep the parent from exiting
    light = dataclasses.replace(job, weights=None)
    procs = [ctx.Process(target=_worker_main, args=(light, shard, messages, stop_event, weights), daemon=True)
             for shard in range(job.n_workers)]
    saved = {name: os.environ.get(name) for name in _BLAS_ENV}
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None  # children are born ignoring
    try:                                                                          # Ctrl-C: the parent stops them
        os.environ.update({name: "1" for name in _BLAS_ENV})
        for p in procs:
            p.start()
            weights.put(job.weights)  # pickled by the queue's feeder thread
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if main_thread:
            signal.signal(signal.SIGINT, handler)
    status: dict[int, str] = {}
    dead_since: dict[int, float] = {}
    interrupted = False
    try:
        while len(status) < len(procs):
            try:
                kind, shard, a, b = messages.get(timeout=0.5)
            except queue.Empty:
                for shard, p in enumerate(procs):  # dead without a last word (after its queue drained): crashed
                    if shard not in status and not p.is_alive():
                        dead_since.setdefault(shard, time.monotonic())
                        if time.monotonic() - dead_since[shard] > 3.0:
                            status[shard] = "crashed"
                continue
            if kind == "progress":
                bar.update(shard, a, b)
            elif kind == "error":
                stop_event.set()
                raise MinitfError(a)
            else:
                status[shard] = kind
    except KeyboardInterrupt:
        interrupted = True
        stop_event.set()
        bar.note("index: stopping after the workers' current batch")
    finally:
        for p in procs:
            p.join(timeout=None if interrupted else 60)
            if p.is_alive():
                p.terminate()
                p.join()
    if "crashed" in status.values():
        raise MinitfError(f"an index worker died (out of memory?); progress saved in {job.partial}, rerun to resume")
    return not interrupted and all(v == "done" for v in status.values())


# ---- loading ----------------------------------------------------------------------------------------
def _read_manifest(npz: Path) -> dict | None:
    try:
        with np.load(npz, allow_pickle=False) as data:
            return json.loads(str(data["manifest"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None


class NeuronIndex:
    """A built index (see the module docstring); ``split=None`` in a query means every split it holds."""

    def __init__(self, path: Path, manifest: dict, arrays: dict):
        self.path, self.manifest = path, manifest
        self.layers: list[int] = [int(x) for x in arrays["layers"]]
        self.k: int = int(manifest["k"])
        self.split: str | None = manifest["split"]
        self.bos: bool = bool(manifest["bos"])
        self.hist_edges = arrays["hist_edges"]  # [6]
        self.state = _State.from_npz(arrays)

    def _slots(self, split: str | None) -> list[int]:
        split = check_split(split)
        if split is not None and self.split is not None and split != self.split:
            raise MinitfError(f"{self.path}: the index holds only {self.split} documents, not {split}")
        return [SPLITS.index(split)] if split is not None else [SPLITS.index(self.split)] if self.split else [0, 1]

    def covers(self, neuron: Neuron, split: str | None = None) -> bool:
        """Whether the index holds ``neuron``'s layer and every document of ``split`` (None: all documents)."""
        return neuron.layer in self.layers and self.split in (None, check_split(split))

    def _where(self, neuron) -> tuple[int, int]:
        n = neuron if isinstance(neuron, Neuron) else parse_neuron(neuron)
        if n.layer not in self.layers:
            raise MinitfError(f"{self.path}: layer {n.layer} is not indexed (layers {self.layers})")
        if not 0 <= n.index < self.state.top_act.shape[-1]:
            raise MinitfError(f"{n}: neuron index out of range ({self.state.top_act.shape[-1]} neurons)")
        return self.layers.index(n.layer), n.index

    def top(self, neuron: Neuron | str, split: str | None = None) -> list[tuple[int, int, float]]:
        """[(doc_id, position, activation)] best first: the neuron's top-k documents and where they peak."""
        li, n = self._where(neuron)
        slots = self._slots(split)
        act = np.concatenate([self.state.top_act[s, li, :, n] for s in slots])  # [k·S]
        doc = np.concatenate([self.state.top_doc[s, li, :, n] for s in slots])  # [k·S]
        pos = np.concatenate([self.state.top_pos[s, li, :, n] for s in slots])  # [k·S]
        order = np.lexsort((pos, doc, -act))[: self.k]
        return [(int(doc[i]), int(pos[i]), float(act[i])) for i in order if doc[i] >= 0]

    def histogram(self, neuron: Neuron | str, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(edges [6], counts [7]): counts of activations in (−∞,e₀], (e₀,e₁], …, (e₅,∞)."""
        li, n = self._where(neuron)
        return self.hist_edges, sum(self.state.hist[s, li, :, n] for s in self._slots(split))

    def positive_count(self, neuron: Neuron | str, split: str | None = None) -> int:
        li, n = self._where(neuron)
        return int(sum(self.state.positive[s, li, n] for s in self._slots(split)))

    def positions(self, split: str | None = None) -> int:
        """Positions seen (BOS excluded), the denominator of ``positive_count``."""
        return int(sum(self.state.seen[s] for s in self._slots(split)))

    def documents(self, split: str | None = None) -> int:
        return int(sum(self.state.docs[s] for s in self._slots(split)))


def load_index(model, corpus: str | Path, index_dir: str | Path | None = None) -> NeuronIndex | None:
    """The index of ``corpus`` for ``model``; None if there is none; MinitfError if it is stale or unreadable."""
    corpus = Path(corpus)
    npz, _, _ = index_paths(model, corpus, index_dir)
    if not npz.is_file():
        return None
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        manifest = json.loads(str(arrays.pop("manifest")))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise MinitfError(f"{npz}: unreadable index ({e}); rebuild it with `minitf index`") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION or not manifest.get("complete"):
        raise MinitfError(f"{npz}: not a complete {FORMAT} v{VERSION}; rebuild it with `minitf index`")
    if manifest["model"]["sha256"] != model_sha256(model):
        raise MinitfError(f"{npz}: stale index: built for other weights of {manifest['model']['name']!r} "
                          f"(sha256 {manifest['model']['sha256'][:12]}…); "
                          f"rebuild it with `minitf index --corpus {corpus}`")
    if _corpus_info(corpus, manifest["corpus"])["sha256"] != manifest["corpus"]["sha256"]:
        raise MinitfError(f"{npz}: stale index: {corpus} changed since it was indexed; "
                          f"rebuild it with `minitf index --corpus {corpus}`")
    return NeuronIndex(npz, manifest, arrays)


__all__ = ["build_index", "load_index", "NeuronIndex", "IndexInterrupted", "model_sha256", "index_paths", "HIST_EDGES"]
