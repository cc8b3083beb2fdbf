"""Why a head looked where it did, and what it carried from there — both split exactly over the components of
the residual stream.

The residual stream entering layer k is a sum of components c: the token embedding (``embed``), the position
embedding (``pos_embed``), every head of layers j < k (``L{j}H{i}``), each attention bias (``b_O[j]``) and
each MLP output (``mlp[j]``, its b_out included) — or, with ``split_mlp``, each MLP's neurons (``L{j}N{m}``)
and its bias (``b_out[j]``). With LayerNorm-1's scale σ frozen at each position (as ``minitf.attribution``
freezes LN₂'s), head h of layer k reads, since (x − mean x)·w = x·(w − mean w),

    q_t = Σ_c Q_c(t) + bias_q,     Q_c(t) = c_t · W̃_Q / σ_t,     W̃_Q = γ₁⊙W_Q[h] − mean_D(γ₁⊙W_Q[h])  [D, Dh]
    bias_q = β₁ W_Q[h] + b_Q[h]

and likewise the key k_s (K_c, bias_k) and the value v_s (V_c, and c_h = β₁ W_V[h] + b_V[h]). The score is
bilinear, so it splits exactly into pairs (query-side c, key-side c'):

    S(t, s) = q_t · k_s / √Dh = Σ_{c, c'} Q_c(t) · K_c'(s) / √Dh     c ∈ components + bias_q, c' ∈ components + bias_k

A pair whose key side is bias_k is the same for every key s, so it cannot move the pattern: it is reported
apart (``key_bias``). What can is each pair's softmax-invariant part, the headline

    S̃(t, s) = S(t, s) − Σ_s' p[t, s'] S(t, s') = Q_c(t) · K̃_c'(s) / √Dh,    K̃_c'(s) = K_c'(s) − Σ_s' p[t, s'] K_c'(s')

— the exact first-order attribution of log p[t, s] (∂ log p[t, s] / ∂S(t, s') = δ_ss' − p[t, s']); rows of
S̃ sum to zero under the pattern, and every bias_k pair's S̃ is 0.

What the head carried: source s's context part (``attribution.head_sources``) is p[t, s] (v_s − c_h) · u_h / σ₂_t
with u_h = W_O[h] @ w̃ (the neuron's read direction) and v_s − c_h = Σ_c V_c(s), so it splits exactly over the
components at s:  carried_c(s) = p[t, s] · V_c(s) · u_h / σ₂_t.

Cost: every read is linear in its component, so a weighted read Σ_s a_s c_s/σ_s · W̃ (a one-hot row: one
position; the pattern row: the expectation that centres K) is taken on the component's own small factor — a
head's weighted z [Dh] through W_O[h], a neuron's weighted activation times W_out[m] W̃ — for a few "slots"
only (the query position, the pattern's expectation, the top sources). Nothing [pos, pos, C, C] is formed:
per head the reads are [C, slots, 3, Dh], and the pairs one [C, C] product per source, or with ``split_mlp``
an exact pruned search (``top_products``).

Rotary (GPT-NeoX) rotates q and k by their positions after these reads and before the score: there the reads
of each key position would be taken one by one (one-hot slots), rotated, and averaged under the pattern for K̃;
``head_reads`` returns exactly those per-component queries and keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from minitf.attribution import NEEDED as EFFECTS_NEEDED
from minitf.attribution import head_sources, read_direction
from minitf.errors import MinitfError
from minitf.kernels import linear, pool, run_on_threads, split
from minitf.model import Model, Run
from minitf.names import Head, Neuron
from minitf.util.records import Record, record_field

# Internals a run must record for ``why_for_heads``: the direct effects' and LN₁'s σ, q and k of every layer.
NEEDED = EFFECTS_NEEDED | {"ln1_scale", "q", "k"}


# ---- the records the trace embeds under each listed head -----------------------------------------------
@dataclass
class Share(Record):
    """One component's share of a score: S (its part of q_t·k_s/√Dh) and S̃ (its part of S̃(t, s))."""

    component: str
    score: float
    centred: float


@dataclass
class Pair(Record):
    """One (query-side component, key-side component) term of the score: S = Q_c(t)·K_c'(s)/√Dh and its S̃."""

    query: str
    key: str
    score: float
    centred: float


@dataclass
class Carried(Record):
    """One component's part of a source's context part: p[t, s] · V_c(s) · u_h / σ₂_t."""

    component: str
    effect: float


