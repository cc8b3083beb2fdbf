"""Measure one load in a fresh interpreter: ``python bench/load_child.py {minitf,transformers} FOLDER``.

Prints one JSON line: load seconds, the baseline RSS (interpreter + the library imported, before loading),
the peak RSS right after the load and after a first 8-token forward (VmHWM, as ``ru_maxrss`` would be if the
parent's RSS did not carry over into it at exec; transformers maps the
file and reads the weights only when they are first used), and the bytes of float32 parameters loaded.
"""
import json
import resource
import sys
import time
from pathlib import Path


def hwm() -> int:
    """This process's peak resident set size in bytes: VmHWM from /proc (``ru_maxrss`` also counts the RSS of
    the process that spawned us, which Linux carries over at exec), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now() -> int:
    """Current resident set size in bytes (Linux /proc; falls back to ru_maxrss)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    which, folder = sys.argv[1], Path(sys.argv[2])
    import numpy as np  # noqa: F401  (the baseline includes NumPy)

    if which == "minitf":
        from minitf.model import Model

        baseline, base_peak = rss_now(), hwm()
        start = time.perf_counter()
        model = Model.load(folder)
        seconds = time.perf_counter() - start
        param_bytes = sum(a.nbytes for a in model.w.values())
        load_peak = hwm()
        model.run([list(range(8))])  # a first forward (8 tokens)
    elif which == "transformers":
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging

        logging.disable_progress_bar()
        torch.set_num_threads(2)
        baseline, base_peak = rss_now(), hwm()
        start = time.perf_counter()
        model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
        seconds = time.perf_counter() - start
        seen = set()
        param_bytes = 0
        for p in model.parameters():  # tied wte / lm_head counted once
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                param_bytes += p.numel() * p.element_size()
        load_peak = hwm()  # weights mmapped: not yet read
        with torch.inference_mode():
            model(torch.arange(8)[None])  # a first forward (8 tokens) reads every weight
    else:
        raise SystemExit(f"unknown loader {which!r}")
    peak = hwm()
    print(json.dumps({"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "loader": which, "seconds": seconds, "baseline_rss": baseline, "baseline_peak": base_peak,
                      "load_peak_rss": load_peak, "peak_rss": peak, "end_rss": rss_now(), "param_bytes": param_bytes}))


if __name__ == "__main__":
    main()
