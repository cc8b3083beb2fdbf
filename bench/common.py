"""Shared pieces of the benchmarks: the GPT-2-small-shaped checkpoint, timing, FLOP counts, machine facts.

Everything here runs on CPU. ``tests/reference.py`` (which needs torch and transformers) builds the checkpoint.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from reference_paths import SHARED_GPT2  # noqa: E402  GPT-2's real vocab.json / merges.txt beside the checkout

# GPT-2 small's shape.
SMALL = dict(n_layer=12, n_head=12, d_head=64, d_vocab=50257, n_ctx=1024, d_mlp=3072)


def make_checkpoint(folder: Path, seed: int = 3) -> Path:
    """A random GPT-2-small-shaped model in the Hub's file layout (unprefixed keys, attn.bias buffers,
    data at an unaligned offset), float32, with GPT-2's tokenizer where shared/ has it — written once per
    benchmark run."""
    import torch
    from reference import random_gpt2, save

    model = random_gpt2(**SMALL, seed=seed, scale=0.5)
    tokenizer = SHARED_GPT2 if (SHARED_GPT2 / "vocab.json").is_file() else None  # for prompts, index, neurons
    save(model, Path(folder), "hub", torch.float32, tokenizer_dir=tokenizer)
    del model
    gc.collect()
    return Path(folder)


# ---- timing --------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Repeated wall-clock times of one workload, in seconds."""

    name: str
    times: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return float(np.median(self.times))


def settle(seconds: float = 0.3) -> None:
    """Let the other library's worker threads stop spinning (OpenBLAS and OpenMP busy-wait after a call)."""
    gc.collect()
    time.sleep(seconds)


def _cpu_snap() -> tuple[float, float]:
    """(seconds of CPU the whole machine has been busy, seconds of CPU this process and its reaped children used)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(parts) - parts[3] - parts[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return busy, sum(os.times()[:4])


CONTENTION = {"retried": 0, "max_others": 0.0}  # what the run saw of other processes while timing


def measure(name: str, fn, reps: int, warmup: int = 1, max_others: float = 25.0) -> Timing:
    """Run ``fn`` ``warmup`` times, then ``reps`` timed times (gc off while timing). A repetition during which
    other processes used more than ``max_others`` % CPU (100 = one core) is thrown away, and taken again once
    the machine is quiet."""
    for _ in range(warmup):
        fn()
    t = Timing(name)
    retries = 0
    while len(t.times) < reps:
        gc.collect()
        gc.disable()
        try:
            b0, m0 = _cpu_snap()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            b1, m1 = _cpu_snap()
        finally:
            gc.enable()
        others = max(0.0, (b1 - b0) - (m1 - m0)) / elapsed * 100
        if others > max_others and retries < 3 * reps:
            retries += 1
            CONTENTION["retried"] += 1
            CONTENTION["max_others"] = max(CONTENTION["max_others"], others)
            print(f"  {name}: others used {others:.0f} % CPU during a repetition; waiting and taking it again",
                  file=sys.stderr, flush=True)
            wait_idle(log=lambda *a: print(*a, file=sys.stderr, flush=True))
            fn()  # warm again after the pause
            continue
        t.times.append(elapsed)
    return t


def measure_pair(a: tuple[str, callable], b: tuple[str, callable], reps: int, rounds: int = 2) -> tuple[Timing, Timing]:
    """Time two workloads in alternating blocks (a, b, a, b, …) so slow drift of the machine hits both."""
    ta, tb = Timing(a[0]), Timing(b[0])
    per_round = [reps // rounds + (i < reps % rounds) for i in range(rounds)]
    for n in per_round:
        if n == 0:
            continue
        settle()
        ta.times += measure(a[0], a[1], n).times
        settle()
        tb.times += measure(b[0], b[1], n).times
    return ta, tb


# ---- FLOP counts (multiply-add = 2 FLOPs; GEMM and attention products only) -------------------------
def layer_gemm_flops(tokens: int, D: int, M: int) -> float:
    """QKV, attention output, MLP in and out projections of one layer at ``tokens`` positions."""
    return 2.0 * tokens * (D * 3 * D + D * D + 2 * D * M)


def attention_flops(B: int, T: int, D: int, queries: int | None = None) -> float:
    """q·k and pattern·v over the causal (needed) query/key pairs: Σ_t (t+1) keys per query."""
    pairs = T * (T + 1) / 2 if queries is None else sum(range(T - queries + 1, T + 1))
    return 2.0 * 2.0 * B * pairs * D


def forward_flops(B: int, T: int, cfg, logits_rows: int | None = None) -> float:
    """A full forward with logits at every position (or ``logits_rows`` rows)."""
    D, M, V, L = cfg.d_model, cfg.d_mlp, cfg.d_vocab, cfg.n_layer
    rows = B * T if logits_rows is None else logits_rows
    return L * (layer_gemm_flops(B * T, D, M) + attention_flops(B, T, D)) + 2.0 * rows * D * V


def trace_flops(B: int, T: int, cfg, layer: int) -> float:
    """What every head's direct effect on one neuron of ``layer`` at each prompt's last token needs:
    layers 0…layer−1 in full, then layer ``layer``'s K and V at every position but Q, attention, its output
    projection and the neuron's column only at the last position."""
    D = cfg.d_model
    full = layer * (layer_gemm_flops(B * T, D, cfg.d_mlp) + attention_flops(B, T, D))
    last = 2.0 * B * T * D * 2 * D + 2.0 * B * (D * D + D * D) + attention_flops(B, T, D, queries=1) + 2.0 * B * D
    return full + last