@dataclass
class SourceWhy(Record):
    """Why head h at query t looked at key s, and what it took from there.

    ``score`` and ``centred`` are the forward pass's S(t, s) and S̃(t, s); ``error`` = |Σ of all pairs − S|.
    ``pairs`` are the top pairs by |S̃| (bias_k pairs excluded: their S̃ is 0, see ``HeadWhy.key_bias``);
    ``query_side`` (Σ_c' over each query component: Q_c(t)·k_s/√Dh, bias_q included) and ``key_side``
    (q_t·K_c'(s)/√Dh) the top marginals by |S̃|. ``context`` is head_sources' context part from s, ``carried``
    its top components by |effect|, ``carried_error`` = |Σ over all components − context|.
    """

    position: int
    attention: float  # p[t, s]
    score: float
    centred: float
    error: float
    pairs: list[Pair] = record_field(Pair, many=True)
    query_side: list[Share] = record_field(Share, many=True)
    key_side: list[Share] = record_field(Share, many=True)
    context: float
    carried: list[Carried] = record_field(Carried, many=True)
    carried_error: float


@dataclass
class HeadWhy(Record):
    """One head's split at one prompt's query position t, for its top sources (by context part, as the trace
    lists them). ``key_bias`` = Σ_c Q_c(t)·bias_k/√Dh (bias_q included): the score every key gets alike.
    ``components``: how many residual components each side has (biases not counted)."""

    head: str
    query_position: int
    sigma: float  # LN₁'s σ_t at the query
    key_bias: float
    components: int
    sources: list[SourceWhy] = record_field(SourceWhy, many=True)


# ---- the reads -----------------------------------------------------------------------------------------
@dataclass
class Reads:
    """Each residual component as head h of layer k reads it, at a few weighted positions ("slots") of a prompt.

    names [C]: the components; qkv [C + 1, P, 3, Dh]: row c, slot p, part (0 query, 1 key, 2 value) is
    Σ_s A[p, s] c_s · W̃ / σ_s; the last row is the bias (bias_q, bias_k, c_h) times Σ_s A[p, s]. For a
    one-hot slot, the rows sum to the forward pass's q, k, v there.
    """

    names: list[str]
    qkv: np.ndarray


def read_weights(model: Model, head: Head) -> tuple[np.ndarray, np.ndarray]:
    """(W̃ [D, 3, Dh]: γ₁⊙W_{Q,K,V}[h] centred over D; bias [3, Dh]: β₁ W_{Q,K,V}[h] + b_{Q,K,V}[h])."""
    cfg, p = model.cfg, f"h.{head.layer}."
    D, H, Dh = cfg.d_model, cfg.n_head, cfg.d_head
    W = model.w[p + "attn.c_attn.weight"].reshape(D, 3, H, Dh)[:, :, head.head]  # [D, 3, Dh]
    b = model.w[p + "attn.c_attn.bias"].reshape(3, H, Dh)[:, head.head]  # [3, Dh]
    gW = model.w[p + "ln_1.weight"][:, None, None] * W  # [D, 3, Dh]
    bias = np.einsum("D,Dqd->qd", model.w[p + "ln_1.bias"], W) + b  # [3, Dh]
    return gW - gW.mean(0), bias


def component_names(model: Model, layer: int, split_mlp: bool = False) -> list[str]:
    """The residual components entering ``layer``, in the order of ``Reads.names``."""
    H, M = model.cfg.n_head, model.cfg.d_mlp
    names = ["embed", "pos_embed"]
    for j in range(layer):
        names += [f"L{j}H{i}" for i in range(H)] + [f"b_O[{j}]"]
        names += [f"L{j}N{m}" for m in range(M)] + [f"b_out[{j}]"] if split_mlp else [f"mlp[{j}]"]
    return names


