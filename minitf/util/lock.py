"""One process at a time in a folder: an advisory lock on ``FOLDER/.minitf.lock`` holding the owner's pid.

The lock is ``flock(2)`` on that file, so the kernel releases it whenever the process ends — normally, by an
exception, Ctrl-C or ``kill -9`` — and a stale lock file never blocks anyone. A second process is refused at
once with one line naming the folder and the first one's pid. The holder removes the file on release; a
process that locked a file that was removed meanwhile (an unlinked inode) tries again, so two holders are
never possible.
"""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from minitf.errors import MinitfError

LOCK_NAME = ".minitf.lock"


@contextmanager
def folder_lock(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block; ``what`` names the folder in
    the error ("index folder", "study folder")."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MinitfError(f"{folder}: cannot create the {what} ({e.strerror})") from None
    path = folder / LOCK_NAME
    fd = _acquire(path, folder, what)
    try:
        yield path
    finally:
        try:
            path.unlink()
        except OSError:
            pass
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(path: Path, folder: Path, what: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MinitfError(f"{folder}: cannot write to the {what} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {pid}" if pid else "another process"
                raise MinitfError(f"{folder}: the {what} is in use by another minitf process ({who}); "
                                  "wait for it to finish or stop it") from None
            raise MinitfError(f"{folder}: cannot lock the {what} ({e.strerror})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file after we opened it: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
