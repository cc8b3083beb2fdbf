"""GPT-NeoX (Pythia-160m's shape): minitf's forward pass against transformers', and the load's peak memory.

    python bench/neox.py [--batch 4 --tokens 256 --reps 5 --threads 2]

A random Pythia-160m-shaped model (12 layers × 12 heads of 64, d_mlp 3072, vocabulary 50304, rotary on a quarter
of each head, parallel residual, untied embed_out), saved as float16 like the Hub's file. Forward: [batch, tokens]
random ids, logits at every position, the best of ``reps`` timed runs after a warm-up, float32 on ``threads``
threads in both (torch.set_num_threads; OpenBLAS for NumPy); transformers runs its default (sdpa) attention in
inference mode. Load: a fresh interpreter (``bench/load_child.py minitf``) loads the folder; peak RSS above its
baseline / the float32 parameter bytes. Prints a Markdown section for bench/RESULTS.md. Targets: forward ≤ 1.2×
transformers' time, load peak ≤ 1.3× the parameter bytes.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/kernels.py would shadow `kernels`
_spec = importlib.util.spec_from_file_location("bench_common", HERE / "common.py")
common = importlib.util.module_from_spec(_spec)
sys.modules["bench_common"] = common
_spec.loader.exec_module(common)  # puts the repo and tests/ on sys.path

PYTHIA_160M = dict(n_layer=12, n_head=12, d_head=64, d_vocab=50304, n_ctx=2048, d_mlp=3072, rotary_pct=0.25,
                   parallel=True)


def machine() -> str:
    m = common.machine_description()
    return (f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, load average before "
            f"{', '.join(f'{x:.1f}' for x in m['load_before'])} ({len(m['busy_before'])} other busy processes); "
            f"numpy {m['versions']['numpy']}, torch {m['versions']['torch']}, transformers {m['versions']['transformers']}.")


def best(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from reference_neox import random_neox, save_neox

    from minitf.kernels import set_blas_threads
    from minitf.model import Model

    torch.set_num_threads(args.threads)
    set_blas_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pythia-160m-shaped"
        hf = random_neox(**PYTHIA_160M, seed=7)
        save_neox(hf, folder, torch.float16)  # hf now holds the float16-rounded weights in float32
        load = common.run_json([sys.executable, "bench/load_child.py", "minitf", str(folder)])
        model = Model.load(folder)
        tokens = np.random.default_rng(0).integers(0, PYTHIA_160M["d_vocab"], (args.batch, args.tokens))
        ids = torch.as_tensor(tokens)
        with torch.inference_mode():
            want = hf(ids).logits.numpy()
            t_hf = best(lambda: hf(ids), args.reps)
        got = model.run(tokens).logits
        t_ours = best(lambda: model.run(tokens), args.reps)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    grown = (load["load_peak_rss"] - load["baseline_rss"]) / load["param_bytes"]
    print(f"## GPT-NeoX forward and load (Pythia-160m's shape, `bench/neox.py`)\n\n"
          f"{machine()}\n\n"
          f"Random Pythia-160m-shaped model (12 × 12 heads of 64, d_mlp 3072, V 50304, rotary ¼, parallel residual), "
          f"float16 file. Forward [{args.batch}, {args.tokens}], all logits, best of {args.reps}, "
          f"{args.threads} threads each.\n\n"
          f"| forward | seconds |\n|---|---:|\n| transformers (sdpa, inference_mode) | {t_hf:.3f} |\n"
          f"| minitf | {t_ours:.3f} |\n| **ratio minitf / transformers** | **{t_ours / t_hf:.2f}×** (target ≤ 1.2×) |\n\n"
          f"max |Δ logits| / max |logits| = {err:.1e}\n\n"
          f"Load (fresh interpreter): {load['seconds']:.2f} s; peak RSS − baseline = "
          f"{(load['load_peak_rss'] - load['baseline_rss']) / 2**20:.0f} MiB for "
          f"{load['param_bytes'] / 2**20:.0f} MiB of float32 parameters: **{grown:.2f}×** (target ≤ 1.3×)")


if __name__ == "__main__":
    main()
