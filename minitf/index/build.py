"""A neuron index: one streaming pass over a corpus that records, for every neuron of the chosen layers,

* its top-k documents: (doc_id, position, activation) where activation = max over the document's positions
  of the post-GELU activation and position its first argmax — each document counts once (the paper keeps
  k = 30 per neuron), in the total order (activation desc, doc_id, position) of ``minitf.index.topk``;
* how many positions it was positive at, out of how many positions were seen;
* a coarse histogram of its activations over fixed bins (−∞,0] (0,½] (½,1] (1,2] (2,4] (4,8] (8,∞).

Documents are ``tokenize_document(model, text, bos)`` (BOS + tokens, truncated to the context); the BOS
position is not text and is left out of every statistic. Train and test documents (``corpus.split_of``)
are kept apart: every array has a leading split axis (0 train, 1 test), so one index serves both.

Shards (``minitf.index.shard``: consecutive documents, ``SHARD_CHARS`` characters, batched by length, run on ONE
BLAS thread) make every float depend on the corpus alone, whichever worker — a local process or a Ray actor
(``minitf.index.cluster``) — ran it; the driver merges finished shards with ``topk`` (order-free), so the index
is byte-identical for any number of workers and either executor.

Files, next to the corpus by default (``<corpus>.index/``), named after the model folder:

* ``<name>.npz`` — arrays ``top_act`` [2, L, k, M] float32 (−inf where empty), ``top_doc`` [2, L, k, M]
  int64 (−1 where empty), ``top_pos`` [2, L, k, M] int32, ``positive`` [2, L, M] int64, ``hist`` [2, L, 7, M]
  int64, ``seen`` [2] int64 (positions), ``docs`` [2] int64, ``tokens`` [2] int64 (tokens run, BOS
  included), ``layers`` [L], ``hist_edges`` [6] float32, and ``manifest`` (JSON text);
* ``<name>.json`` — the same manifest for people: format, version, model (name, sha256 of the float32
  weights and tokenizer files), corpus (path, sha256, size, mtime), layers, k, split, bos, n_ctx, counts,
  and ``build`` (executor, workers, seconds, created: the only fields that differ between equal builds).

An index whose model or corpus sha256 differs from the current ones is stale: ``load_index`` refuses it
(every command but ``index`` says so in one line); ``build_index`` rebuilds it, saying why.

Every finished shard is merged into ``<name>.partial/state.npz`` (written atomically, with the list of
finished shards). Interrupting (Ctrl-C), a dead worker or a killed driver loses at most the shards in
flight; rerunning the same command — with any number of workers, locally or on Ray — resumes there.
``stop_after=N`` stops the build after N more shards as if interrupted.

The build is a ``BuildPlan`` (the checked arguments) carried out in steps by ``run_build``: reuse an up-to-date
index (``_freshness``), pick who runs the shards (``_executor``: ``minitf.index.workers`` on this machine —
``workers=1`` in the calling process, else forked worker processes — or ``minitf.index.cluster`` on Ray), run
and checkpoint them (``_run_shards``), write the index.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from minitf.corpus import SPLITS, check_split, corpus_format
from minitf.errors import MinitfError
from minitf.util.files import atomic_write, cache_path, file_sha256
from minitf.load.weights import model_sha256
from minitf.util.progress import Progress
from minitf.names import Neuron, check_layer, check_neuron, parse_neuron
from minitf.index.shard import ShardSpec, index_shard, iter_shards  # noqa: F401  (index_shard: re-exported)
from minitf.index.topk import HIST_EDGES, TopkState, merge_topk
from minitf.index.workers import local_shards
from minitf.util.lock import folder_lock

FORMAT = "minitf-neuron-index"
VERSION = 2  # 2: the total order on ties, fixed shards, manifest "build"
TOKENS_PER_BATCH = 4096  # padded B·T of one forward pass
SHARD_CHARS = 1 << 15  # characters of consecutive documents per shard: the unit of work and of resuming


INDEX_DIR_ENV = "MINITF_INDEX_DIR"
MAX_INDEX_BYTES = 4 << 30  # the most memory a build's top-k state may take (see index_bytes)


def index_bytes(n_layers: int, k: int, d_mlp: int) -> int:
    """Bytes of a build's top-k state, twice over (the driver merges a shard's state into its own):
    2 × (2 splits × n_layers × k × d_mlp entries × (4 + 8 + 4) bytes: activation, document, position)."""
    return 2 * 2 * n_layers * k * d_mlp * 16


class IndexInterrupted(KeyboardInterrupt):
    """The build stopped early (Ctrl-C, or ``stop_after`` shards); its progress is saved."""


# ---- fingerprints and paths -----------------------------------------------------------------------
def model_name(model) -> str:
    """The index file's stem: the model folder's name ("tiny", "gpt2"), or "model" without a folder."""
    return Path(model.folder).resolve().name if model.folder is not None else "model"


def index_paths(model, corpus: Path, index_dir: Path | None = None) -> tuple[Path, Path, Path]:
    """(<dir>/<name>.npz, <dir>/<name>.json, <dir>/<name>.partial/) with <dir> = ``index_dir``, else
    $MINITF_INDEX_DIR (what the CLI's ``--index-dir`` sets), else <corpus>.index."""
    d = index_dirs(corpus, index_dir)[0]
    name = model_name(model)
    return d / f"{name}.npz", d / f"{name}.json", d / f"{name}.partial"


def index_dirs(corpus: str | Path, index_dir: str | Path | None = None) -> list[Path]:
    """Where an index of ``corpus`` is looked for, in order: ``index_dir`` (else $MINITF_INDEX_DIR) alone when
    given; else next to the corpus (<corpus>.index, where ``minitf index`` builds by default), then the cache
    (``cache_index_dir``, where a study builds one it needs)."""
    given = given_index_dir(index_dir)
    return [given] if given is not None else [Path(str(corpus) + ".index"), cache_index_dir(corpus)]


def given_index_dir(index_dir: str | Path | None = None) -> Path | None:
    """``index_dir``, else $MINITF_INDEX_DIR (the CLI's ``--index-dir`` sets it, ``use_index_dir``), else None."""
    given = index_dir if index_dir is not None else os.environ.get(INDEX_DIR_ENV) or None
    return Path(given) if given is not None else None


def use_index_dir(ctx=None, param=None, index_dir: str | None = None) -> None:
    """The CLI's ``--index-dir`` (a click callback): every index this process reads or builds is in ``index_dir``
    ($MINITF_INDEX_DIR) until the command ends (``ctx`` closes: the previous value is back); None: in the default
    places of ``index_dirs``."""
    previous = os.environ.get(INDEX_DIR_ENV)
    _set_env(INDEX_DIR_ENV, None if index_dir is None else str(index_dir))
    if ctx is not None:
        ctx.call_on_close(lambda: _set_env(INDEX_DIR_ENV, previous))


def _set_env(name: str, value: str | None) -> None:
    os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def cache_index_dir(corpus: str | Path) -> Path:
    """``<cache>/index/<corpus name>-<sha256 of its absolute path, 12 hex>``: a corpus's index folder in minitf's
    cache (``util.files.cache_path``), for corpora whose own folder must not be written (weights/…)."""
    corpus = Path(corpus)
    key = hashlib.sha256(str(corpus.resolve()).encode()).hexdigest()[:12]
    return cache_path("index") / f"{corpus.name}-{key}"


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


def _save_npz(path: Path, arrays: dict, meta: dict) -> None:
    atomic_write(path, lambda f: np.savez(f, manifest=np.array(json.dumps(meta)), **arrays))


# ---- the plan: what to build, where, on whom ------------------------------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    """One build's checked parameters: what the index is (``settings``: equal settings on equal inputs give a
    byte-identical index, whoever runs the shards), where its files go, and who runs the shards (``ray``: a
    Ray cluster's address, else ``workers`` local processes, ``minitf.index.workers``)."""

    corpus: Path
    layers: list[int]
    k: int = 30
    split: str | None = None
    bos: bool = True
    shard_chars: int = SHARD_CHARS
    workers: int = 2
    ray: str | None = None
    index_dir: Path | None = None
    rebuild: bool = False

    @classmethod
    def make(cls, model, corpus: str | Path, layers: Iterable[int] | None = None, k: int = 30,
             split: str | None = None, workers: int = 2, bos: bool = True, index_dir: str | Path | None = None,
             rebuild: bool = False, ray: str | None = None, shard_chars: int | None = None) -> "BuildPlan":
        """The plan of ``build_index``'s arguments, or a one-line MinitfError (before anything is written)."""
        split = check_split(split)
        layers = _check_layers(model, layers)
        if k < 1:
            raise MinitfError(f"`k` {k}: must be at least 1", param="k")
        if workers < 1:
            raise MinitfError(f"`workers` {workers}: must be at least 1", param="workers")
        need = index_bytes(len(layers), k, model.cfg.d_mlp)
        if need > MAX_INDEX_BYTES:  # checked before anything is allocated (a MemoryError traceback otherwise)
            raise MinitfError(f"`k` {k}: an index of {len(layers)} layers × {model.cfg.d_mlp} neurons × top {k} needs "
                              f"{need / 2**30:.1f} GiB of memory, over the limit of {MAX_INDEX_BYTES / 2**30:.0f} GiB; "
                              "ask for fewer documents or layers", param="k")
        shard_chars = SHARD_CHARS if shard_chars is None else int(shard_chars)
        if shard_chars < 1:
            raise MinitfError(f"`shard_chars`: shards need at least one character, not {shard_chars}", param="shard_chars")
        corpus = Path(corpus)
        if corpus.is_dir():
            raise MinitfError(f"{corpus}: is a directory, not a corpus file")
        corpus_format(corpus)
        return cls(corpus, layers, k, split, bos, shard_chars, workers, ray,
                   Path(index_dir) if index_dir is not None else None, rebuild)

    def settings(self, model) -> dict:
        """What the index is, as its manifest records it (with the checkpoint's ``params``)."""
        return {"layers": self.layers, "k": self.k, "split": self.split, "bos": self.bos, "n_ctx": model.cfg.n_ctx}

    def spec(self) -> ShardSpec:
        return ShardSpec(tuple(self.layers), self.k, self.bos, TOKENS_PER_BATCH)


def _check_layers(model, layers) -> list[int]:
    L = model.cfg.n_layer
    return [check_layer(layer, L, where="`layers`", param="layers") for layer in
            (range(L) if not layers else sorted(set(int(x) for x in layers)))]


def _check_corpus(corpus: Path, split: str | None, shard_chars: int) -> tuple[int, int]:
    """(shards, documents) of the corpus, reading all of it: a bad corpus fails here, before any file is made."""
    if not corpus.is_file():
        raise MinitfError(f"{corpus}: no such corpus file")
    n_shards = n_docs = 0
    for _, docs in iter_shards(corpus, split, shard_chars):
        n_shards += 1
        n_docs += len(docs)
    if n_docs == 0:
        raise MinitfError(f"{corpus}: the corpus is empty (no documents)" if split is None
                          else f"{corpus}: no {split} documents in the corpus")
    return n_shards, n_docs


# ---- building -------------------------------------------------------------------------------------------
def build_index(model, corpus: str | Path, layers: Iterable[int] | None = None, k: int = 30,
                split: str | None = None, workers: int = 2, progress: bool = True, bos: bool = True,
                index_dir: str | Path | None = None, rebuild: bool = False, ray: str | None = None,
                shard_chars: int | None = None, stop_after: int | None = None) -> Path:
    """Index ``corpus`` for ``model`` (see the module docstring) and return the path of the .npz.

    An up-to-date index with the same settings is returned as is (``rebuild=True`` redoes it); a partial
    build with the same settings is resumed. ``ray="auto"`` or an address runs the shards on a Ray cluster
    (``minitf.index.cluster``; ``workers`` is then ignored: one actor per CPU of the cluster). ``shard_chars``
    (default ``SHARD_CHARS``) sets the shards, and so the batches: equal builds need equal values; bigger shards
    suit big corpora on many workers (the driver merges and checkpoints once per shard). Raises
    ``IndexInterrupted`` (a KeyboardInterrupt) when stopped: by Ctrl-C, or after ``stop_after`` newly
    finished shards. The arguments are checked into a ``BuildPlan``, which ``run_build`` carries out.
    """
    plan = BuildPlan.make(model, corpus, layers, k, split, workers, bos, index_dir, rebuild, ray, shard_chars)
    return run_build(model, plan, progress=progress, stop_after=stop_after)


def run_build(model, plan: BuildPlan, progress: bool = True, stop_after: int | None = None) -> Path:
    """Carry out ``plan``: reuse an up-to-date index, else run the missing shards (checkpointing each) and
    write the index; the path of the .npz."""
    npz, manifest_path, partial = index_paths(model, plan.corpus, plan.index_dir)
    model_info = {"name": model_name(model), "sha256": model_sha256(model), "n_layer": model.cfg.n_layer,
                  "d_mlp": model.cfg.d_mlp}
    corpus_info, why = _freshness(model, plan, npz, model_info)
    if why is None:
        shutil.rmtree(partial, ignore_errors=True)
        return npz
    if why and progress:
        print(f"index: {npz} is out of date ({why}); rebuilding it", file=sys.stderr, flush=True)
    n_shards, _ = _check_corpus(plan.corpus, plan.split, plan.shard_chars)
    made_dir = not npz.parent.exists()
    try:
        with folder_lock(npz.parent, "index folder"):  # one build at a time in a folder; released on any exit
            return _locked_build(model, plan, progress, stop_after, model_info, corpus_info, n_shards)
    finally:
        if made_dir:  # a build that left nothing (an error before any shard) leaves no empty folder either
            try:
                npz.parent.rmdir()
            except OSError:
                pass


def _locked_build(model, plan: BuildPlan, progress: bool, stop_after: int | None, model_info: dict,
                  corpus_info: dict, n_shards: int) -> Path:
    """run_build's work while it holds the index folder's lock."""
    npz, manifest_path, partial = index_paths(model, plan.corpus, plan.index_dir)
    params = {"format": FORMAT, "version": VERSION, "model_sha256": model_info["sha256"],
              "corpus_sha256": corpus_info["sha256"], "tokens_per_batch": TOKENS_PER_BATCH,
              "shard_chars": plan.shard_chars, **plan.settings(model)}
    run_shards, executor, n_workers = _executor(model, plan)  # connects to Ray before anything is written
    t0 = time.monotonic()
    state = _run_shards(model, plan, run_shards, partial, params, n_shards, progress, stop_after)
    manifest = {"format": FORMAT, "version": VERSION, "complete": True, "model": model_info, "corpus": corpus_info,
                **plan.settings(model), "hist_edges": HIST_EDGES.tolist(), "shard_chars": plan.shard_chars,
                "tokens_per_batch": TOKENS_PER_BATCH, "shards": n_shards,
                "documents": dict(zip(SPLITS, state.docs.tolist())),
                "positions": dict(zip(SPLITS, state.seen.tolist())),
                "tokens": dict(zip(SPLITS, state.tokens.tolist())),
                "build": {"executor": executor, "workers": n_workers, "seconds": round(time.monotonic() - t0, 3),
                          "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    arrays = state.arrays() | {"layers": np.array(plan.layers, np.int64), "hist_edges": HIST_EDGES}
    _save_npz(npz, arrays, manifest)
    atomic_write(manifest_path, json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(partial, ignore_errors=True)
    return npz


def _freshness(model, plan: BuildPlan, npz: Path, model_info: dict) -> tuple[dict | None, str | None]:
    """(the corpus's info, why the index at ``npz`` must be built: "" when there is none or ``rebuild``,
    None when it is up to date with the plan)."""
    known = _read_manifest(npz) if npz.is_file() else None
    corpus_info = _corpus_info(plan.corpus, (known or {}).get("corpus")) if plan.corpus.is_file() else None
    if not known or not corpus_info or plan.rebuild:
        return corpus_info, ""
    if known.get("complete") and known.get("version") == VERSION and known.get("model") == model_info \
            and known["corpus"]["sha256"] == corpus_info["sha256"] \
            and all(known.get(key) == value for key, value in plan.settings(model).items()):
        return corpus_info, None
    return corpus_info, ("built for other weights" if known.get("model", {}).get("sha256") != model_info["sha256"]
                         else "the corpus changed" if known.get("corpus", {}).get("sha256") != corpus_info["sha256"]
                         else "other settings or format")


def _executor(model, plan: BuildPlan):
    """(run_shards, executor name, workers): run_shards(iterator of (sid, docs)) yields (sid, TopkState) as
    shards finish, on Ray or on this machine."""
    if plan.ray:
        from minitf.index.cluster import ray_shards  # connects: a bad address fails here, leaving nothing

        run_shards, n_actors = ray_shards(plan.ray, model, plan.spec())
        return run_shards, "ray", n_actors
    return local_shards(model, plan.spec(), plan.workers), "local", plan.workers


def _run_shards(model, plan: BuildPlan, run_shards, partial: Path, params: dict, n_shards: int, progress: bool,
                stop_after: int | None) -> TopkState:
    """The merged state of every shard: the checkpoint's, and those still to run, each merged and checkpointed
    (``<partial>/state.npz``) as it finishes. Raises IndexInterrupted on Ctrl-C or after ``stop_after`` new
    shards; on any other error with nothing finished, removes the folders it made."""
    made_dir = not partial.parent.exists()
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinitfError(f"{partial.parent}: cannot create the index folder ({e.strerror}); pass index_dir") from None
    state_path = partial / "state.npz"
    state, done = _load_checkpoint(state_path, params, len(plan.layers), plan.k, model.cfg.d_mlp)
    bar = Progress("index", n_shards, len(done), unit="shards", counters={"documents": int(state.docs.sum()), "tokens": 0},
                   rate_of="tokens", enabled=progress, every=15.0)
    bar.draw(force=True)
    finished_now = 0
    todo = ((sid, docs) for sid, docs in iter_shards(plan.corpus, plan.split, plan.shard_chars) if sid not in done)
    try:
        for sid, part in run_shards(todo):
            state.merge(part)
            done.add(sid)
            _save_npz(state_path, state.arrays(), {"params": params, "shards": sorted(done)})
            finished_now += 1
            bar.update(1, documents=int(part.docs.sum()), tokens=int(part.tokens.sum()))
            if stop_after is not None and finished_now >= stop_after and len(done) < n_shards:
                raise IndexInterrupted(f"index: stopped; progress saved in {partial} (rerun to resume)")
        bar.finish()
    except IndexInterrupted:
        raise
    except KeyboardInterrupt:
        raise IndexInterrupted(f"index: interrupted; rerun to resume from the last finished shard in {partial}") \
            from None
    except BaseException:
        if not done:  # nothing worth keeping: leave no empty folders behind
            shutil.rmtree(partial, ignore_errors=True)
            if made_dir:
                shutil.rmtree(partial.parent, ignore_errors=True)
        raise
    finally:
        bar.end_line()
    return state


def _load_checkpoint(path: Path, params: dict, n_layers: int, k: int, d_mlp: int) -> tuple[TopkState, set[int]]:
    """(merged state, finished shard ids) from a checkpoint whose params match, else a fresh state."""
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["manifest"]))
                if meta.get("params") == params:
                    return TopkState.from_arrays(data), set(meta["shards"])
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # unreadable checkpoint: start over
    return TopkState.empty(n_layers, k, d_mlp), set()


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
        self.state = TopkState.from_arrays(arrays)

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
        check_neuron(n, None, self.state.top_act.shape[-1], where=f"{self.path}: {n}")
        return self.layers.index(n.layer), n.index

    def top(self, neuron: Neuron | str, split: str | None = None) -> list[tuple[int, int, float]]:
        """[(doc_id, position, activation)] best first: the neuron's top-k documents and where they peak."""
        li, n = self._where(neuron)
        slots = self._slots(split)
        act = np.concatenate([self.state.top_act[s, li, :, n] for s in slots])  # [k·S]
        doc = np.concatenate([self.state.top_doc[s, li, :, n] for s in slots])  # [k·S]
        pos = np.concatenate([self.state.top_pos[s, li, :, n] for s in slots])  # [k·S]
        act, doc, pos = merge_topk(act, doc, pos, self.k)
        return [(int(d), int(p), float(a)) for a, d, p in zip(act, doc, pos) if d >= 0]

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


def load_index(model, corpus: str | Path, index_dir: str | Path | None = None, fits=None) -> NeuronIndex | None:
    """The index of ``corpus`` for ``model`` in the first of ``index_dirs`` that has one (with ``fits``, a
    predicate on a NeuronIndex: the first that fits, else the first found); None if there is none; MinitfError
    if it is stale or unreadable."""
    corpus = Path(corpus)
    first = None
    for d in index_dirs(corpus, index_dir):
        npz, _, _ = index_paths(model, corpus, d)
        if npz.is_file():
            index = _load_npz(model, corpus, npz)
            if fits is None or fits(index):
                return index
            first = first or index
    return first


def _load_npz(model, corpus: Path, npz: Path) -> NeuronIndex:
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


__all__ = ["build_index", "load_index", "NeuronIndex", "IndexInterrupted", "index_paths", "HIST_EDGES",
           "iter_shards", "index_shard", "ShardSpec", "TopkState"]
