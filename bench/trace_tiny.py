"""How long `trace` takes on the embedded model once it is loaded (issue: "well under 2 s for 20 prompts").

    python bench/trace_tiny.py [--neuron L3N157] [--reps 5]

Prints min and median seconds of: mining the 20 top prompts (index lookup + trimming), and the trace itself
(forward to the neuron's layer, every head's direct effect, source split, ablation of the top heads).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minitf  # noqa: E402
from minitf.corpus import default_corpus  # noqa: E402
from minitf.prompts import mine_prompts  # noqa: E402
from minitf.prompts import Prompt  # noqa: E402
from minitf.trace import TraceOptions, trace  # noqa: E402


def timed(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times), statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--neuron", default="L3N157")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    t = time.perf_counter()
    model = minitf.load("tiny")
    load_s = time.perf_counter() - t
    neuron = minitf.parse_neuron(args.neuron)
    mined, mine_min, mine_med = timed(lambda: mine_prompts(model, neuron, default_corpus(model), k=20), args.reps)
    prompts = [Prompt(m.tokens) for m in mined]
    trace(model, neuron, prompts)  # warm the neuron card's per-layer cache
    _, tr_min, tr_med = timed(lambda: trace(model, neuron, prompts, TraceOptions()), args.reps)
    print(f"weights/tiny {neuron}: load {load_s:.2f} s")
    print(f"  mine + trim {len(prompts)} prompts: min {mine_min:.3f} s, median {mine_med:.3f} s")
    print(f"  trace {len(prompts)} prompts (with ablation of the top heads): min {tr_min:.3f} s, median {tr_med:.3f} s")


if __name__ == "__main__":
    main()
