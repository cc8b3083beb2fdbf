"""minitf's files: one atomic write, one file hash, and where minitf keeps its cache.

Every file minitf writes (reports, study records and site, explanation results, indexes, neuron tables, LLM
cache entries) goes through :func:`atomic_write`, so a reader sees the old file or the new one, never half of
one, even with several writers at once:

    temp = .<name>.<random>.tmp            named first, then created (O_EXCL) beside path, same file system
    write(temp); flush; fsync(temp)        the bytes are on disk before they get the name
    os.replace(temp, path)                 atomic on POSIX and Windows

A failure (disk full, permissions, an exception in ``write``, Ctrl-C) removes the temp file and leaves
``path`` as it was: the temp's name is known before the file exists, so no signal can leave it unnamed.

The one exception is a download (``minitf.load.hub``): it streams into ``<name>.part`` beside its target,
kept when interrupted so that the next run resumes it, and renames it onto the target (``os.replace``) only
once its size and hash check out, so the target too is never half a file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

from minitf.errors import MinitfError

BLOCK = 1 << 20  # bytes read at a time when hashing


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Write ``data`` (bytes, str as UTF-8, or a function ``write(binary file)``) to ``path`` atomically.

    The temp file is ``.<name>.<random>.tmp`` beside ``path``; it gets permissions ``mode`` (it is created
    0600) and is renamed onto ``path`` only after an fsync. Raises MinitfError naming ``path`` on an
    OSError; any other exception from ``write`` propagates, with the temp file removed either way.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = None
    try:
        for _ in range(100):  # mkstemp's loop, but tmp is bound before the file exists (a KeyboardInterrupt
            tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"  # right after creation is cleaned up)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
                break
            except FileExistsError:
                tmp = None
        else:
            raise MinitfError(f"{path}: cannot write (no free temp name beside it)")
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise MinitfError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    regular_file(path)
    try:
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                h.update(block)
    except OSError as e:
        raise MinitfError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()


def default_cache_dir() -> Path:
    """minitf's own cache: ``$MINITF_CACHE_DIR``, else ``~/.cache/minitf`` (LLM responses, explanation
    results, neuron tables of big models)."""
    return Path(os.environ.get("MINITF_CACHE_DIR") or Path.home() / ".cache" / "minitf")


def cache_path(part: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache_dir or default_cache_dir()>/<part>``, minitf's cache layout: ``llm/`` (LLM responses),
    ``results/`` (explanations and scores), ``neurons/`` (neuron tables of big models)."""
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / part


def regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it names a regular file (after links); else MinitfError naming it and what it is instead.

    Reading a FIFO blocks until a writer comes and a device such as /dev/zero never ends, so every input
    file (corpus, prompt file, weights) is checked before it is opened."""
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise MinitfError(f"{path}: no such {what}") from None
    except OSError as e:
        raise MinitfError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise MinitfError(f"{path}: is {kind}, not a {what}")
    return path
