"""minitf.util.lock: one process at a time in a folder, released on any exit (kill -9 included)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minitf.errors import MinitfError
from minitf.util.lock import LOCK_NAME, folder_lock

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from minitf.util.lock import folder_lock\n"
        "with folder_lock(sys.argv[1], 'index folder'):\n"
        "    print('locked', flush=True); time.sleep(60)\n")


def _holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_is_refused_naming_the_first_pid_then_admitted_after_kill_9(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(MinitfError, match=rf"in use by another minitf process \(pid {p.pid}\)"):
            with folder_lock(tmp_path, "index folder"):
                pass
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    with folder_lock(tmp_path, "index folder") as path:  # the kernel released the dead holder's lock
        assert path.read_text().strip() == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()


def test_released_on_an_exception_and_reentrant_after(tmp_path):
    with pytest.raises(ValueError):
        with folder_lock(tmp_path):
            raise ValueError("boom")
    with folder_lock(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_created_is_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MinitfError, match="cannot create the study folder"):
        with folder_lock(tmp_path / "file" / "sub", "study folder"):
            pass


def test_many_processes_never_hold_it_at_once(tmp_path):
    """Eight processes race for the lock 20 times each; a shared counter file shows no overlap."""
    code = ("import sys, os, time; from minitf.util.lock import folder_lock; from minitf.errors import MinitfError\n"
            "got = 0\n"
            "while got < 20:\n"
            "    try:\n"
            "        with folder_lock(sys.argv[1]):\n"
            "            f = os.path.join(sys.argv[1], 'inside')\n"
            "            assert not os.path.exists(f), 'two holders'\n"
            "            open(f, 'w').close(); time.sleep(0.001); os.remove(f); got += 1\n"
            "    except MinitfError:\n"
            "        time.sleep(0.0005)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    deadline = time.monotonic() + 60
    for p in procs:
        p.wait(timeout=max(1, deadline - time.monotonic()))
        assert p.returncode == 0, p.stderr.read()
