"""Next-token neurons (paper step 1): how strongly each MLP neuron writes one vocabulary token.

Congruence, as the paper's authors computed it on a TransformerLens model with its default weight
processing (``fold_ln``, ``center_writing_weights``, ``center_unembed``):

    W_U′ = diag(γ_f) W_U                  ln_f's scale folded into the unembedding [D, V]
    W_U′ ← W_U′ − mean_d W_U′[d, :]       each vocabulary column centred over d_model (fold_ln's centring)
    W_U′ ← W_U′ − mean_t W_U′[:, t]       each d_model row centred over the vocabulary (center_unembed)
    s_n[t] = W_out[n] · W_U′[:, t]        neuron n's direct effect on token t's logit, per unit activation
    congruence_n = max_t s_n[t],  token_n = argmax_t s_n[t]

ln_f's bias b_f folds into a vocabulary bias b_f W_U, which does not depend on n and so is left out.
TransformerLens also centres W_out over d_model (``center_writing_weights``); because every column of W_U′
sums to zero over d_model, W_out[n] − mean(W_out[n]) gives the same s_n, so raw W_out is used.

The authors' filter keeps tokens that start with a space and have at least two characters after it
(" the" yes, "the", " a" and "," no); with it, congruence and token are the max over allowed tokens only.
Unlike the authors' check (``s.startswith(" ") and len(s) >= 3``), tokens of only whitespace ("   ", " \n")
are not allowed either: they pass it literally but are not words.

A second, optional filter keeps tokens by frequency (off by default, the paper's behaviour): with
``min_count`` = N > 0 only tokens that occur at least N times in a corpus are allowed,

    count[t] = #{occurrences of t in encode(doc) over every document of the corpus}   (no BOS, no truncation)
    allowed[t] = paper_filter(t) (when ``filter``) and count[t] ≥ N

On a small model, rare tokens are undertrained: their unembeddings barely moved from a shared direction, so
the same few of them ("�", "BELINE") top the argmax of many neurons; the count filter hides them.
The top promoted/suppressed token lists always show the whole vocabulary.

Vocabulary moments (Gurnee et al. 2024, "Universal neurons"): over the vocabulary t,

    c_n[t] = W_out_c[n] · W_U′[:, t] / (|W_out_c[n]| |W_U′[:, t]|)      W_out_c = W_out centred over d_model
    kurtosis_n = E[(c − μ)⁴] / σ⁴ (not excess),  skew_n = E[(c − μ)³] / σ³

and a neuron is a "prediction" neuron when kurtosis > 10 and skew > 0, a "suppression" neuron when
kurtosis > 10 and skew < 0.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from minitf.errors import MinitfError
from minitf.util.files import atomic_write, default_cache_dir, file_sha256
from minitf.load.weights import model_sha256
from minitf.names import Neuron, check_layer, check_neuron, parse_neuron

CHUNK = 512  # neurons per [CHUNK, V] block of scores: 100 MiB for GPT-2's 50257 tokens
KURTOSIS_THRESHOLD = 10.0
DISK_CACHE_MIN_FLOPS = 5e10  # layers costing more (GPT-2 small: 2.4e11, ~3 s) are also cached on disk
COUNTS_DISK_MIN_BYTES = 1 << 24  # corpus files bigger than this also keep their token counts on disk
DISK_VERSION = 2  # bumped when the cached numbers change meaning (2: whitespace-only tokens filtered out)
PAPER_RULE = "space+2 chars"

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model → _NeuronCache


def allowed_token(s: str) -> bool:
    """The authors' filter: a space, then at least two characters (" the" → True; "the", " a", "," → False),
    and, unlike theirs, not whitespace only ("   " → False)."""
    return s.startswith(" ") and len(s) >= 3 and not s.isspace()


def neuron_class(kurtosis: float, skew: float) -> str:
    """"prediction" (kurtosis > 10, skew > 0), "suppression" (kurtosis > 10, skew < 0) or ""."""
    if kurtosis > KURTOSIS_THRESHOLD:
        if skew > 0:
            return "prediction"
        if skew < 0:
            return "suppression"
    return ""


def processed_unembed(model) -> np.ndarray:
    """W_U′ [D, V]: ln_f's γ folded in, centred over d_model and then over the vocabulary (float32)."""
    W_U = model.W_U * model.w["ln_f.weight"][:, None]  # [D, V] diag(γ_f) W_U, a new array
    W_U -= W_U.mean(0, keepdims=True)  # [D, V] each column sums to 0 over d_model
    W_U -= W_U.mean(1, keepdims=True)  # [D, V] each row sums to 0 over the vocabulary
    return W_U


