"""How long the whole `study` of the embedded model takes, and where the time goes.

    python bench/study.py [--per-layer 10] [--n-prompts 20] [--peer 6]

Runs what `python cli.py study --per-layer 10 --out DIR` runs (all 6 layers × 10 neurons, 20 prompts each,
no LLM) in this process under cProfile, from loading the model to the finished site, into a fresh temporary
folder, and prints the wall time (target: ≤ 60 s on 2 cores) and the cumulative time of each step. Then, as
the peer, the way a user does it without `study`: one `cli.py trace --json` process per neuron (each loads
the model and the index and reads the corpus for its documents), for ``--peer`` of the same neurons; the
ratio compares the time per neuron of both, measured in this one run.
"""
import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minitf  # noqa: E402
from minitf.study.run import StudyOptions, run_study  # noqa: E402

# (label, file suffix, function name): cumulative time of these functions in the profile
STEPS = [
    ("choose neurons (congruence tables)", "minitf/study/select.py", "study_selection"),
    ("load the index", "minitf/study/run.py", "ensure_index"),
    ("read the neurons' documents (one pass)", "minitf/corpus.py", "tokenized_documents"),
    ("mine + trim prompts", "minitf/prompts.py", "mine_prompts"),
    ("trace (effects, heads, ablation)", "minitf/trace.py", "trace"),
    ("  of which ablation (differential heads)", "minitf/ablation.py", "ablate_heads"),
    ("  of which each head's source split", "minitf/attribution.py", "head_sources"),
    ("  of which per-position effects (site)", "minitf/trace.py", "_per_position"),
    ("activation histogram from the index", "minitf/index/histogram.py", "index_histogram"),
    ("write neuron records", "minitf/study/folder.py", "save_record"),
    ("aggregates", "minitf/study/summary.py", "aggregates"),
    ("site (index.html + neuron pages)", "minitf/study/site.py", "write_site"),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    return sum(ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()
               if file.endswith(suffix) and func == name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-layer", type=int, default=10)
    ap.add_argument("--n-prompts", type=int, default=20)
    ap.add_argument("--peer", type=int, default=6, help="neurons traced one CLI process each (0: skip)")
    args = ap.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)  # no LLM: steps 1–3 and 5

    with tempfile.TemporaryDirectory() as tmp:
        profile = cProfile.Profile()
        t0, cpu0 = time.perf_counter(), os.times()
        profile.enable()
        model = minitf.load("tiny")
        study = run_study(model, Path(tmp) / "study", StudyOptions(per_layer=args.per_layer,
                                                                    n_prompts=args.n_prompts),
                          progress=False, say=lambda line: None)
        profile.disable()
        wall = time.perf_counter() - t0
        cpu = sum(os.times()[:2]) - sum(cpu0[:2])
        stats = pstats.Stats(profile)
        n = len(study["neurons"])
        print(f"study of weights/tiny: {n} neurons ({args.per_layer} per layer × 6 layers), {args.n_prompts} "
              f"prompts each, no LLM: {wall:.1f} s wall ({wall / n:.2f} s per neuron; target ≤ 60 s), {cpu:.1f} s CPU  "
              f"[{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes slow this down); "
              "under cProfile]")
        for label, suffix, name in STEPS:
            t = cumulative(stats, suffix, name)
            print(f"  {label:<44} {t:7.2f} s  {100 * t / wall:5.1f} %")

        if args.peer:
            names = [e["neuron"] for e in study["neurons"] if "n_prompts" in e]
            picked = names[max(1, len(names) // args.peer) // 2:: max(1, len(names) // args.peer)][: args.peer]
            t1 = time.perf_counter()
            for name in picked:
                subprocess.run([sys.executable, str(ROOT / "cli.py"), "trace", "--neuron", name, "--n-prompts",
                                str(args.n_prompts), "--ablate", "0", "--json"], check=True, cwd=ROOT,
                               capture_output=True)
            peer = (time.perf_counter() - t1) / len(picked)
            print(f"peer: one `cli.py trace --json` process per neuron ({', '.join(picked)}): {peer:.2f} s per "
                  f"neuron → {peer * n:.0f} s for the {n}; study / peer time per neuron: {wall / n / peer:.2f}×")


if __name__ == "__main__":
    main()