def index_flops(B: int, T: int, cfg) -> float:
    """Every layer's MLP activations: the full stack without the unembedding (the last MLP-out is skipped)."""
    D, M, L = cfg.d_model, cfg.d_mlp, cfg.n_layer
    return L * (layer_gemm_flops(B * T, D, M) + attention_flops(B, T, D)) - 2.0 * B * T * M * D


# ---- GEMM ceiling --------------------------------------------------------------------------------------
def gemm_rate(rows: int, k: int = 768, n: int = 3072, reps: int = 5) -> float:
    """NumPy float32 ``A @ B`` rate (FLOP/s, best of ``reps``) for A [rows, k], B [k, n], out= preallocated."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((rows, n), np.float32)
    inner = max(1, int(2e9 // (2 * rows * k * n)))  # ≈ 2 GFLOP per timed sample

    def go():
        for _ in range(inner):
            np.matmul(a, b, out=out)

    t = measure("gemm", go, reps)
    return 2.0 * rows * k * n * inner / t.min


def torch_gemm_rate(rows: int, k: int = 768, n: int = 3072, reps: int = 5) -> float:
    import torch

    a = torch.randn(rows, k)
    b = torch.randn(k, n)
    out = torch.empty(rows, n)
    inner = max(1, int(2e9 // (2 * rows * k * n)))

    def go():
        for _ in range(inner):
            torch.matmul(a, b, out=out)

    with torch.inference_mode():
        t = measure("gemm", go, reps)
    return 2.0 * rows * k * n * inner / t.min


# ---- the machine ---------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile"]
                return " ".join(f for f in keep if f in flags)
    except OSError:
        pass
    return ""


def numpy_blas() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')} ({blas.get('openblas configuration', '').strip()})"
    except Exception:  # older NumPy
        return "see np.show_config()"


def blas_runtime() -> str:
    """What NumPy's OpenBLAS says about itself at run time (its kernel for this CPU, its thread count)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1].lower()})
        for path in paths:
            lib = ctypes.CDLL(path)
            for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"), ("openblas_", "")):
                conf = getattr(lib, f"{prefix}get_config{suffix}", None)
                threads = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                if conf is not None and threads is not None:
                    conf.restype = ctypes.c_char_p
                    threads.restype = ctypes.c_int
                    return f"{conf().decode().strip()}, {threads()} threads"
    except OSError:
        pass
    return "unknown"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for pkg in ("torch", "transformers", "transformer_lens"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def busy_processes(threshold: float = 20.0) -> list[str]:
    """Other processes using more than ``threshold`` % CPU right now (psutil, sampled over 0.5 s)."""
    try:
        import psutil
    except ImportError:
        return []
    me = os.getpid()
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid != me]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    out = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct > threshold:
            cmd = " ".join(p.info.get("cmdline") or [p.info.get("name") or "?"])[:80]
            out.append(f"pid {p.pid} {pct:.0f}% {cmd}")
    return out


def others_cpu(window: float = 1.0) -> float:
    """CPU % (100 = one core) used by every other process over ``window`` seconds (/proc/stat minus ours)."""
    def snap():
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        busy = sum(parts) - parts[3] - parts[4]  # all but idle and iowait, in ticks
        return busy, sum(os.times()[:4])
    b0, m0 = snap()
    time.sleep(window)
    b1, m1 = snap()
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((b1 - b0) / hz - (m1 - m0)) / window * 100)


def wait_idle(limit: float = 600, threshold: float = 15.0, quiet_for: int = 3, log=print) -> float:
    """Wait (up to ``limit`` s) until other processes use under ``threshold`` % CPU for ``quiet_for`` seconds
    in a row; returns the seconds waited."""
    start, quiet, said = time.monotonic(), 0, False
    while time.monotonic() - start < limit:
        use = others_cpu()
        quiet = quiet + 1 if use < threshold else 0
        if quiet >= quiet_for:
            break
        if not said and time.monotonic() - start > 5:
            log(f"waiting for the machine to be idle (others use {use:.0f} % CPU) …")
            said = True
    return time.monotonic() - start


def machine_description() -> dict:
    import threading

    info = {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "numpy_blas": numpy_blas(),
        "blas_runtime": blas_runtime(),
        "blas_env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
                     if k in os.environ},
        "versions": versions(),
        "kernel": platform.release(),
        "load_before": load_average(),
        "busy_before": busy_processes(),
        "python_threads": threading.active_count(),
    }
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def run_json(cmd: list[str], timeout: float = 300) -> dict:
    """Run a helper script that prints one JSON object on its last line."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"})
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- RESULTS.md sections written by other scripts ------------------------------------------------------
TRACE_SECTION = "## The trace command as a whole"  # written by bench/trace_command.py, kept by bench/run.py


def section(text: str, heading: str) -> str | None:
    """The section of a markdown text that starts with ``heading`` (up to the next "## " heading), or None."""
    start = text.find("\n" + heading + "\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + 1)
    return text[start + 1:end + 1 if end >= 0 else len(text)]


def splice_section(text: str, part: str, before: str = "## Lines for the README") -> str:
    """``text`` with the section ``part`` (starting with its "## " heading) put in place of the old one, or
    before the heading ``before`` (at the end if absent)."""
    part = part.rstrip("\n") + "\n\n"
    old = section(text, part.split("\n", 1)[0])
    if old is not None:
        return text.replace(old, part)
    at = text.find("\n" + before + "\n")
    return text.rstrip("\n") + "\n\n" + part if at < 0 else text[:at + 1] + part + text[at + 1:]
