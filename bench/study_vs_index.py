#!/usr/bin/env python3
"""A GPT-2-small-shaped `study` (no LLM) against indexing the same documents, timed in one run.

    python bench/study_vs_index.py [--docs 300] [--reps 3] [--cache DIR] [--profile]

The issue's target: a study of 3 layers × 5 neurons over 300 documents, with no LLM, under the default
protocol (neo2024: the authors' trimming), takes at most 1.5× the time of indexing the same documents.

Inputs (made once and kept in ``--cache``, default ``$TMPDIR/minitf-bench-study``):

* the model: a random GPT-2 small (transformers ``GPT2LMHeadModel``, GPT-2 small's shape: 12 layers, d_model
  768, 12 heads, d_mlp 3072, vocab 50257, n_ctx 1024; ``common.make_checkpoint``: weights ~ N(0, (1.5/√fan-in)²),
  LayerNorm γ ~ 1 ± 0.2), saved as safetensors in the Hub's layout, with GPT-2's real tokenizer (``shared/gpt2``);
* the corpus: ``--docs`` documents of English text, made from the paragraphs of ``weights/tiny/corpus.txt.gz``
  (the King James Bible) in file order, each document one or more paragraphs joined by blank lines up to a
  length drawn uniformly from 100–500 GPT-2 tokens (seed 0); a .jsonl file, so documents keep their newlines.

Each repetition times three CLI processes, one after the other, from exec to exit (model loading included
on both sides), each with its own empty minitf cache (``MINITF_CACHE_DIR``: the neuron tables are cold):

* index: ``cli.py index --model M --corpus C --layer 3-5 --index-dir I --no-progress`` (the index the study
  needs: the same layers and documents, top 30 per neuron, 2 workers, the defaults);
* study (index reused): ``cli.py study --model M --corpus C --layer 3-5 --per-layer 5 --out S --index-dir I
  --no-progress`` right after it, no ``--base-url`` and no OPENAI_API_KEY: choose the neurons, trim the prompts
  the authors' way, trace, ablate the differential heads, write the records and the site;
* study including its index build: the same study with an empty ``--index-dir``, so it builds the index first.

Ratios are over the index's time of the same repetition; the median over repetitions is the headline.
Random weights make neurons fire differently from GPT-2's (flatter activation profiles, few exact zeros),
so the trimmed prompts' lengths, and with them the bisection's work, differ from a real model's.

``--profile`` also runs the study once under cProfile in this process (index reused) and prints its
heaviest functions.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository and tests/ on sys.path)
from common import ROOT, _cpu_snap  # noqa: E402

LAYERS = "3-5"
PER_LAYER = 5
LENGTHS = (100, 500)  # GPT-2 tokens per document, uniform


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def gpt2_tokenizer_dir() -> Path:
    """GPT-2's real vocab.json / merges.txt: ``shared/gpt2`` beside the checkout or beside its parent (a worktree)."""
    for d in (common.SHARED_GPT2, ROOT.parent / "shared" / "gpt2", ROOT.parents[1] / "shared" / "gpt2"):
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            return d
    raise SystemExit("GPT-2's tokenizer (shared/gpt2/vocab.json, merges.txt) not found beside the checkout")


def model_folder(cache: Path) -> Path:
    folder = cache / "gpt2-small-random"
    if not (folder / "model.safetensors").is_file():
        log(f"writing a random GPT-2-small-shaped checkpoint to {folder} …")
        tmp = cache / "gpt2-small-random.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        here = Path(__file__).resolve().parent  # bench/kernels.py would shadow transformers' `kernels` package
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
        common.make_checkpoint(tmp)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(gpt2_tokenizer_dir() / name, tmp / name)
        tmp.rename(folder)
    return folder


def corpus_file(cache: Path, n_docs: int) -> Path:
    path = cache / f"corpus-{n_docs}.jsonl"
    if path.is_file():
        return path
    import numpy as np

    from minitf.load.tokenizer import load_tokenizer

    tok = load_tokenizer(gpt2_tokenizer_dir())
    text = gzip.open(ROOT / "weights" / "tiny" / "corpus.txt.gz", "rt", encoding="utf-8").read()
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    rng = np.random.default_rng(0)
    docs, i = [], 0
    while len(docs) < n_docs:
        want, parts, n = int(rng.integers(LENGTHS[0], LENGTHS[1] + 1)), [], 0
        while n < want:
            parts.append(paragraphs[i % len(paragraphs)])
            n += len(tok.encode(parts[-1])) + 1
            i += 1
        docs.append("\n\n".join(parts))
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    tmp.rename(path)
    return path


