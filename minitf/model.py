"""GPT-2 forward pass in NumPy, float32, in the order of the math.

Shapes: B batch, T positions, D d_model, H heads, Dh d_head, M d_mlp, V vocabulary.

    x⁰ = wte[tokens] + wpe[positions]                                   resid_pre of layer 0
    for each layer l:
        a = LN₁(xˡ);  q, k, v = a W_Q + b_Q, a W_K + b_K, a W_V + b_V   per head [T, Dh]
        pattern = softmax(q kᵀ / √Dh + causal mask);  z = pattern v
        attn_out = Σ_h z_h W_O[h] + b_O;  x_mid = xˡ + attn_out          resid_mid
        pre = LN₂(x_mid) W_in + b_in;  post = gelu_new(pre)
        xˡ⁺¹ = x_mid + post W_out + b_out                                resid_post
    logits = LN_f(x^L) W_U

LN(x) = (x − mean x) / σ · γ + β with σ = √(var x + ε); σ is recorded per position as ``ln1_scale``,
``ln2_scale`` and ``ln_f_scale`` because the direct-effect identity of ``minitf.attribution`` freezes it.

Only what is asked is computed: ``stop_at_layer`` ends after that layer's MLP activation (optionally for
a few neurons only), ``logits`` may be all positions, the last one of each prompt, given ones, or none,
and ``keep`` names the internals to record. Prompts of different lengths are right-padded: a causal model
never lets a real position see a padded one, so each prompt's numbers equal those of a run on it alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import MinitfError
from .names import Head, Neuron, parse_head, parse_neuron
from .parallel import POOL_LOCK, Par, split, threads
from .weights import Config, load_weights

# Internals a run can record, per layer ([B, T, ...] unless noted).
LAYER_INTERNALS = ("resid_pre", "ln1_scale", "q", "k", "v", "z", "pattern", "head_out", "attn_out",
                   "resid_mid", "ln2_scale", "pre", "post", "mlp_out", "resid_post")
INTERNALS = LAYER_INTERNALS + ("ln_f_scale",)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """LN(x) = (x − mean x) / σ · γ + β, σ = √(var x + ε) over the last axis. Returns (LN(x), σ)."""
    out = np.empty(x.shape, np.float32)  # [..., D]
    sigma = np.empty(x.shape[:-1], np.float32)  # [...]
    _layer_norm_rows(x.reshape(-1, x.shape[-1]), gamma, beta, eps, out.reshape(-1, x.shape[-1]), sigma.reshape(-1))
    return out, sigma


def _layer_norm_rows(x, gamma, beta, eps, out, sigma) -> None:
    """``layer_norm`` of rows x [N, D] into out [N, D] and sigma [N] (float32 steps, in place on out)."""
    np.subtract(x, x.mean(-1, keepdims=True), out=out)  # [N, D] centred
    sq = out * out  # [N, D]
    np.sqrt(np.mean(sq, -1) + eps, out=sigma)  # [N]  (eps: Python float → stays f32)
    out /= sigma[:, None]
    out *= gamma
    out += beta


def gelu_new(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh GELU: ½x(1 + tanh(√(2/π)(x + 0.044715x³))), in float32."""
    out = np.empty_like(x)  # [...]
    _gelu_into(x, out, np.empty_like(x))
    return out


def _gelu_into(x: np.ndarray, out: np.ndarray, t: np.ndarray) -> None:
    """out = gelu_new(x) in in-place float32 steps (out may be x), with t (x's shape) as scratch
    (halving is exact, so ½ may be applied before the product with x)."""
    np.multiply(x, x, out=t)  # x²
    t *= x
    t *= 0.044715
    t += x
    t *= math.sqrt(2.0 / math.pi)
    np.tanh(t, out=t)
    t += 1.0
    t *= 0.5
    np.multiply(t, x, out=out)


_PARALLEL_MIN = 1 << 16  # elements below which elementwise work stays on one thread