def head_reads(model: Model, run: Run, head: Head, prompt: int, slots: np.ndarray, split_mlp: bool = False,
               need: np.ndarray | None = None) -> Reads:
    """Every component's query, key and value read by ``head`` at the weighted positions ``slots`` [P, n] of
    prompt ``prompt`` (n ≤ its length); ``need`` [P, 3] (default: all) the (slot, part) reads wanted, the others
    left 0. ``run`` must record NEEDED."""
    k, w = head.layer, model.w
    P, n = slots.shape
    W_t, bias = read_weights(model, head)  # [D, 3, Dh], [3, Dh]
    need = np.ones((P, 3), bool) if need is None else np.asarray(need, bool)  # [P, 3]
    parts = [(x, need[:, x]) for x in range(3) if need[:, x].any()]  # (part, its slots)
    a = (slots / run["ln1_scale", k][prompt, :n]).astype(np.float32)  # [P, n]  a_s / σ_s
    ones = a.sum(1)  # [P]  Σ_s a_s/σ_s: what a constant component (a bias) is weighted by

    def read(x):  # weighted components [rows, P, D] → their reads [rows, P, 3, Dh]
        out = np.zeros(x.shape[:2] + bias.shape, np.float32)
        for part, at in parts:
            out[:, at, part] = linear(x[:, at], W_t[:, part])  # [rows, P', Dh]
        return out

    dense = [a @ w["wte.weight"][run.tokens[prompt, :n]], a @ w["wpe.weight"][:n]]  # [P, D] each
    reads = []  # [rows, P, 3, Dh] blocks, in the order of component_names
    for j in range(k):
        z = np.einsum("ps,shd->hpd", a, run["z", j][prompt, :n])  # [H, P, Dh]  weighted z of each head
        dense += list(z @ model.W_O[j])  # H × [P, D]  each head's weighted output
        dense.append(ones[:, None] * w[f"h.{j}.attn.c_proj.bias"])  # [P, D]  b_O[j]
        if not split_mlp:
            dense.append(a @ run["mlp_out", j][prompt, :n])  # [P, D]  mlp[j], b_out included
            continue
        reads.append(read(np.stack(dense)))
        post = a @ run["post", j][prompt, :n]  # [P, M]  weighted activation of each neuron
        neurons = np.zeros((post.shape[1], P) + bias.shape, np.float32)  # [M, P, 3, Dh]
        for part, at in parts:
            neurons[:, at, part] = post.T[:, at, None] * (model.W_out[j] @ W_t[:, part])[:, None]  # W_out[m] W̃
        reads.append(neurons)
        dense = [ones[:, None] * w[f"h.{j}.mlp.c_proj.bias"]]  # [P, D]  b_out[j] opens the next block
    reads.append(read(np.stack(dense)))
    reads.append((slots.sum(1)[:, None, None] * bias * need[:, :, None])[None])  # [1, P, 3, Dh]  bias row (Σ_s A)
    return Reads(component_names(model, k, split_mlp), np.concatenate(reads))  # [C + 1, P, 3, Dh]