def run_cli(args: list[str], cache_dir: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU % other processes used meanwhile (100 = one core), stdout) of ``python cli.py ARGS``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MINITF_INDEX_DIR")}
    env |= {"MINITF_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
    b0, m0 = _cpu_snap()
    t = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t
    b1, m1 = _cpu_snap()
    if out.returncode:
        raise SystemExit(f"cli.py {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, max(0.0, (b1 - b0) - (m1 - m0)) / wall * 100, out.stdout


def profile_study(model_dir: Path, corpus: Path, index_dir: Path, work: Path, top: int = 30) -> None:
    import cProfile
    import pstats

    import minitf
    from minitf.index.build import use_index_dir
    from minitf.names import parse_layers
    from minitf.study.run import StudyOptions, run_study

    os.environ.pop("OPENAI_API_KEY", None)
    os.environ.pop("OPENAI_BASE_URL", None)
    os.environ["MINITF_CACHE_DIR"] = str(work / "cache-profile")
    use_index_dir(None, None, str(index_dir))
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    model = minitf.load(str(model_dir))
    run_study(model, work / "study-profile", StudyOptions(layers=parse_layers(LAYERS), per_layer=PER_LAYER,
                                                          corpus=str(corpus)), progress=False, say=lambda line: None)
    prof.disable()
    print(f"\nstudy under cProfile (index reused): {time.perf_counter() - t:.1f} s; heaviest by cumulative time:")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--reps", type=int, default=2, help="repetitions (each ≈ 4.5 min on 2 quiet cores)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "minitf-bench-study",
                    help="where the model and the corpus are made once and kept")
    ap.add_argument("--no-build-study", action="store_true", help="skip the study that builds its own index")
    ap.add_argument("--profile", action="store_true", help="also profile one study in this process")
    args = ap.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = model_folder(args.cache)
    corpus = corpus_file(args.cache, args.docs)
    log(f"inputs ready in {time.perf_counter() - t0:.1f} s")
    n_tokens = None
    rows = []
    with tempfile.TemporaryDirectory(prefix="minitf-bench-study-") as tmp:
        work = Path(tmp)
        for rep in range(args.reps):
            d = work / f"rep{rep}"
            base = ["--model", str(model_dir), "--corpus", str(corpus), "--layer", LAYERS]
            index_s, index_o, index_out = run_cli(["index", *base, "--index-dir", str(d / "index"), "--no-progress",
                                                   "--json"], d / "cache-index")
            study_args = ["study", *base, "--per-layer", str(PER_LAYER), "--no-progress", "--json"]
            study_s, study_o, _ = run_cli([*study_args, "--out", str(d / "study"), "--index-dir", str(d / "index")],
                                          d / "cache-study")
            row = {"index": index_s, "study": study_s, "others": [index_o, study_o]}
            if not args.no_build_study:
                built_s, built_o, _ = run_cli([*study_args, "--out", str(d / "study-built"), "--index-dir",
                                               str(d / "index-study")], d / "cache-study-built")
                row["study_built"] = built_s
                row["others"].append(built_o)
            rows.append(row)
            study_json = json.loads((d / "study" / "study.json").read_text())
            n_tokens = sum(json.loads(index_out)["manifest"]["tokens"].values())
            built = (f", study building its index {built_s:.1f} s = {built_s / index_s:.2f}×"
                     if "study_built" in row else "")
            log(f"rep {rep + 1}: index {index_s:.1f} s, study (index reused) {study_s:.1f} s = "
                f"{study_s / index_s:.2f}×{built}; others used {max(row['others']):.0f} % CPU at most")
            shutil.rmtree(d, ignore_errors=True)

    def med(key):
        return statistics.median(r[key] for r in rows)

    def times(key):
        return ", ".join(f"{r[key]:.1f}" for r in rows)

    def med_ratio(key):
        return statistics.median(r[key] / r["index"] for r in rows)

    neurons = study_json["settings"]["neurons"]
    traced = sum(1 for e in study_json["neurons"] if "n_prompts" in e)
    print(f"model: random GPT-2 small (12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257), {model_dir}")
    print(f"corpus: {args.docs} documents, {n_tokens:,} tokens with BOS ({corpus}; paragraphs of "
          f"weights/tiny/corpus.txt.gz, {LENGTHS[0]}–{LENGTHS[1]} tokens each)")
    print(f"machine: {common.cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
          f"{args.reps} repetitions, each index → study (index reused) → study (building its index)")
    print(f"study: layers {LAYERS} × {PER_LAYER} neurons ({len(neurons)}: {', '.join(neurons)}; {traced} traced), "
          f"protocol {study_json['settings'].get('protocol')}, no LLM")
    print(f"  index (cli.py index --layer {LAYERS}, 2 workers):  median {med('index'):6.1f} s   "
          f"[{times('index')}]")
    print(f"  study alone (index reused):              median {med('study'):6.1f} s   "
          f"[{times('study')}]   study / index: median {med_ratio('study'):.2f}× "
          f"(target ≤ 1.5×: {'met' if med_ratio('study') <= 1.5 else 'missed'})")
    if not args.no_build_study:
        print(f"  study including its index build:         median {med('study_built'):6.1f} s   "
              f"[{times('study_built')}]   (study + its index) / index: median "
              f"{med_ratio('study_built'):.2f}×")
    print(f"  other processes used up to {max(max(r['others']) for r in rows):.0f} % CPU (100 = one core) "
          "during a measurement")
    print("  random weights: neurons fire unlike GPT-2's, so the prompts' lengths and the trimming's work differ "
          "from a real model's")
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="minitf-bench-study-") as tmp:
            work = Path(tmp)
            run_cli(["index", "--model", str(model_dir), "--corpus", str(corpus), "--layer", LAYERS, "--index-dir",
                     str(work / "index"), "--no-progress"], work / "cache-index")
            profile_study(model_dir, corpus, work / "index", work)


if __name__ == "__main__":
    main()