def _matmul(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """x [..., K] @ W [K, N] as one GEMM over all rows (``@`` on a 3-D x runs one GEMM per prompt)."""
    K = x.shape[-1]
    return (x.reshape(-1, K) @ W).reshape(x.shape[:-1] + (W.shape[1],))


@dataclass(frozen=True)
class Intervention:
    """Zero or replace a head's output or a neuron's activation during a run.

    target: ``"L3H5"`` — a head: ``value`` replaces z_h (its output is z_h @ W_O[h]; 0 zeroes the head);
            ``"L4N100"`` — a neuron: ``value`` replaces its post-GELU activation.
    value: a number, or an array broadcastable to [B, T_sel, Dh] (head) / [B, T_sel] (neuron).
    positions: the positions to change; None means all.
    """

    target: str
    value: float | np.ndarray = 0.0
    positions: Sequence[int] | None = None


@dataclass
class Run:
    """What a forward pass returns: padded tokens, per-prompt lengths, logits and recorded internals.

    ``run["pre", 3]`` is layer 3's MLP pre-activation [B, T, M]; ``run["ln_f_scale"]`` the final LN scale.
    ``run.head("L3H5")`` and ``run.neuron("L4N100")`` slice one head's / neuron's internals.
    """

    tokens: np.ndarray  # [B, T] int64, right-padded with 0
    lengths: np.ndarray  # [B]
    logits: np.ndarray | None  # [B, T, V] ("all"), [B, V] (one position per prompt) or None
    cache: dict = field(default_factory=dict)  # (name, layer) → array; ("ln_f_scale", None) → [B, T]
    neuron_columns: dict = field(default_factory=dict)  # layer → neuron indices when stop_neurons was used

    def __getitem__(self, key):
        name, layer = (key, None) if isinstance(key, str) else key
        try:
            return self.cache[name, layer]
        except KeyError:
            raise KeyError(f"{name!r} of layer {layer} was not recorded: pass keep={{{name!r}}}") from None

    def head(self, spec: str | Head) -> dict[str, np.ndarray]:
        """One head's q, k, v, z [B, T, Dh], pattern [B, T, T], head_out [B, T, D] — those recorded."""
        h = spec if isinstance(spec, Head) else parse_head(spec)
        out = {}
        for name in ("q", "k", "v", "z", "head_out"):
            if (name, h.layer) in self.cache:
                out[name] = self.cache[name, h.layer][:, :, h.head]
        if ("pattern", h.layer) in self.cache:
            out["pattern"] = self.cache["pattern", h.layer][:, h.head]
        return out

    def neuron(self, spec: str | Neuron) -> dict[str, np.ndarray]:
        """One neuron's pre and post activations [B, T] — those recorded."""
        n = spec if isinstance(spec, Neuron) else parse_neuron(spec)
        cols = self.neuron_columns.get(n.layer)
        col = n.index if cols is None else list(cols).index(n.index)
        return {name: self.cache[name, n.layer][..., col] for name in ("pre", "post") if (name, n.layer) in self.cache}


class Model:
    """A GPT-2 loaded from a Hugging Face folder, with TransformerLens-style per-head weight views.

    Views made once at load (no copies): ``W_Q, W_K, W_V [L][H, D, Dh]``, ``b_Q, b_K, b_V [L][H, Dh]``,
    ``W_O [L][H, Dh, D]``, ``W_in [L][D, M]``, ``W_out [L][M, D]``, ``W_U [D, V]``.
    ``w`` holds the checkpoint's tensors under their (unprefixed) key names.
    """

    def __init__(self, cfg: Config, weights: dict[str, np.ndarray], folder: Path | None = None):
        self.cfg, self.w, self.folder = cfg, weights, folder
        L, H, D, Dh = cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_head
        self.W_Q, self.W_K, self.W_V, self.b_Q, self.b_K, self.b_V, self.W_O = ([] for _ in range(7))
        for layer in range(L):
            c_attn = self.w[f"h.{layer}.attn.c_attn.weight"].reshape(D, 3, H, Dh)  # [D, 3, H, Dh] view
            b_attn = self.w[f"h.{layer}.attn.c_attn.bias"].reshape(3, H, Dh)  # [3, H, Dh]
            for i, (W, b) in enumerate(((self.W_Q, self.b_Q), (self.W_K, self.b_K), (self.W_V, self.b_V))):
                W.append(c_attn[:, i].transpose(1, 0, 2))  # [H, D, Dh] view
                b.append(b_attn[i])  # [H, Dh]
            self.W_O.append(self.w[f"h.{layer}.attn.c_proj.weight"].reshape(H, Dh, D))  # [H, Dh, D] view
        self.W_in = [self.w[f"h.{layer}.mlp.c_fc.weight"] for layer in range(L)]  # [D, M] each
        self.W_out = [self.w[f"h.{layer}.mlp.c_proj.weight"] for layer in range(L)]  # [M, D] each
        self.W_U = self.w.get("lm_head.weight", self.w["wte.weight"]).T  # [D, V] view
        self._tokenizer = None

    # ---- loading and text -------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path) -> "Model":
        """Load ``folder`` (config.json + model.safetensors; vocab.json + merges.txt read on first use)."""
        cfg, weights = load_weights(Path(folder))
        return cls(cfg, weights, Path(folder))

    @property
    def tokenizer(self):
        """The folder's BPE as a ``tiktoken.Encoding`` (built on first use, offline)."""
        if self._tokenizer is None:
            from .tokenizer import load_tokenizer

            if self.folder is None:
                raise MinitfError("this model was built without a folder: it has no tokenizer")
            self._tokenizer = load_tokenizer(self.folder)
            if self._tokenizer.n_vocab > self.cfg.d_vocab:
                raise MinitfError(f"{self.folder / 'vocab.json'}: {self._tokenizer.n_vocab} tokens but the model's "
                                  f"vocab_size is {self.cfg.d_vocab}")
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; the literal ``<|endoftext|>`` becomes its special token, as in transformers."""
        return self.tokenizer.encode(text, allowed_special="all")

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def token_str(self, i: int) -> str:
        """One token as text (invalid UTF-8 pieces shown with U+FFFD)."""
        return self.tokenizer.decode_single_token_bytes(int(i)).decode("utf-8", errors="replace")

    @property
    def bos(self) -> int:
        return self.tokenizer.eot_token

    # ---- the forward pass -------------------------------------------------------------------------
    def run(self, tokens, *, logits: str | np.ndarray | None = "all", keep: Iterable[str] | str | None = None,
            stop_at_layer: int | None = None, stop_neurons: Sequence[int] | None = None,
            interventions: Sequence[Intervention] = ()) -> Run:
        """Run prompts through the model.

        tokens: one prompt (list of ids / 1-D array), a list of prompts of any lengths, or a [B, T] array.
        logits: "all" → [B, T, V]; "last" → each prompt's last position [B, V]; an int array [B] →
            those positions [B, V]; None → no unembedding at all.
        keep: names from ``INTERNALS`` to record for every layer, (name, layer) pairs for one layer, or "all"
            (all but ``head_out``, which is H× the size of attn_out and is recorded only when named).
        stop_at_layer: end after this layer's MLP activation (no logits then); ``stop_neurons`` limits that
            last layer's pre/post to these neuron indices.
        interventions: heads' outputs or neurons' activations to zero or replace (see ``Intervention``).
        """
        cfg = self.cfg
        tokens, lengths = pad(tokens, cfg.n_ctx)
        B, T = tokens.shape
        keep = set(LAYER_INTERNALS) - {"head_out"} | {"ln_f_scale"} if keep == "all" else set(keep or ())
        if unknown := {k if isinstance(k, str) else k[0] for k in keep} - set(INTERNALS):
            raise ValueError(f"unknown internals {sorted(unknown)}; choose from {INTERNALS}")
        if stop_at_layer is not None:
            if not 0 <= stop_at_layer < cfg.n_layer:
                raise MinitfError(f"stop_at_layer {stop_at_layer}: the model has {cfg.n_layer} layers (0–{cfg.n_layer - 1})")
            logits = None
        if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.d_vocab):
            raise MinitfError(f"token id out of range: the model's vocabulary has {cfg.d_vocab} ids")
        head_patches, neuron_patches = self._parse_interventions(interventions)
        run = Run(tokens, lengths, None)
        last_layer = cfg.n_layer - 1 if stop_at_layer is None else stop_at_layer

        record = _Recorder(keep, run.cache)
        locked = POOL_LOCK.acquire(blocking=False)
        try:
            par = Par(threads() if locked else 1)
            x = self.w["wte.weight"][tokens]  # [B, T, D]
            x += self.w["wpe.weight"][:T]
            for layer in range(last_layer + 1):
                record("resid_pre", layer, x)
                attn_out = self._attention(layer, x, head_patches.get(layer, ()), record, par)  # [B, T, D]
                x = np.add(x, attn_out, out=None if record.wants("attn_out", layer) else attn_out)  # [B, T, D]
                record("resid_mid", layer, x)
                cols = stop_neurons if layer == stop_at_layer else None
                mlp_out = self._mlp(layer, x, cols, neuron_patches.get(layer, ()), record, par,
                                    need_out=layer != stop_at_layer)
                if cols is not None:
                    run.neuron_columns[layer] = np.asarray(cols)
                if mlp_out is None:
                    break
                x = np.add(x, mlp_out, out=None if record.wants("mlp_out", layer) else mlp_out)  # [B, T, D]
                record("resid_post", layer, x)

            if logits is not None or "ln_f_scale" in keep:
                run.logits = self._unembed(x, lengths, logits, record, par)
        finally:
            if locked:
                POOL_LOCK.release()
        return run

    def _layer_norm(self, x, name, par) -> tuple[np.ndarray, np.ndarray]:
        """LayerNorm ``name`` (ln_1, ln_2, ln_f) of x [..., D] on ``par``'s threads: (LN(x), σ [...])."""
        gamma, beta = self.w[name + ".weight"], self.w[name + ".bias"]
        D = x.shape[-1]
        rows = x.reshape(-1, D)  # [N, D]
        out = np.empty(rows.shape, np.float32)  # [N, D]
        sigma = np.empty(rows.shape[0], np.float32)  # [N]
        pieces = split(rows.shape[0], par.n if rows.size >= _PARALLEL_MIN else 1)

        def ln_share(i):
            a, b = pieces[i]
            for c in range(a, b, 256):  # chunks whose temporaries stay in cache
                d = min(b, c + 256)
                _layer_norm_rows(rows[c:d], gamma, beta, self.cfg.eps, out[c:d], sigma[c:d])

        par(ln_share, len(pieces))
        return out.reshape(x.shape), sigma.reshape(x.shape[:-1])

    def _attention(self, layer, x, patches, record, par) -> np.ndarray:
        """Causal multi-head self-attention of one layer; returns attn_out [B, T, D]."""
        cfg, p = self.cfg, f"h.{layer}."
        B, T, D = x.shape
        H, Dh = cfg.n_head, cfg.d_head
        a, sigma = self._layer_norm(x, p + "ln_1", par)  # [B, T, D], [B, T]
        record("ln1_scale", layer, sigma)
        qkv = _matmul(a, self.w[p + "attn.c_attn.weight"])  # [B, T, 3D]
        qkv += self.w[p + "attn.c_attn.bias"]
        qkv = qkv.reshape(B, T, 3, H, Dh)  # [B, T, 3, H, Dh]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, Dh] views
        record("q", layer, q)
        record("k", layer, k)
        record("v", layer, v)
        pattern = np.zeros((B, H, T, T), np.float32) if record.wants("pattern", layer) else None  # [B, H, T, T]
        z = np.empty((B, T, H, Dh), np.float32)  # [B, T, H, Dh]
        _attend(q, k, v, z, pattern, 1.0 / math.sqrt(Dh), par)
        record("pattern", layer, pattern)
        for head, positions, value in patches:
            z[:, slice(None) if positions is None else positions, head] = value
        record("z", layer, z)
        if record.wants("head_out", layer):
            record("head_out", layer, np.einsum("bthd,hdD->bthD", z, self.W_O[layer], optimize=True))  # [B, T, H, D]
        attn_out = _matmul(z.reshape(B, T, D), self.w[p + "attn.c_proj.weight"])  # [B, T, D]
        attn_out += self.w[p + "attn.c_proj.bias"]
        record("attn_out", layer, attn_out)
        return attn_out

    def _mlp(self, layer, x, cols, patches, record, par, need_out) -> np.ndarray | None:
        """The MLP of one layer; returns mlp_out [B, T, D], or None when stopping after the activation."""
        p = f"h.{layer}."
        a, sigma = self._layer_norm(x, p + "ln_2", par)  # [B, T, D], [B, T]
        record("ln2_scale", layer, sigma)
        W_in, b_in = self.W_in[layer], self.w[p + "mlp.c_fc.bias"]  # [D, M], [M]
        if cols is not None:
            W_in, b_in = W_in[:, cols], b_in[cols]  # [D, K], [K]
        pre = _matmul(a, W_in)  # [B, T, M]
        keep_pre = record.wants("pre", layer)
        post = np.empty_like(pre) if keep_pre else pre  # [B, T, M] GELU in place unless pre is recorded
        K = pre.shape[-1]
        rows_pre, rows_post = pre.reshape(-1, K), post.reshape(-1, K)  # [N, K]
        pieces = split(rows_pre.shape[0], par.n if pre.size >= _PARALLEL_MIN else 1)
        chunk = max(1, (1 << 16) // K)  # rows whose temporaries stay in cache

        def gelu_share(i):
            a, b = pieces[i]
            t = np.empty((min(chunk, b - a), K), np.float32)
            for c in range(a, b, chunk):
                d = min(b, c + chunk)
                rows = rows_pre[c:d]
                rows += b_in
                _gelu_into(rows, rows_post[c:d], t[:d - c])

        par(gelu_share, len(pieces))
        record("pre", layer, pre)
        for neuron, positions, value in patches:
            post[:, slice(None) if positions is None else positions, neuron] = value
        record("post", layer, post)
        if not need_out:
            return None
        mlp_out = _matmul(post, self.W_out[layer])  # [B, T, D]
        mlp_out += self.w[p + "mlp.c_proj.bias"]
        record("mlp_out", layer, mlp_out)
        return mlp_out

    def _unembed(self, x, lengths, where, record, par) -> np.ndarray | None:
        """Final LayerNorm and the unembedding at the requested positions."""
        B = x.shape[0]
        if record.wants("ln_f_scale"):
            record("ln_f_scale", None, self._layer_norm(x, "ln_f", par)[1])
        if where is None:
            return None
        if isinstance(where, str) and where == "all":
            sel = x  # [B, T, D]
        elif isinstance(where, str) and where == "last":
            sel = x[np.arange(B), lengths - 1]  # [B, D]
        else:
            sel = x[np.arange(B), np.asarray(where)]  # [B, D]
        y, _ = self._layer_norm(sel, "ln_f", par)  # [..., D]
        return _matmul(y, self.W_U)  # [..., V]

    def _parse_interventions(self, interventions):
        heads, neurons = {}, {}
        for iv in interventions:
            if iv.target.upper().startswith("L") and "H" in iv.target.upper():
                h = parse_head(iv.target, self.cfg.n_layer, self.cfg.n_head)
                heads.setdefault(h.layer, []).append((h.head, iv.positions, iv.value))
            else:
                n = parse_neuron(iv.target, self.cfg.n_layer, self.cfg.d_mlp)
                neurons.setdefault(n.layer, []).append((n.index, iv.positions, iv.value))
        return heads, neurons


_ATTENTION_BLOCK_BYTES = 1 << 21  # scores of one block of query rows (all of a group's heads)


def _attend(q, k, v, z, pattern, scale: float, par) -> None:
    """z = softmax(q kᵀ · scale + causal mask) v for every prompt and head, written into z [B, T, H, Dh].

    q, k, v: [B, T, H, Dh] (views into the fused qkv); pattern: [B, H, T, T] zeros to fill, or None.
    Work goes in blocks of query rows: a block of rows i0…i1 needs keys 0…i1 only (the causal mask is
    added on the diagonal block), its scores stay in cache through the softmax, and nothing is computed
    for the keys a query never sees; short prompts go several at a time. Prompts (or, for fewer prompts
    than threads, heads) are shared among ``par``'s threads, each running its small products with one
    BLAS thread.
    """
    B, T, H, Dh = q.shape
    n = par.n
    if B % n == 0 or B >= 4 * n:
        shares = [((b0, b1), (0, H)) for b0, b1 in split(B, n)]  # thread → (prompts, heads)
    else:
        shares = [((0, B), hs) for hs in split(H, n)]
    h_most = max(h1 - h0 for _, (h0, h1) in shares)
    block = min(T, max(16, _ATTENTION_BLOCK_BYTES // (4 * T * h_most) // 16 * 16))  # query rows per block
    per = max(1, _ATTENTION_BLOCK_BYTES // (4 * T * T * h_most)) if block == T else 1  # prompts per block
    mask = np.triu(np.full((block, block), -np.inf, np.float32), 1)  # [block, block]

    def attend_share(i):
        (b_lo, b_hi), (h0, h1) = shares[i]
        scratch = np.empty((min(per, b_hi - b_lo), h1 - h0, block, T), np.float32) if pattern is None else None
        for b0 in range(b_lo, b_hi, per):
            b1 = min(b_hi, b0 + per)
            qb = q[b0:b1, :, h0:h1].transpose(0, 2, 1, 3)  # [nb, h, T, Dh]
            kb = k[b0:b1, :, h0:h1].transpose(0, 2, 3, 1)  # [nb, h, Dh, T]
            vb = v[b0:b1, :, h0:h1].transpose(0, 2, 1, 3)  # [nb, h, T, Dh]
            zb = z[b0:b1, :, h0:h1].transpose(0, 2, 1, 3)  # [nb, h, T, Dh] a view of the output
            for i0 in range(0, T, block):
                i1 = min(T, i0 + block)
                r = i1 - i0
                s = (pattern[b0:b1, h0:h1, i0:i1, :i1] if pattern is not None
                     else scratch[:b1 - b0, :, :r, :i1])  # [nb, h, r, i1]
                np.matmul(qb[:, :, i0:i1], kb[..., :i1], out=s)
                s *= scale
                s[..., i0:] += mask[:r, :r]  # a query never sees later keys
                s -= s.max(-1, keepdims=True)
                np.exp(s, out=s)
                s /= s.sum(-1, keepdims=True)
                np.matmul(s, vb[:, :, :i1], out=zb[:, :, i0:i1])

    par(attend_share, len(shares), blas_one=True)


class _Recorder:
    """Stores an internal in the run's cache when it was asked for."""

    def __init__(self, keep: set[str], cache: dict):
        self.keep, self.cache = keep, cache

    def wants(self, name: str, layer: int | None = None) -> bool:
        return name in self.keep or (name, layer) in self.keep

    def __call__(self, name: str, layer: int | None, value: np.ndarray) -> None:
        if self.wants(name, layer):
            self.cache[name, layer] = value


def pad(tokens, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts → ([B, T] int64 right-padded with 0, lengths [B]). Errors on empty or over-long prompts."""
    if isinstance(tokens, np.ndarray) and tokens.ndim == 2:
        prompts = list(tokens)
    elif len(tokens) and np.ndim(tokens[0]) == 0:
        prompts = [tokens]
    else:
        prompts = list(tokens)
    if not prompts:
        raise MinitfError("no prompts to run")
    lengths = np.array([len(p) for p in prompts], dtype=np.int64)  # [B]
    if lengths.min() == 0:
        raise MinitfError("empty prompt: a prompt needs at least one token")
    if lengths.max() > n_ctx:
        raise MinitfError(f"prompt of {lengths.max()} tokens is longer than the model's context of {n_ctx}")
    out = np.zeros((len(prompts), lengths.max()), dtype=np.int64)  # [B, T]
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return out, lengths
