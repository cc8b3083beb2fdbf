"""What ``why`` (the score split of each listed head, and its sources' carried split) costs next to ``trace``.

    python bench/why.py [--neuron L10N1234] [--prompts 20] [--tokens 64] [--reps 3]

GPT-2 small's shape with random weights (tests/numpy_models.py; no torch). ``trace`` runs the prompts (forward
to the neuron's layer, every head's direct effect, source split, ablation of the top heads); ``why`` splits,
for each prompt's 5 listed heads, the score at their 3 top sources (top 5 pairs, marginals, carried split),
from a run that also recorded what it needs (LN₁'s σ, q and k — free in the forward pass, timed apart).
Target (issue 22): why ≤ 30 % of trace. Prints min and median seconds and the ratio.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from minitf import why  # noqa: E402
from minitf.attribution import NEEDED  # noqa: E402
from minitf.names import parse_head, parse_neuron  # noqa: E402
from minitf.prompts import Prompt  # noqa: E402
from minitf.trace import TraceOptions, trace  # noqa: E402
from numpy_models import random_model  # noqa: E402
from reference_paths import TOKENIZER_DIR  # noqa: E402


def timed(fn, reps):
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times), statistics.median(times)


def _relative_error(model, run, head, b):
    """max over the keys s of |Σ pairs − score| / Σ |pairs|, every pair formed (the tests' bound: 1e-5)."""
    n = int(run.lengths[b])
    qkv = why.head_reads(model, run, head, b, np.eye(n, dtype=np.float32)).qkv  # [C+1, n, 3, Dh]
    pairs = np.einsum("cd,esd->ces", qkv[:, n - 1, 0].astype(np.float64), qkv[:, :, 1])  # [C+1, C+1, n]
    score = run["k", head.layer][b, :n, head.head] @ run["q", head.layer][b, n - 1, head.head]  # [n]
    return float((np.abs(pairs.sum((0, 1)) - score) / np.abs(pairs).sum((0, 1))).max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--neuron", default="L10N1234")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = random_model(seed=3, n_layer=12, n_head=12, d_head=64, d_vocab=50257, n_ctx=1024, d_mlp=3072)
    model.folder = TOKENIZER_DIR  # the trace shows its tokens: the tests' small GPT-2 BPE (457 ids)
    print(f"random GPT-2-small-shaped model built in {time.perf_counter() - t0:.1f} s")
    neuron = parse_neuron(args.neuron)
    rng = np.random.default_rng(0)
    bos = model.bos
    tokens = [[bos] + rng.integers(0, bos, args.tokens - 1).tolist() for _ in range(args.prompts)]
    prompts = [Prompt(t) for t in tokens]
    card = {"token": {"id": 11}}  # what trace needs of the neuron's card: the token it promotes

    result = trace(model, neuron, prompts, TraceOptions(), card=card)  # warm-up; its listed heads are why's
    _, tr_min, tr_med = timed(lambda: trace(model, neuron, prompts, TraceOptions(), card=card), args.reps)
    heads = [[parse_head(h["head"]) for h in p["top_heads"]] for p in result["prompts"]]

    trace_keep = NEEDED | {"resid_pre"}
    _, run_min, _ = timed(lambda: model.run(tokens, keep=trace_keep, stop_at_layer=neuron.layer), args.reps)
    run, run_why_min, _ = timed(lambda: model.run(tokens, keep=trace_keep | why.NEEDED, stop_at_layer=neuron.layer),
                                args.reps)

    def all_prompts():
        return [why.why_for_heads(model, run, neuron, heads[i], i, top_sources=3, top_pairs=5)
                for i in range(len(prompts))]

    records, why_min, why_med = timed(all_prompts, args.reps)
    worst = max(s.error for r in records for h in r for s in h.sources)
    relative = max(_relative_error(model, run, head, 0) for head in heads[0])
    _, split_min, _ = timed(lambda: why.why_for_heads(model, run, neuron, heads[0], 0, 3, 5, split_mlp=True), 1)

    n_heads = sum(map(len, heads))
    distinct = len({h for hs in heads for h in hs})
    print(f"{neuron}, {len(prompts)} prompts × {args.tokens} tokens, {n_heads} listed heads ({distinct} distinct)")
    print(f"  trace: min {tr_min:.3f} s, median {tr_med:.3f} s")
    print(f"  why (5 heads × 3 sources per prompt): min {why_min:.3f} s, median {why_med:.3f} s")
    print(f"  ratio why / trace: {why_min / tr_min:.1%} (min), {why_med / tr_med:.1%} (median); target ≤ 30 %")
    print(f"  the run recording LN₁'s σ, q, k too: {run_why_min:.3f} s vs {run_min:.3f} s (min)")
    print(f"  max |Σ pairs − score|: {worst:.1e}; over Σ |pairs| (prompt 1's heads, every key): {relative:.1e}")
    print(f"  one prompt with the MLPs split into neurons (split_mlp): {split_min:.3f} s")


if __name__ == "__main__":
    main()