@dataclass
class LayerScores:
    """Per-neuron congruence scores of one layer (arrays [M])."""

    layer: int
    congruence: np.ndarray  # [M] max over allowed tokens (filtered; -inf if no token is allowed)
    token: np.ndarray  # [M] its argmax token id
    congruence_all: np.ndarray  # [M] max over the whole vocabulary
    token_all: np.ndarray  # [M]
    kurtosis: np.ndarray  # [M] float64
    skew: np.ndarray  # [M] float64

    def pick(self, filter: bool) -> tuple[np.ndarray, np.ndarray]:
        return (self.congruence, self.token) if filter else (self.congruence_all, self.token_all)

    def rank(self, index: int, filter: bool = True) -> int:
        """1 for the layer's most congruent neuron."""
        cong, _ = self.pick(filter)
        return int((cong > cong[index]).sum()) + 1


class _NeuronCache:
    """What neurons.py computes once per model: W_U′, its column norms, the filter mask, layer scores."""

    def __init__(self, model):
        self.W_U = processed_unembed(model)  # [D, V]
        self.inv_W_U_norm = 1.0 / np.sqrt((self.W_U * self.W_U).sum(0))  # [V] 1 / |W_U′[:, t]|
        self.mean_direction = self.W_U @ self.inv_W_U_norm  # [D] W_out[n] · this / V = mean_t of the cosines × |w|
        self._allowed = None
        self.layers: dict[int, LayerScores] = {}
        self.counts: dict[tuple, np.ndarray] = {}  # (corpus path, size, mtime_ns) → [V] token counts
        self.counted: dict[tuple, LayerScores] = {}  # (layer, filter, min_count, counts key) → scores
        self.model = weakref.ref(model)

    @property
    def allowed(self) -> np.ndarray:
        """[V] bool: the filter's verdict per token id (ids the tokenizer lacks, e.g. padding, are not allowed);
        empty without a tokenizer."""
        if self._allowed is None:
            model = self.model()
            self._allowed = np.zeros(model.cfg.d_vocab if _has_tokenizer(model) else 0, bool)  # [V]
            for t in range(self._allowed.size):
                self._allowed[t] = allowed_token(_token_str(model, t))
        return self._allowed


def _has_tokenizer(model) -> bool:
    try:
        model.tokenizer
    except MinitfError:
        return False
    return True


def _token_str(model, t: int) -> str:
    """The token's text, or "#id" for an id the tokenizer does not have."""
    try:
        return model.token_str(t)
    except (KeyError, ValueError):
        return f"#{int(t)}"


def _cache(model) -> _NeuronCache:
    if model not in _CACHE:
        _CACHE[model] = _NeuronCache(model)
    return _CACHE[model]


def _check_layer(model, layer: int) -> None:
    check_layer(layer, model.cfg.n_layer)


def _allowed_mask(model, filter: bool) -> np.ndarray | None:
    if not filter:
        return None
    allowed = _cache(model).allowed
    if allowed.size == 0:
        raise MinitfError("the token filter needs the model's tokenizer (vocab.json, merges.txt); "
                          "pass filter=False / --no-filter")
    return allowed


def _corpus_path(model, corpus: str | Path | None) -> Path:
    from minitf.corpus import default_corpus

    path = Path(corpus) if corpus is not None else default_corpus(model)
    if path is None:
        raise MinitfError("the count filter needs a corpus: the model folder has no corpus.txt.gz; pass `corpus`")
    if not path.is_file():
        raise MinitfError(f"{path}: no such corpus file")
    return path


