"""GPT-2's and GPT-NeoX's (Pythia's) forward pass in NumPy, float32, as the math alone (the fast kernels live
in ``minitf.kernels``).

Shapes: B batch, T positions, D d_model, H heads, Dh d_head, M d_mlp, V vocabulary.

    x⁰ = wte[tokens] + wpe[positions]                                   resid_pre of layer 0
    for each layer l:
        a = LN₁(xˡ);  q_h, k_h, v_h = a W_Q[h] + b_Q[h], a W_K[h] + b_K[h], a W_V[h] + b_V[h]
        z_h = softmax(q_h k_hᵀ / √Dh + causal mask) v_h                   each head's z   [B, T, Dh]
        x_mid = xˡ + Σ_h z_h W_O[h] + b_O                                resid_mid
        pre = LN₂(x_mid) W_in + b_in;  post = gelu_new(pre)              each neuron's activation
        xˡ⁺¹ = x_mid + post W_out + b_out                                resid_post
    logits = LN_f(x^L) W_U

GPT-NeoX (``cfg.arch == "gpt_neox"``) differs in four places, and nowhere else (its checkpoint is stored under
GPT-2's names and layouts at load, ``minitf.load.weights``):

    positions   no wpe: x⁰ = wte[tokens]; instead q_h and k_h are rotated (rotary embedding, GPT-NeoX's
                half-split layout) on their first R = cfg.rotary_dims dimensions (¼ of Dh in Pythia):
                with r = R/2, θ_i = base^(−2i/rotary_dim) and angle a = position · θ_i (i < r),
                    q[i]     ← q[i] cos a − q[i + r] sin a
                    q[i + r] ← q[i + r] cos a + q[i] sin a          dimensions R … Dh−1 pass through
    residual    parallel (Pythia, ``cfg.parallel_residual``): xˡ⁺¹ = xˡ + attn(LN₁ xˡ) + mlp(LN₂ xˡ), so
                the MLP reads resid_pre, not resid_mid; sequential: as GPT-2
    activation  exact GELU x·Φ(x) = ½x(1 + erf(x/√2)) (``hidden_act: gelu``) instead of gelu_new's tanh
    unembed     W_U = embed_outᵀ, untied from wte

The recorded ``q`` and ``k`` are the rotated ones the pattern is computed from; ``resid_mid`` = xˡ + attn_out
in both residual forms (in the parallel one, nothing reads it).

LN(x) = (x − mean x) / σ · γ + β with σ = √(var x + ε); σ is recorded per position as ``ln1_scale``,
``ln2_scale`` and ``ln_f_scale`` because the direct-effect identity of ``minitf.attribution`` freezes it.

Only what is asked is computed: a run may start at a layer from a given resid_pre (``start_layer``), end
after a layer's MLP activation (``stop_at_layer``, optionally for a few neurons only), unembed all positions,
each prompt's last one, given ones or none, and records only the internals named in ``keep``. Prompts of
different lengths are right-padded: a causal model never lets a real position see a padded one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from minitf.errors import MinitfError
from minitf.kernels import causal_attention, gelu, gelu_new, layer_norm, linear, pool
from minitf.names import check_layer, parse_head, parse_neuron
from minitf.runs import Intervention, Recorder, Run, pad
from minitf.load.weights import Config, load_weights

# Internals a run can record, per layer ([B, T, ...] unless noted).
LAYER_INTERNALS = ("resid_pre", "ln1_scale", "q", "k", "v", "z", "pattern", "head_out", "attn_out",
                   "resid_mid", "ln2_scale", "pre", "post", "mlp_out", "resid_post")
INTERNALS = LAYER_INTERNALS + ("ln_f_scale",)
ATTENTION_INTERNALS = LAYER_INTERNALS[1:LAYER_INTERNALS.index("resid_mid") + 1]  # what a layer's attention makes
__all__ = ["Model", "Run", "Intervention", "INTERNALS", "layer_norm", "gelu_new", "pad"]


class Model:
    """A GPT-2 or GPT-NeoX loaded from a Hugging Face folder, with TransformerLens-style per-head weight views.

    ``W_O [L][H, Dh, D]``, ``W_in [L][D, M]``, ``W_out [L][M, D]``, ``W_U [D, V]`` are views made at load;
    ``W_Q, W_K, W_V [L][H, D, Dh]``, ``b_Q, b_K, b_V [L][H, Dh]`` are views of the fused ``c_attn`` the
    forward pass multiplies by, made when asked. ``w`` holds the checkpoint's tensors under GPT-2's key names
    (a GPT-NeoX's renamed and laid out as GPT-2's at load: ``minitf.load.weights``), so the views are the same
    for both families.
    """

    def __init__(self, cfg: Config, weights: dict[str, np.ndarray], folder: Path | None = None):
        self.cfg, self.w, self.folder, self._tokenizer = cfg, weights, folder, None
        L, H, D, Dh = cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_head
        self.W_O = [self.w[f"h.{l}.attn.c_proj.weight"].reshape(H, Dh, D) for l in range(L)]  # [H, Dh, D] views
        self.W_in = [self.w[f"h.{l}.mlp.c_fc.weight"] for l in range(L)]  # [D, M] each
        self.W_out = [self.w[f"h.{l}.mlp.c_proj.weight"] for l in range(L)]  # [M, D] each
        self.W_U = self.w.get("lm_head.weight", self.w["wte.weight"]).T  # [D, V] view
        self.act = gelu if cfg.act == "gelu" else gelu_new  # NeoX: exact erf GELU; GPT-2: tanh's gelu_new

    def _qkv_views(self, i: int, bias: bool) -> list[np.ndarray]:
        """Part i (0 Q, 1 K, 2 V) of every layer's fused c_attn: weights [H, D, Dh] or biases [H, Dh]."""
        H, D, Dh = self.cfg.n_head, self.cfg.d_model, self.cfg.d_head
        if bias:
            return [self.w[f"h.{l}.attn.c_attn.bias"].reshape(3, H, Dh)[i] for l in range(self.cfg.n_layer)]
        return [self.w[f"h.{l}.attn.c_attn.weight"].reshape(D, 3, H, Dh)[:, i].transpose(1, 0, 2)
                for l in range(self.cfg.n_layer)]

    W_Q, W_K, W_V = (property(lambda self, i=i: self._qkv_views(i, False)) for i in range(3))
    b_Q, b_K, b_V = (property(lambda self, i=i: self._qkv_views(i, True)) for i in range(3))

    @classmethod
    def load(cls, folder: str | Path) -> "Model":
        """Load ``folder`` (config.json + model.safetensors or its shards; the tokenizer read on first use)."""
        cfg, weights = load_weights(Path(folder))
        return cls(cfg, weights, Path(folder))

    @property
    def tokenizer(self):
        """The folder's BPE as a ``tiktoken.Encoding`` (built on first use, offline)."""
        if self._tokenizer is None:
            from minitf.load.tokenizer import load_tokenizer

            if self.folder is None:
                raise MinitfError("this model was built without a folder: it has no tokenizer")
            self._tokenizer = load_tokenizer(self.folder)
            if self._tokenizer.n_vocab > self.cfg.d_vocab:
                raise MinitfError(f"{self.folder}: the tokenizer has {self._tokenizer.n_vocab} tokens but the model's "
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
            interventions: Sequence[Intervention] = (), start_layer: int = 0,
            resid_pre: np.ndarray | None = None) -> Run:
        """Run prompts through the model.

        tokens: one prompt (list of ids / 1-D array), a list of prompts of any lengths, or a [B, T] array.
        logits: "all" → [B, T, V]; "last" → each prompt's last position [B, V]; an int array [B] →
            those positions [B, V]; None → no unembedding at all.
        keep: names from ``INTERNALS`` to record for every layer, (name, layer) pairs for one layer, or "all"
            (all but ``head_out``, which is H× the size of attn_out and is recorded only when named).
        stop_at_layer: end after this layer's MLP activation (no logits then); ``stop_neurons`` limits that
            last layer's pre/post to these neuron indices.
        interventions: heads' z or neurons' activations to zero or replace (see ``Intervention``).
        start_layer, resid_pre: start at this layer from its residual stream [B, T, D] (e.g. an earlier run's
            ``run["resid_pre", start_layer]`` of the same tokens); layers before it are neither run nor recorded.
        """
        cfg = self.cfg
        tokens, lengths = pad(tokens, cfg.n_ctx)
        B = len(lengths)
        keep = set(LAYER_INTERNALS) - {"head_out"} | {"ln_f_scale"} if keep == "all" else set(keep or ())
        if unknown := {k if isinstance(k, str) else k[0] for k in keep} - set(INTERNALS):
            raise ValueError(f"unknown internals {sorted(unknown)}; choose from {INTERNALS}")
        last_layer = cfg.n_layer - 1 if stop_at_layer is None else stop_at_layer
        check_layer(last_layer, cfg.n_layer, where="stop_at_layer")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.d_vocab):
            raise MinitfError(f"token id out of range: the model's vocabulary has {cfg.d_vocab} ids")
        if start_layer and (resid_pre is None or resid_pre.shape != tokens.shape + (cfg.d_model,)
                            or not 0 < start_layer <= last_layer):
            raise ValueError(f"start_layer {start_layer} needs a resid_pre [B, T, D] of the tokens' shape, at "
                             f"most the last layer run ({last_layer})")
        heads, neurons = self._parse_interventions(interventions)
        run = Run(tokens, lengths, None)
        rec = Recorder(keep, run.cache)
        top = cfg.n_layer - 1  # of the last layer, logits at one position per prompt need that position only
        at = None if (stop_at_layer is not None or logits is None or isinstance(logits, str) and logits == "all"
                      or top in heads or top in neurons or any(rec.wants(n, top) for n in INTERNALS)) else (
            lengths - 1 if isinstance(logits, str) else np.asarray(logits))  # [B]
        with pool():  # the forward pass's kernels share the thread pool
            x = self.embed(tokens) if start_layer == 0 else resid_pre  # [B, T, D]
            for l in range(start_layer, last_layer + 1):
                if l == top and at is not None:
                    x_at = x[np.arange(B), at]  # [B, D]  resid_pre there
                    mid = x_at + self.attention_at(l, x, at)  # [B, D]  resid_mid there
                    reads = x_at if cfg.parallel_residual else mid  # [B, D]  what LN₂ reads
                    x = (mid + self.mlp(l, reads[:, None], (), rec)[:, 0])[:, None]  # [B, 1, D]  resid_post there
                    at = np.zeros(B, np.int64)  # [B]  the one position left
                    break
                rec("resid_pre", l, x)
                if l == stop_at_layer:  # the neurons' activations are all that is asked of this layer
                    if not cfg.parallel_residual or any(rec.wants(n, l) for n in ATTENTION_INTERNALS):
                        x_mid = rec("resid_mid", l, x + self.attention(l, x, heads.get(l, ()), rec))  # [B, T, D]
                    reads = x if cfg.parallel_residual else x_mid  # [B, T, D]  what LN₂ reads
                    self.mlp(l, reads, neurons.get(l, ()), rec, cols=stop_neurons, activation_only=True)
                    if stop_neurons is not None:
                        run.neuron_columns[l] = np.asarray(stop_neurons)
                    return run
                x_mid = x + self.attention(l, x, heads.get(l, ()), rec)  # [B, T, D]
                rec("resid_mid", l, x_mid)
                reads = x if cfg.parallel_residual else x_mid  # [B, T, D]  LN₂ reads resid_pre (parallel) or resid_mid
                x = x_mid + self.mlp(l, reads, neurons.get(l, ()), rec)  # [B, T, D]
                rec("resid_post", l, x)
            run.logits = self.unembed(x, lengths, logits if at is None else at, rec)
        return run

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """x⁰ = wte[tokens] + wpe[positions]  [B, T, D] (GPT-NeoX: wte[tokens]; its positions are rotary's)."""
        if "wpe.weight" not in self.w:
            return self.w["wte.weight"][tokens]  # [B, T, D]
        return self.w["wte.weight"][tokens] + self.w["wpe.weight"][:tokens.shape[1]]  # [B, T, D]

    def rotate(self, x: np.ndarray, positions: np.ndarray) -> None:
        """GPT-NeoX's rotary embedding, in place, of x [..., H, Dh] (queries or keys) at ``positions``
        (broadcast against x's leading axes: [T] for [B, T, H, Dh], [B, 1] for [B, 1, H, Dh]).

        With R = cfg.rotary_dims, r = R/2 and θ_i = base^(−2i/rotary_dim), i < r (transformers' inv_freq), each
        pair (x[i], x[i + r]) turns by the angle a = position · θ_i (the half-split layout, not adjacent pairs):
            x[i] ← x[i] cos a − x[i + r] sin a,    x[i + r] ← x[i + r] cos a + x[i] sin a.
        Dimensions R … Dh−1 pass through.
        """
        R, dim = self.cfg.rotary_dims, self.cfg.rotary_dim
        if R == 0:
            return
        r = R // 2
        theta = np.float32(1.0) / np.float32(self.cfg.rotary_base) ** (np.arange(0, dim, 2, dtype=np.float32)
                                                                        / np.float32(dim))  # [r]
        angle = (np.asarray(positions, np.float32)[..., None] * theta)[..., None, :]  # [..., 1, r]
        cos, sin = np.cos(angle), np.sin(angle)  # [..., 1, r] each
        first, second = x[..., :r].copy(), x[..., r:R].copy()  # [..., H, r] each
        x[..., :r] = first * cos - second * sin  # [..., H, r]
        x[..., r:R] = second * cos + first * sin  # [..., H, r]

    def ln(self, x: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        """LayerNorm ``name`` (h.l.ln_1, h.l.ln_2, ln_f) of x [..., D]: (LN(x) [..., D], σ [...])."""
        return layer_norm(x, self.w[name + ".weight"], self.w[name + ".bias"], self.cfg.eps)

    def attention(self, l: int, x: np.ndarray, patches, rec) -> np.ndarray:
        """attn_out = Σ_h z_h W_O[h] + b_O of layer l [B, T, D], z_h = softmax(q_h k_hᵀ/√Dh + mask) v_h."""
        B, T, D = x.shape
        H, Dh = self.cfg.n_head, self.cfg.d_head
        a, sigma = self.ln(x, f"h.{l}.ln_1")  # [B, T, D], [B, T]
        rec("ln1_scale", l, sigma)
        qkv = linear(a, self.w[f"h.{l}.attn.c_attn.weight"], self.w[f"h.{l}.attn.c_attn.bias"])  # [B, T, 3D]
        q, k, v = qkv.reshape(B, T, 3, H, Dh).transpose(2, 0, 1, 3, 4)  # [B, T, H, Dh] each: a W_Q[h] + b_Q[h] …
        self.rotate(q, np.arange(T))  # [B, T, H, Dh]  (GPT-NeoX; GPT-2 has R = 0)
        self.rotate(k, np.arange(T))  # [B, T, H, Dh]
        for name, value in (("q", q), ("k", k), ("v", v)):
            rec(name, l, value)
        pattern = np.zeros((B, H, T, T), np.float32) if rec.wants("pattern", l) else None  # [B, H, T, T]
        z = causal_attention(q, k, v, pattern)  # [B, T, H, Dh]  each head's z_h = softmax(q_h k_hᵀ/√Dh + mask) v_h
        rec("pattern", l, pattern)
        for head, positions, value in patches:  # an intervention replaces z_h
            z[:, slice(None) if positions is None else positions, head] = value
        rec("z", l, z)
        if rec.wants("head_out", l):  # each head's output z_h W_O[h], kept apart
            rec("head_out", l, np.einsum("bthd,hdD->bthD", z, self.W_O[l], optimize=True))  # [B, T, H, D]
        # Σ_h z_h W_O[h] as one GEMM: z's heads side by side [B, T, H·Dh] times the W_O[h] stacked [H·Dh, D]
        attn_out = linear(z.reshape(B, T, H * Dh), self.W_O[l].reshape(H * Dh, D), self.w[f"h.{l}.attn.c_proj.bias"])
        return rec("attn_out", l, attn_out)  # [B, T, D]

    def attention_at(self, l: int, x: np.ndarray, at: np.ndarray) -> np.ndarray:
        """attn_out of layer l at position at[b] of each prompt [B, D]: that query against keys 0…at[b]."""
        B, T, D = x.shape
        H, Dh = self.cfg.n_head, self.cfg.d_head
        W, bias = self.w[f"h.{l}.attn.c_attn.weight"], self.w[f"h.{l}.attn.c_attn.bias"]  # [D, 3D], [3D]
        a, _ = self.ln(x, f"h.{l}.ln_1")  # [B, T, D]
        q = linear(a[np.arange(B), at], W[:, :D], bias[:D]).reshape(B, H, 1, Dh)  # [B, H, 1, Dh]
        k, v = linear(a, W[:, D:], bias[D:]).reshape(B, T, 2, H, Dh).transpose(2, 0, 1, 3, 4)  # [B, T, H, Dh] each
        self.rotate(q.reshape(B, 1, H, Dh), at[:, None])  # [B, 1, H, Dh]  (GPT-NeoX)
        self.rotate(k, np.arange(T))  # [B, T, H, Dh]
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, H, T, Dh] each
        s = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(Dh))  # [B, H, 1, T]
        s = np.where(np.arange(T) > at[:, None, None, None], np.float32(-np.inf), s)  # [B, H, 1, T] causal mask
        p = np.exp(s - s.max(-1, keepdims=True))  # [B, H, 1, T]
        z = (p / p.sum(-1, keepdims=True)) @ v  # [B, H, 1, Dh]
        return linear(z.reshape(B, H * Dh), self.W_O[l].reshape(H * Dh, D), self.w[f"h.{l}.attn.c_proj.bias"])

    def mlp(self, l: int, x: np.ndarray, patches, rec, cols=None, activation_only=False) -> np.ndarray | None:
        """mlp_out = post W_out + b_out of layer l [B, T, D], post = act(LN₂(x) W_in + b_in) [B, T, M]
        (x: resid_mid, or resid_pre in the parallel form; act: gelu_new, or GPT-NeoX's exact gelu)
        (with ``activation_only``: post only, for the neurons ``cols`` when given; returns None)."""
        a, sigma = self.ln(x, f"h.{l}.ln_2")  # [B, T, D], [B, T]
        rec("ln2_scale", l, sigma)
        W_in, b_in = self.W_in[l], self.w[f"h.{l}.mlp.c_fc.bias"]  # [D, M], [M]
        if cols is not None:
            W_in, b_in = W_in[:, cols], b_in[cols]  # [D, K], [K]
        pre = linear(a, W_in, b_in)  # [B, T, M]  pre = LN₂(x) W_in + b_in: each neuron's pre-activation
        rec("pre", l, pre)
        post = self.act(pre)  # [B, T, M]
        for neuron, positions, value in patches:  # an intervention replaces a neuron's activation
            post[:, slice(None) if positions is None else positions, neuron] = value
        rec("post", l, post)
        if activation_only:
            return None
        return rec("mlp_out", l, linear(post, self.W_out[l], self.w[f"h.{l}.mlp.c_proj.bias"]))  # [B, T, D]

    def unembed(self, x: np.ndarray, lengths: np.ndarray, where, rec) -> np.ndarray | None:
        """logits = LN_f(x) W_U at the positions ``where`` asks for ("all", "last", [B] indices, None)."""
        if rec.wants("ln_f_scale"):
            rec("ln_f_scale", None, self.ln(x, "ln_f")[1])  # [B, T]
        if where is None:
            return None
        if isinstance(where, str) and where == "all":
            sel = x  # [B, T, D]
        else:  # "last" or one position per prompt
            sel = x[np.arange(x.shape[0]), lengths - 1 if isinstance(where, str) else np.asarray(where)]  # [B, D]
        return linear(self.ln(sel, "ln_f")[0], self.W_U)  # [B, (T,) V]

    def _parse_interventions(self, interventions) -> tuple[dict, dict]:
        """Interventions → ({layer: [(head, positions, value)]}, {layer: [(neuron, positions, value)]})."""
        heads, neurons = {}, {}
        for iv in interventions:
            if iv.target.upper().startswith("L") and "H" in iv.target.upper():
                h = parse_head(iv.target, self.cfg.n_layer, self.cfg.n_head)
                heads.setdefault(h.layer, []).append((h.head, iv.positions, iv.value))
            else:
                n = parse_neuron(iv.target, self.cfg.n_layer, self.cfg.d_mlp)
                neurons.setdefault(n.layer, []).append((n.index, iv.positions, iv.value))
        return heads, neurons
