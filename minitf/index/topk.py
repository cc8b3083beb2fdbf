"""The running statistics of a neuron index and the one top-k merge every part of the index uses.

Per split (0 train, 1 test) and indexed layer, for each of M neurons: the top-k (activation, doc_id,
position) triples, the count of positive positions and a histogram over ``HIST_EDGES``. Top-k lists are
kept in one total order,

    (activation descending, doc_id ascending, position ascending),

so the top-k of a union does not depend on how the union was cut up or in which order the parts were
merged (ties included): a build with any number of workers, local or on Ray, merges to the same bytes.
Counts are integer sums, also order-free.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIST_EDGES = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0], np.float32)  # bins: (−∞,0] (0,½] … (8,∞)


def merge_topk(act: np.ndarray, doc: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k first rows of [N, C] candidates (along axis 0) in the total order (act desc, doc, pos).

    act [N, C] float32, doc [N, C] int64, pos [N, C] int32 (or 1-D [N]) → three [k, C] arrays (k ≤ N).
    """
    order = np.lexsort((pos, doc, -act), axis=0)[:k]  # [k, C]
    return tuple(np.take_along_axis(a, order, 0) for a in (act, doc, pos))


@dataclass
class TopkState:
    """Running statistics of a shard (or of the merged index); the leading axis is the split (train, test)."""

    top_act: np.ndarray  # [2, L, k, M] float32, in the total order along k (−inf where empty)
    top_doc: np.ndarray  # [2, L, k, M] int64 (−1 where empty)
    top_pos: np.ndarray  # [2, L, k, M] int32 (−1 where empty)
    positive: np.ndarray  # [2, L, M] int64
    hist: np.ndarray  # [2, L, nb, M] int64
    seen: np.ndarray  # [2] int64 positions counted (BOS excluded)
    docs: np.ndarray  # [2] int64 documents counted
    tokens: np.ndarray  # [2] int64 tokens run (BOS included)

    ARRAYS = ("top_act", "top_doc", "top_pos", "positive", "hist", "seen", "docs", "tokens")
    COUNTS = ("positive", "hist", "seen", "docs", "tokens")

    @classmethod
    def empty(cls, n_layers: int, k: int, d_mlp: int) -> "TopkState":
        shape = (2, n_layers, k, d_mlp)
        return cls(np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int64), np.full(shape, -1, np.int32),
                   np.zeros((2, n_layers, d_mlp), np.int64),
                   np.zeros((2, n_layers, len(HIST_EDGES) + 1, d_mlp), np.int64),
                   np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64))

    def arrays(self) -> dict:
        return {name: getattr(self, name) for name in self.ARRAYS}

    @classmethod
    def from_arrays(cls, data) -> "TopkState":
        return cls(**{name: np.asarray(data[name]) for name in cls.ARRAYS})

    def add_candidates(self, s: int, li: int, act: np.ndarray, doc: np.ndarray, pos: np.ndarray,
                       cols: np.ndarray) -> None:
        """Merge candidates [N, C] for the columns ``cols`` of split s, layer li into the top-k."""
        k = self.top_act.shape[2]
        stacked = [np.concatenate([getattr(self, name)[s, li][:, cols], new])  # [k + N, C] each
                   for name, new in (("top_act", act), ("top_doc", doc), ("top_pos", pos))]
        for name, merged in zip(("top_act", "top_doc", "top_pos"), merge_topk(*stacked, k)):
            getattr(self, name)[s, li][:, cols] = merged

    def merge(self, other: "TopkState") -> None:
        """Add ``other`` (a disjoint set of documents) into this state, in place."""
        for name in self.COUNTS:
            getattr(self, name)[...] += getattr(other, name)
        for s in range(2):
            if other.docs[s] == 0:
                continue
            for li in range(self.top_act.shape[1]):
                # only neurons where other's best (its first entry) reaches our k-th can change
                cols = np.flatnonzero(other.top_act[s, li, 0] >= self.top_act[s, li, -1])  # [C]
                if cols.size:
                    self.add_candidates(s, li, other.top_act[s, li][:, cols], other.top_doc[s, li][:, cols],
                                        other.top_pos[s, li][:, cols], cols)

