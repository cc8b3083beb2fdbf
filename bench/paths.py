"""How long a head's effect by path (``minitf.paths.head_paths``) takes, against today's ablation of the same heads
(``minitf.ablation.ablate_heads``), on GPT-2 small's shape.

    python bench/paths.py [--reps 3] [--prompts 20] [--tokens 64]

Random weights of GPT-2 small's shape (built in NumPy, ``tests/numpy_models.random_model``), 20 prompts × 64
random tokens, neuron L10N1234, three heads — late ones (L8H1, L9H5, L10H7) and early ones (L2H0, L5H3, L8H1):
the paths via MLP j and via the heads of layer j each rerun layers j … 10, so their cost grows with the distance
from head to neuron. Both are given the trace's own run (``keep=NEEDED | {"resid_pre"}``, stopped at layer 10),
which is made once and not timed. Prints min and median seconds and the ratios paths / ablation.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from minitf.ablation import ablate_heads  # noqa: E402
from minitf.attribution import NEEDED  # noqa: E402
from minitf.names import Head, Neuron  # noqa: E402
from minitf.paths import head_paths  # noqa: E402
from numpy_models import random_model  # noqa: E402

SMALL = dict(n_layer=12, n_head=12, d_head=64, d_vocab=50257, n_ctx=1024, d_mlp=3072)
HEAD_SETS = {"late": [Head(8, 1), Head(9, 5), Head(10, 7)], "early": [Head(2, 0), Head(5, 3), Head(8, 1)]}


def timed(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    t = time.perf_counter()
    model = random_model(seed=3, **SMALL)
    print(f"GPT-2-small-shaped random model built in {time.perf_counter() - t:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, SMALL["d_vocab"], (args.prompts, args.tokens)).tolist()
    neuron, token = Neuron(10, 1234), 42
    run = model.run(prompts, keep=NEEDED | {"resid_pre"}, stop_at_layer=neuron.layer)  # the trace's run
    for name, heads in HEAD_SETS.items():
        rows = {
            "ablate_heads (today: each head removed everywhere)":
                lambda: ablate_heads(model, prompts, neuron, token, heads, run=run),
            "head_paths (direct, via MLPs, via heads, total, joint)":
                lambda: head_paths(model, run, neuron, token, heads),
            "head_paths, via_heads=False":
                lambda: head_paths(model, run, neuron, token, heads, via_heads=False),
            "head_paths, via_heads=False, joint=False":
                lambda: head_paths(model, run, neuron, token, heads, via_heads=False, joint=False),
        }
        print(f"\n{name} heads {', '.join(map(str, heads))} → {neuron}, {args.prompts}×{args.tokens}, "
              f"best / median of {args.reps}:")
        base = None
        for label, fn in rows.items():
            lo, med = timed(fn, args.reps)
            base = base or (lo, med)
            print(f"  {label:58s} {lo:7.2f} s / {med:7.2f} s   ×{lo / base[0]:5.1f} / ×{med / base[1]:5.1f}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
