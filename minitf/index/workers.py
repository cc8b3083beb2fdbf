"""Who runs an index's shards on this machine: the calling process (``workers=1``) or worker processes.

Each worker process is one of our own (``multiprocessing`` ``Process``, forked where fork exists, so a plain
script needs no ``if __name__ == "__main__":`` guard and a notebook works; spawned elsewhere). It gets the
model once, ignores Ctrl-C (the parent's to handle), runs ``shard.index_shard`` on one BLAS thread and talks
to the parent over its own pipe, one shard at a time:

    parent → worker   (sid, docs)            a shard's documents [(doc_id, text)]; None: stop
    worker → parent   ("ok", sid, arrays)    the shard's TopkState arrays
                      ("error", exception)   what index_shard raised

The parent waits on every worker's pipe and process at once (``multiprocessing.connection.wait``), so a
worker that dies (the OOM killer) is seen at once: the shards that did finish are kept and the build stops
with one error line. Stopping (Ctrl-C, an error) terminates and joins every worker; nothing is left running.
A worker also dies with its parent, even a ``kill -9``-ed one (``die_with_parent``): on Linux the kernel sends it
SIGKILL (``PR_SET_PDEATHSIG``), elsewhere a watchdog thread sees its parent pid change within a second.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Iterator

from minitf.errors import MinitfError
from minitf.index.shard import ShardSpec, index_shard, one_blas_thread, use_one_blas_thread
from minitf.index.topk import TopkState

_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
DIED = "an index worker died (out of memory?); finished shards are saved, rerun to resume"


def in_process(model, spec: ShardSpec, shards: Iterator) -> Iterator[tuple[int, TopkState]]:
    """workers=1: every shard in the calling process."""
    with one_blas_thread():
        for sid, docs in shards:
            yield sid, index_shard(model, spec, docs)


def local_shards(model, spec: ShardSpec, workers: int):
    """run_shards(iterator of (sid, docs)) yielding (sid, TopkState) as shards finish: in this process for
    ``workers=1`` (or where workers cannot be spawned), else on ``workers`` worker processes."""
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if workers == 1 or (method == "spawn" and not _can_spawn()):
        return lambda shards: in_process(model, spec, shards)
    return lambda shards: _on_workers(model, spec, shards, workers, method)


def _on_workers(model, spec: ShardSpec, shards: Iterator, n: int, method: str) -> Iterator[tuple[int, TopkState]]:
    pool = WorkerPool(model, spec, n, method)
    finished = False
    try:
        shards = iter(shards)
        for worker in range(n):  # one shard each to begin with
            if (nxt := next(shards, None)) is None:
                break
            pool.send(worker, nxt)
        while pool.busy:
            worker, sid, arrays = pool.receive()
            if (nxt := next(shards, None)) is not None:  # the worker starts its next shard before we merge
                pool.send(worker, nxt)
            yield sid, TopkState.from_arrays(arrays)
        finished = True
    finally:
        pool.close() if finished else pool.stop()


class WorkerPool:
    """``n`` worker processes of our own (``processes``, ``pids``), each with its pipe (``pipes``); worker
    ``i`` is ``processes[i]``."""

    def __init__(self, model, spec: ShardSpec, n: int, method: str):
        ctx = mp.get_context(method)
        self.processes: list = []
        self.pipes: list = []
        self.busy: set[int] = set()  # the workers with a shard
        saved = {name: os.environ.get(name) for name in _BLAS_ENV}
        os.environ.update({name: "1" for name in _BLAS_ENV})  # a spawned child's BLAS starts with one thread
        try:
            for _ in range(n):
                mine, theirs = ctx.Pipe()
                p = ctx.Process(target=_worker_main, name="minitf-index-worker", daemon=True,
                                args=(theirs, os.getpid(), model.cfg, model.w, model.folder, model.tokenizer, spec))
                p.start()
                theirs.close()  # only the worker holds its end: its death is EOF here
                self.processes.append(p)
                self.pipes.append(mine)
        except BaseException:
            self.stop()
            raise
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def send(self, worker: int, shard: tuple[int, list]) -> None:
        """Give an idle worker a shard (sid, docs)."""
        try:
            self.pipes[worker].send(shard)
        except OSError:
            raise MinitfError(DIED) from None
        self.busy.add(worker)

    def receive(self) -> tuple[int, int, dict]:
        """(worker, sid, arrays) of the next shard to finish. MinitfError when a worker died (after the
        results other workers had ready); the error a worker's shard raised, as is."""
        busy = sorted(self.busy)
        ready = wait([self.pipes[i] for i in busy] + [self.processes[i].sentinel for i in busy])
        for i in busy:
            if self.pipes[i] not in ready:
                continue
            try:
                message = self.pipes[i].recv()
            except (OSError, EOFError):  # died mid-shard (or mid-send): the others' results first
                continue
            self.busy.discard(i)
            if message[0] == "error":
                raise message[1]
            return i, message[1], message[2]
        raise MinitfError(DIED)  # only processes ended, or only pipes with nothing but EOF

    def close(self) -> None:
        """Every worker idle: tell each to stop and wait for it."""
        for conn in self.pipes:
            try:
                conn.send(None)
            except OSError:
                pass
        for p in self.processes:
            p.join(timeout=10)
        self.stop()

    def stop(self) -> None:
        """Terminate and join every worker still running (they may be mid-shard); close the pipes."""
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        for p in self.processes:
            p.join()
        for conn in self.pipes:
            conn.close()
        self.busy.clear()


def _worker_main(conn, parent: int, cfg, weights, folder, tokenizer, spec: ShardSpec) -> None:
    """A worker process: the model once, then shards until None (or until the parent is gone)."""
    from minitf.kernels import after_fork
    from minitf.model import Model

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    after_fork()  # a forked child has none of the parent's threads
    model = Model(cfg, weights, folder)
    model._tokenizer = tokenizer
    use_one_blas_thread()
    while True:
        while not conn.poll(1.0):
            if os.getppid() != parent:  # the parent was killed: nobody is left to send to
                return
        try:
            shard = conn.recv()
        except EOFError:
            return
        if shard is None:
            return
        sid, docs = shard
        try:
            message = ("ok", sid, index_shard(model, spec, docs).arrays())
        except Exception as e:  # noqa: BLE001 — the parent re-raises it
            message = ("error", e)
        conn.send(message)


def die_with_parent(parent: int, every: float = 1.0) -> None:
    """Make this process end when ``parent`` does, however it ends (``kill -9`` included): on Linux the kernel
    sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); everywhere a daemon thread
    checks every ``every`` seconds whether the parent pid changed (reparented: the parent is gone) and exits."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog below still holds
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="minitf-parent-watch", daemon=True).start()


def _can_spawn() -> bool:
    """Spawned workers re-import the main script: impossible when it came from stdin ("python -")."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or Path(main_file).is_file()