# ---- the exact top pairs -------------------------------------------------------------------------------
def top_products(a: np.ndarray, b: np.ndarray, n: int, block: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n pairs (i, j) with the largest |a_i · b_j| for a [I, Dh], b [J, Dh]: (i [n], j [n], a_i·b_j [n]),
    largest first, exactly, without forming the [I, J] matrix when it is big. |a_i · b_j| ≤ |a_i| |b_j|
    (Cauchy–Schwarz): rows are taken in blocks by decreasing |a_i|, each against only the columns whose
    |b_j| could still beat the n-th best so far, and the search stops when no row can."""
    n = min(n, a.shape[0] * b.shape[0])
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, a.dtype)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)  # [I], [J]
    ia, ib = np.argsort(-na, kind="stable"), np.argsort(-nb, kind="stable")
    na, nb = na[ia], nb[ib]
    rows, cols, vals = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, a.dtype))
    for start in range(0, len(ia), block):
        bound = na[start] * nb[0] if len(nb) else 0.0
        if len(vals) == n and (bound <= abs(vals[-1]) or bound == 0):
            break
        width = len(ib) if len(vals) < n else int(np.sum(na[start] * nb > abs(vals[-1])))
        block_vals = (a[ia[start:start + block]] @ b[ib[:width]].T).ravel()  # [rows · width]
        keep = np.argpartition(-np.abs(block_vals), n - 1)[:n] if block_vals.size > n else np.arange(block_vals.size)
        r, c = np.divmod(keep, width)
        rows, cols = np.concatenate([rows, ia[start + r]]), np.concatenate([cols, ib[c]])
        vals = np.concatenate([vals, block_vals[keep]])
        order = np.lexsort((cols, rows, -np.abs(vals)))[:n]  # largest |value| first, ties by (i, j)
        rows, cols, vals = rows[order], cols[order], vals[order]
    return rows, cols, vals


# ---- the entry point the trace calls -------------------------------------------------------------------
def top_source_positions(by_source: np.ndarray, n: int) -> np.ndarray:
    """The n sources with the largest context part, as the trace lists a head's sources."""
    return np.argsort(-by_source, kind="stable")[:n]


def check_model(model: Model) -> None:
    """The split is written for GPT-2 (learned positions, q and k read straight off the residual): a MinitfError
    for GPT-NeoX, whose rotary embedding turns q and k by position after the reads (see the module docstring)."""
    if model.cfg.arch != "gpt2":
        raise MinitfError(f"`why` on a {model.cfg.arch} model: the score split is GPT-2's only (rotary q and k are "
                          "not split yet)", param="why")


def why_for_heads(model: Model, run: Run, neuron: Neuron, heads: Sequence[Head], prompt_index: int,
                  top_sources: int = 3, top_pairs: int = 5, split_mlp: bool = False) -> list[HeadWhy]:
    """For each head, at prompt ``prompt_index``'s last position t: why it looked at its top sources (the
    score split into pairs) and what it carried from each (its context part split over components).
    ``run``: the trace's run of the prompts up to the neuron's layer, recording NEEDED. ``top_pairs`` bounds
    every list (pairs, marginals, carried components)."""
    check_model(model)
    b = prompt_index
    n = int(run.lengths[b])
    t = n - 1
    w_tilde, _ = read_direction(model, neuron)  # [D]
    sigma2 = run["ln2_scale", neuron.layer][b, t]
    scale = np.float32(1 / math.sqrt(model.cfg.d_head))

    def one(head: Head) -> HeadWhy:
        k, h = head
        by_source = head_sources(model, run, neuron, head)[0][b, :n]  # [n]  context part from each source
        sources = top_source_positions(by_source, top_sources)  # [S]
        p = run["pattern", k][b, h, t, :n]  # [n]
        slots = np.zeros((2 + len(sources), n), np.float32)  # [2 + S, n]: t, the pattern, each source
        slots[0, t], slots[1], slots[2 + np.arange(len(sources)), sources] = 1, p, 1
        need = np.zeros((len(slots), 3), bool)  # [2 + S, 3]: q at t, k at the expectation and the sources, v there
        need[0, 0], need[1:, 1], need[2:, 2] = True, True, True
        reads = head_reads(model, run, head, b, slots, split_mlp, need)
        names, qkv = reads.names, reads.qkv  # [C], [C + 1, 2 + S, 3, Dh]
        query_names = names + ["bias_q"]
        Q = qkv[:, 0, 0]  # [C + 1, Dh]  Q_c(t), bias_q last
        q = Q.sum(0)  # [Dh]
        K_mean = qkv[:-1, 1, 1]  # [C, Dh]  Σ_s' p[t, s'] K_c(s')
        u = model.W_O[k][h] @ w_tilde  # [Dh]
        scores = run["k", k][b, :n, h] @ run["q", k][b, t, h] * scale  # [n]  the forward pass's S(t, s)
        centred = scores - p @ scores  # [n]  S̃(t, s)
        listed = []
        for i, s in enumerate(sources):
            K = qkv[:-1, 2 + i, 1]  # [C, Dh]  K_c(s), bias_k apart
            K_c = K - K_mean  # [C, Dh]  K̃_c(s)
            key, key_c = K.sum(0) + qkv[-1, 2 + i, 1], K_c.sum(0)  # [Dh], [Dh]  k_s, k̃_s
            qi, ki, pair_c = top_products(Q, K_c, top_pairs)
            pairs = [Pair(query_names[x], names[y], float(Q[x] @ K[y] * scale), float(v * scale))
                     for x, y, v in zip(qi, ki, pair_c)]
            carried = p[s] * (qkv[:-1, 2 + i, 2] @ u) / sigma2  # [C]
            listed.append(SourceWhy(
                position=int(s), attention=float(p[s]), score=float(scores[s]), centred=float(centred[s]),
                error=float(abs(q @ key * scale - scores[s])), pairs=pairs,
                query_side=_top_shares(query_names, Q @ key * scale, Q @ key_c * scale, top_pairs),
                key_side=_top_shares(names, K @ q * scale, K_c @ q * scale, top_pairs),
                context=float(by_source[s]),
                carried=[Carried(names[c], float(carried[c])) for c in _top(carried, top_pairs)],
                carried_error=float(abs(carried.sum() - by_source[s]))))
        key_bias = q @ qkv[-1, 1, 1] * scale  # bias_k read at the expectation slot: × Σ_s p = 1
        return HeadWhy(str(head), t, float(run["ln1_scale", k][b, t]), float(key_bias),
                       len(names), listed)

    heads = [Head(*head) for head in heads]
    out: list[HeadWhy | None] = [None] * len(heads)
    if not heads:
        return []
    with pool() as threads:  # the heads share the pool's threads, each running its small products on one BLAS thread
        shares = split(len(heads), threads)

        def share(i):
            for x in range(*shares[i]):
                out[x] = one(heads[x])

        run_on_threads(share, len(shares), blas_one=True)
    return out


def _top(values: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-np.abs(values), kind="stable")[:n]


def _top_shares(names: list[str], score: np.ndarray, centred: np.ndarray, n: int) -> list[Share]:
    return [Share(names[c], float(score[c]), float(centred[c])) for c in _top(centred, n)]
