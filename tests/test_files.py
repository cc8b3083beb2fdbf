"""minitf.util.files: the one atomic write."""
import hashlib
import os
import stat
import threading

import pytest

from minitf.errors import MinitfError
from minitf.util.files import atomic_write, file_sha256


def test_writes_bytes_str_and_writer(tmp_path):
    p = tmp_path / "a.bin"
    assert atomic_write(p, b"\x00\x01") == p
    assert p.read_bytes() == b"\x00\x01"
    atomic_write(p, "é⏎")
    assert p.read_bytes() == "é⏎".encode("utf-8")
    atomic_write(p, lambda f: f.write(b"from a writer"))
    assert p.read_bytes() == b"from a writer"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["a.bin"]


def test_concurrent_writers_never_show_a_partial_file(tmp_path):
    """Writers of 1 MiB files of one repeated byte each, and a reader: every read is one whole file."""
    p = tmp_path / "shared.bin"
    size = 1 << 20
    atomic_write(p, b"a" * size)
    stop = threading.Event()
    seen, bad = set(), []

    def read():
        while not stop.is_set():
            data = p.read_bytes()
            if len(data) != size or data.count(data[:1]) != size:
                bad.append(len(data))
            seen.add(data[:1])

    def write(byte):
        for _ in range(20):
            atomic_write(p, lambda f: [f.write(byte * (1 << 16)) for _ in range(16)])

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(b,)) for b in (b"b", b"c", b"d")]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert bad == []
    assert seen - {b"a"}  # the reader did see the writers' files
    assert os.listdir(tmp_path) == ["shared.bin"]  # no temp file left


def test_failure_keeps_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "keep.json"
    atomic_write(p, "old")

    def half(f):
        f.write(b"new, half written")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(p, half)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.json"]

    def disk_full(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(MinitfError, match=r"keep\.json: cannot write \(No space left on device\)"):
        atomic_write(p, disk_full)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.json"]


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(MinitfError, match=r"nope[/\\]x\.txt: cannot write"):
        atomic_write(tmp_path / "nope" / "x.txt", "x")


def test_cache_layout(tmp_path, monkeypatch):
    from minitf.util.files import cache_path, default_cache_dir

    monkeypatch.setenv("MINITF_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert cache_path("llm") == tmp_path / "c" / "llm"
    assert cache_path("results", tmp_path / "other") == tmp_path / "other" / "results"
    monkeypatch.delenv("MINITF_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_path("llm") == tmp_path / "home" / ".cache" / "minitf" / "llm"


def test_file_sha256(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"abc" * 1_000_000)
    assert file_sha256(p) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()
