"""Guard rails for processes, locks and index folders, each through the CLI in a subprocess: the index workers die
with a ``kill -9``-ed parent (``index`` and ``study``), a second process is refused the folder of a first one
(one line naming its pid), and a study that needs a bigger index than the one next to the corpus builds it in
minitf's cache, leaving the model folder byte-identical."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "weights" / "tiny"
HANG = """
import os, time
import minitf.index.workers as W
_index_shard = W.index_shard
def _hang(*args):  # a worker's shard that takes long: the parent is killed meanwhile
    time.sleep(float(os.environ.get("HANG_S", "0")))
    return _index_shard(*args)
W.index_shard = _hang
"""


def env_for(tmp: Path, **extra) -> dict:
    (tmp / "site").mkdir(exist_ok=True)
    (tmp / "site" / "sitecustomize.py").write_text(HANG)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp / "site"), str(ROOT)]),
                MINITF_CACHE_DIR=str(tmp / "cache"), **extra)


def cli(*args: str, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, **kw)


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet reaped, is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def one_line_error(p: subprocess.Popen, *fragments: str) -> None:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


INDEX = ["index", "--model", str(TINY), "--layer", "1", "--top-k", "4", "--workers", "2", "--no-progress"]
STUDY = ["study", "--model", str(TINY), "--layer", "1", "--per-layer", "1", "--n-prompts", "4", "--no-progress"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads children from /proc")
@pytest.mark.parametrize("command", ["index", "study"])
def test_kill_9_of_the_parent_leaves_no_worker_and_a_second_process_is_refused(tmp_path, command):
    env = env_for(tmp_path, HANG_S="120")
    index_dir, out = tmp_path / "idx", tmp_path / "study"
    args = [*(INDEX if command == "index" else [*STUDY, "--out", str(out)]), "--index-dir", str(index_dir)]
    first = cli(*args, env=env)
    try:
        wait_for(lambda: len(children(first.pid)) == 2)  # both workers started (each now on a hanging shard)
        workers = children(first.pid)
        held = index_dir if command == "index" else out
        second = cli(*args, env=env)
        one_line_error(second, str(held), f"pid {first.pid}", "in use")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        time.sleep(5)
        assert [pid for pid in workers if alive(pid)] == []
    finally:
        if first.poll() is None:
            first.kill()


def test_a_study_needing_more_than_the_shipped_index_builds_in_the_cache(tmp_path):
    model = tmp_path / "tiny"
    shutil.copytree(TINY, model, ignore=shutil.ignore_patterns("corpus.txt.gz*"))
    docs = [text for text in gzip.open(TINY / "corpus.txt.gz", "rt").read().split("\n\n") if text.strip()][:40]
    with gzip.open(model / "corpus.txt.gz", "wt") as f:
        f.write("\n\n".join(docs) + "\n")
    env = env_for(tmp_path)
    built = cli("index", "--model", str(model), "--layer", "1", "--workers", "1", "--no-progress", env=env)
    assert built.wait(timeout=120) == 0, built.communicate()
    shipped = model / "corpus.txt.gz.index" / "tiny.npz"
    assert shipped.is_file()

    def digests() -> dict:
        return {str(p.relative_to(model)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(model.rglob("*")) if p.is_file()}

    before = digests()
    args = ["study", "--model", str(model), "--layer", "1", "--per-layer", "1", "--n-prompts", "40", "--no-progress",
            "--out", str(tmp_path / "s")]
    out, err = cli(*args, env=env).communicate(timeout=300)
    assert "need more: building an index in" in err and str(tmp_path / "cache" / "index") in err, err
    assert digests() == before
    assert list((tmp_path / "cache" / "index").glob("corpus.txt.gz-*/tiny.npz"))


def test_a_top_k_that_would_not_fit_in_memory_is_refused_before_anything_is_allocated(tmp_path):
    from minitf import Model
    from minitf.errors import MinitfError
    from minitf.index.build import build_index

    # 2 states (one merged into the other) × 2 splits × 6 layers × 10⁶ × 1024 neurons × (4 + 8 + 4) B = 366.2 GiB
    with pytest.raises(MinitfError, match=r"`k` 1000000: an index of 6 layers × 1024 neurons × top 1000000 needs "
                                          r"366\.2 GiB of memory, over the limit of 4 GiB"):
        build_index(Model.load(TINY), TINY / "corpus.txt.gz", k=10**6, index_dir=tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx").exists()


def test_an_index_built_with_index_dir_is_the_one_read_with_index_dir(tmp_path, monkeypatch):
    """`index --index-dir D` writes D/tiny.npz; `load_index` finds it given D, or $MINITF_INDEX_DIR=D (what
    --index-dir sets on trace, report, explain, score and study), and not otherwise."""
    from minitf import Model
    from minitf.index.build import load_index, use_index_dir

    model = tmp_path / "tiny"
    shutil.copytree(TINY, model, ignore=shutil.ignore_patterns("corpus.txt.gz*"))
    docs = [text for text in gzip.open(TINY / "corpus.txt.gz", "rt").read().split("\n\n") if text.strip()][:20]
    with gzip.open(model / "corpus.txt.gz", "wt") as f:
        f.write("\n\n".join(docs) + "\n")
    d = tmp_path / "elsewhere"
    built = cli("index", "--model", str(model), "--layer", "2", "--top-k", "5", "--workers", "1", "--no-progress",
                "--index-dir", str(d), env=env_for(tmp_path))
    assert built.wait(timeout=120) == 0, built.communicate()
    m = Model.load(model)
    corpus = model / "corpus.txt.gz"
    assert load_index(m, corpus, d).k == 5 and (d / "tiny.npz").is_file()
    assert not (model / "corpus.txt.gz.index").exists()
    old = os.environ.get("MINITF_INDEX_DIR")
    try:
        use_index_dir(None, None, str(d))
        assert load_index(m, corpus).path == d / "tiny.npz"
        use_index_dir(None, None, None)
        monkeypatch.setenv("MINITF_CACHE_DIR", str(tmp_path / "cache"))
        assert load_index(m, corpus) is None
    finally:
        use_index_dir(None, None, old)