def _counts_key(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def token_counts(model, corpus: str | Path | None = None) -> np.ndarray:
    """count [V] int64: occurrences of each token id in ``corpus`` (default: the model's corpus.txt.gz).

    Every document is encoded whole with the model's tokenizer (no BOS, no truncation to n_ctx). Counted once
    per (model, corpus file) in memory; corpora over ``COUNTS_DISK_MIN_BYTES`` are also kept on disk next to
    the layer cache, keyed by the model's and the corpus's sha256.
    """
    from minitf.corpus import read_documents

    path = _corpus_path(model, corpus)
    if not _has_tokenizer(model):
        raise MinitfError("the count filter needs the model's tokenizer (vocab.json, merges.txt)")
    cache, key = _cache(model), _counts_key(path)
    if key in cache.counts:
        return cache.counts[key]
    disk = None
    if path.stat().st_size > COUNTS_DISK_MIN_BYTES:
        disk = default_cache_dir() / "neurons" / f"counts-{model_sha256(model)}-{file_sha256(path)[:32]}.npy"
        try:
            counts = np.load(disk, allow_pickle=False)
            if counts.shape == (model.cfg.d_vocab,):
                cache.counts[key] = counts
                return counts
        except (OSError, ValueError):
            pass  # absent or damaged: count again
    V = model.cfg.d_vocab
    counts = np.zeros(V, np.int64)  # [V]
    pending: list[int] = []
    for doc in read_documents(path):
        pending += model.encode(doc.text)
        if len(pending) >= 1 << 20:
            counts += np.bincount(np.asarray(pending, np.int64), minlength=V)[:V]
            pending = []
    counts += np.bincount(np.asarray(pending, np.int64), minlength=V)[:V]
    if disk is not None:

        try:
            disk.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(disk, lambda f: np.save(f, counts))
        except (OSError, MinitfError):
            pass
    cache.counts[key] = counts
    return counts


def filter_rule(model, filter: bool = True, min_count: int = 0, corpus: str | Path | None = None) -> str:
    """The filter in words: "space+2 chars", "count≥20 in corpus.txt.gz", both joined by ", ", or "all tokens"."""
    parts = [PAPER_RULE] if filter else []
    if min_count > 0:
        parts.append(f"count≥{min_count} in {_corpus_path(model, corpus).name}")
    return ", ".join(parts) or "all tokens"


def _check_min_count(min_count: int) -> None:
    if min_count < 0:
        raise MinitfError(f"min_count={min_count}: must be 0 (off) or more")


def layer_scores(model, layer: int, filter: bool = True, min_count: int = 0,
                 corpus: str | Path | None = None) -> LayerScores:
    """Congruence, argmax token and vocabulary moments of every neuron of ``layer`` (computed once).

    With ``min_count`` > 0, ``congruence`` / ``token`` are the max / argmax over tokens that pass the paper's
    filter (when ``filter``) and occur ≥ ``min_count`` times in ``corpus`` (see ``token_counts``).
    """
    _check_min_count(min_count)
    if min_count == 0:
        return _paper_scores(model, layer, filter)
    _check_layer(model, layer)
    counts = token_counts(model, corpus)  # [V]
    cache = _cache(model)
    key = (layer, bool(filter), min_count, _counts_key(_corpus_path(model, corpus)))
    if key in cache.counted:
        return cache.counted[key]
    allowed = counts >= min_count  # [V]
    if filter:
        allowed &= _allowed_mask(model, True)
    if not allowed.any():
        raise MinitfError(f"no token {'passes the filter and ' if filter else ''}occurs ≥ {min_count} times "
                          f"in {_corpus_path(model, corpus).name}")
    base = _paper_scores(model, layer, False)
    W_out = model.W_out[layer]  # [M, D]
    M = W_out.shape[0]
    congruence, token = np.empty(M, np.float32), np.empty(M, np.int64)
    for start in range(0, M, CHUNK):
        rows = slice(start, min(start + CHUNK, M))
        s = W_out[rows] @ cache.W_U  # [C, V] s_n[t]
        s[:, ~allowed] = -np.inf
        token[rows] = s.argmax(1)
        congruence[rows] = s[np.arange(s.shape[0]), token[rows]]
    scores = replace(base, congruence=congruence, token=token)
    cache.counted[key] = scores
    return scores


def _paper_scores(model, layer: int, filter: bool) -> LayerScores:
    """``layer_scores`` without the count filter: the paper's filter (or none) and the moments.

    ``_scan_layer`` computes it a cache-sized block of scores at a time (memory: a few MiB). Layers of big
    models (GPT-2 small: ~3 s each on 2 cores) are also kept on disk, keyed by the weights' sha256.
    ``filter=False`` skips the tokenizer; the filtered columns are then filled in on a later filtered call.
    """
    _check_layer(model, layer)
    cache = _cache(model)
    allowed = _allowed_mask(model, filter)
    have = cache.layers.get(layer) or _read_disk(model, layer)
    if have is not None and (not filter or not np.isnan(have.congruence).any()):
        cache.layers[layer] = have
        return have
    out = _scan_layer(model.W_out[layer], cache, allowed)
    if allowed is None:
        out["congruence"][:] = np.nan
        out["token"][:] = -1
    scores = LayerScores(layer, **out)
    cache.layers[layer] = scores
    _write_disk(model, scores)
    return scores


ROWS, COLS = 128, 2048  # one [ROWS, COLS] block of scores (1 MiB) stays in cache through every statistic


def _scan_layer(W_out: np.ndarray, cache: "_NeuronCache", allowed: np.ndarray | None) -> dict:
    """Every statistic of ``layer_scores`` for W_out [M, D], one cache-sized block of s = W_out W_U′ at a time.

    Per block [r, c] of s: running max/argmax (all tokens and allowed ones; a later block wins only when
    strictly greater, so the argmax is the first one, as over the whole row) and the central power sums of
    x = s · (1 / |W_U′[:, t]|) about the row mean μ_n, known before the scan from one product:

        μ_n = (1/V) Σ_t s_n[t] / |W_U′[:, t]| = W_out[n] · (W_U′ inv_norm) / V

    (block sums in float32, accumulated in float64). Blocks of rows are shared among the threads, each
    running its products on one BLAS thread.
    """
    from minitf.kernels import pool, run_on_threads

    M, V = W_out.shape[0], cache.W_U.shape[1]
    mu = (W_out @ cache.mean_direction) / np.float32(V)  # [M] row means of x
    out = {name: np.empty(M, np.float32) for name in ("congruence", "congruence_all")}
    out |= {name: np.empty(M, np.int64) for name in ("token", "token_all")}
    power = np.zeros((3, M), np.float64)  # [3, M] Σ (x − μ)², ³, ⁴
    blocks = list(range(0, M, ROWS))

    def share(i):
        for start in blocks[i::n_threads]:
            rows = slice(start, min(start + ROWS, M))
            r = rows.stop - rows.start
            best = np.full((2, r), -np.inf, np.float32)  # [2, r] running max: all tokens, allowed ones
            arg = np.zeros((2, r), np.int64)  # [2, r]
            s = np.empty((r, COLS), np.float32)  # [r, COLS]
            c2 = np.empty((r, COLS), np.float32)  # [r, COLS]
            for j in range(0, V, COLS):
                cols = slice(j, min(j + COLS, V))
                n = cols.stop - j
                sb, c2b = s[:, :n], c2[:, :n]
                np.matmul(W_out[rows], cache.W_U[:, cols], out=sb)  # [r, n] s_n[t]
                for which, scores in ((0, sb), (1, None if allowed is None else np.where(allowed[cols], sb, -np.inf))):
                    if scores is None:
                        continue
                    a = scores.argmax(1)  # [r]
                    v = scores[np.arange(r), a]  # [r]
                    better = v > best[which]
                    best[which][better], arg[which][better] = v[better], a[better] + j
                sb *= cache.inv_W_U_norm[cols]  # [r, n] x: cosines × |W_out_c[n]|
                sb -= mu[rows, None]  # [r, n] x − μ
                np.multiply(sb, sb, out=c2b)  # [r, n] (x − μ)²
                power[0, rows] += c2b.sum(1)
                sb *= c2b  # [r, n] (x − μ)³
                power[1, rows] += sb.sum(1)
                c2b *= c2b  # [r, n] (x − μ)⁴
                power[2, rows] += c2b.sum(1)
            out["congruence_all"][rows], out["token_all"][rows] = best[0], arg[0]
            out["congruence"][rows], out["token"][rows] = best[1], arg[1]

    with pool() as n_threads:  # share i takes blocks i, i + n_threads, …
        run_on_threads(share, min(n_threads, len(blocks)), blas_one=True)
    var, m3, m4 = power / V  # [M] each
    with np.errstate(invalid="ignore", divide="ignore"):
        out["kurtosis"], out["skew"] = m4 / (var * var), m3 / var ** 1.5
    return out


def _disk_path(model, layer: int) -> Path | None:
    """``$MINITF_CACHE_DIR/neurons/<model sha256>-L{layer}-v2.npz`` (default ~/.cache/minitf), big layers only."""
    cfg = model.cfg
    if 2.0 * cfg.d_mlp * cfg.d_model * cfg.d_vocab < DISK_CACHE_MIN_FLOPS:
        return None
    return default_cache_dir() / "neurons" / f"{model_sha256(model)}-L{layer}-v{DISK_VERSION}.npz"




def _read_disk(model, layer: int) -> LayerScores | None:
    path = _disk_path(model, layer)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return LayerScores(layer, **{f.name: data[f.name] for f in fields(LayerScores) if f.name != "layer"})
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache file is recomputed


def _write_disk(model, scores: LayerScores) -> None:
    path = _disk_path(model, scores.layer)
    if path is None:
        return

    arrays = {f.name: getattr(scores, f.name) for f in fields(LayerScores) if f.name != "layer"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except (OSError, MinitfError):
        pass  # the cache is an optimisation: a read-only home just means recomputing


def neuron_scores(model, neuron: Neuron | str) -> np.ndarray:
    """s_n [V] = W_out[n] · W_U′ for one neuron (vocab-centred direct logit effect per unit activation)."""
    n = neuron if isinstance(neuron, Neuron) else parse_neuron(neuron, model.cfg.n_layer, model.cfg.d_mlp)
    check_neuron(n, model.cfg.n_layer, model.cfg.d_mlp)
    return model.W_out[n.layer][n.index] @ _cache(model).W_U  # [V]


def _token_list(model, s: np.ndarray, ids: np.ndarray) -> list:
    named = _has_tokenizer(model)
    return [(int(t), _token_str(model, t) if named else f"#{int(t)}", float(s[t])) for t in ids]


def neuron_card(model, neuron: Neuron | str, k: int = 10, filter: bool = True, min_count: int = 0,
                corpus: str | Path | None = None) -> dict:
    """Everything neurons.py knows about one neuron (the trace shows it next to the heads).

    Keys: layer, index, name "L{l}N{n}", promoted / suppressed: [(token id, token, s_n[t])] the k largest
    and k smallest, congruence, rank (1 = most congruent in its layer), token_id, token, kurtosis, skew,
    class ("prediction" | "suppression" | ""), filter (the rule in words, ``filter_rule``). Congruence, rank
    and token are over the allowed tokens (``filter``, ``min_count`` in ``corpus``: see ``layer_scores``).
    """
    n = neuron if isinstance(neuron, Neuron) else parse_neuron(neuron, model.cfg.n_layer, model.cfg.d_mlp)
    s = neuron_scores(model, n)  # [V]
    scores = layer_scores(model, n.layer, filter, min_count, corpus)
    filtered = filter or min_count > 0
    cong, tok = scores.pick(filtered)
    k = min(k, s.size)
    top = np.argpartition(-s, k - 1)[:k] if k < s.size else np.arange(s.size)
    top = top[np.lexsort((top, -s[top]))]  # [k] largest first, ties by id
    bottom = np.argpartition(s, k - 1)[:k] if k < s.size else np.arange(s.size)
    bottom = bottom[np.lexsort((bottom, s[bottom]))]  # [k] smallest first
    kurt, skew = float(scores.kurtosis[n.index]), float(scores.skew[n.index])
    token_id = int(tok[n.index])
    return {
        "layer": n.layer, "index": n.index, "name": str(n),
        "promoted": _token_list(model, s, top), "suppressed": _token_list(model, s, bottom),
        "congruence": float(cong[n.index]), "rank": scores.rank(n.index, filtered),
        "token_id": token_id, "token": _token_list(model, s, [token_id])[0][1] if token_id >= 0 else None,
        "kurtosis": kurt, "skew": skew, "class": neuron_class(kurt, skew),
        "filter": filter_rule(model, filter, min_count, corpus),
    }


def layer_table(model, layer: int, top: int = 10, filter: bool = True, k: int = 5, min_count: int = 0,
                corpus: str | Path | None = None) -> list[dict]:
    """The ``top`` most congruent neurons of ``layer`` as ``neuron_card`` dicts (k tokens each), best first;
    congruence over the allowed tokens (``filter``, ``min_count`` in ``corpus``: see ``layer_scores``)."""
    scores = layer_scores(model, layer, filter, min_count, corpus)
    cong, _ = scores.pick(filter or min_count > 0)
    order = np.lexsort((np.arange(cong.size), -cong))[:top]  # [top] by congruence, ties by index
    return [neuron_card(model, Neuron(layer, int(i)), k=k, filter=filter, min_count=min_count, corpus=corpus)
            for i in order]
