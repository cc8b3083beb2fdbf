"""Tests for minitf.load.hub against a fake hub served on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from minitf.load import hub
from minitf.errors import MinitfError

REPO = "openai-community/gpt2"
MODEL = os.urandom(300_000)
FILES = {
    "config.json": json.dumps({"n_layer": 2, "n_embd": 8}).encode(),
    "vocab.json": json.dumps({"a": 0, "b": 1}).encode(),
    "merges.txt": b"#version: 0.2\na b\n",
    "model.safetensors": MODEL,
}
LFS = {"model.safetensors"}


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """A tiny hub: ``/gpt2/resolve/main/f`` -307-> ``/openai-community/gpt2/resolve/main/f``;
    LFS files then -302-> ``/blobs/f`` (with X-Linked-Etag/X-Linked-Size on the 302), small
    files are served directly with a git-sha1 ETag.  Blobs honour ``Range: bytes=N-``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.cut_first_get_at: int | None = None  # next /blobs/ GET: close after N body bytes
        self.flip_byte = False  # serve model.safetensors with one byte flipped
        self.ignore_range = False
        self.blob_base = ""  # where LFS redirects point: "" (this server) or another server's URL
        self.refuse_head = False  # answer HEAD on /blobs/ with 403, like a presigned CDN URL
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.respond(body=False)

            def do_GET(self) -> None:
                self.respond(body=True)

            def respond(self, body: bool) -> None:
                hub_.requests.append((self.command, self.path, self.headers.get("Range")))
                m = re.fullmatch(r"/(.+)/resolve/main/([^/]+)", self.path)
                if m and m.group(1) == "gpt2":
                    return self.send(307, headers={"Location": f"/{REPO}/resolve/main/{m.group(2)}"})
                if m and m.group(1) == REPO and m.group(2) in FILES:
                    name = m.group(2)
                    data = FILES[name]
                    if name in LFS:
                        tag = hashlib.sha256(data).hexdigest()
                        return self.send(302, headers={
                            "Location": f"{hub_.blob_base}/blobs/{name}", "ETag": f'"{tag}"',
                            "X-Linked-Etag": f'"{tag}"', "X-Linked-Size": str(len(data))})
                    return self.blob(data, body, {"ETag": f'"{git_sha1(data)}"'})
                m = re.fullmatch(r"/blobs/([^/]+)", self.path)
                if m and m.group(1) in LFS and self.command == "HEAD" and hub_.refuse_head:
                    return self.send(403)
                if m and m.group(1) in LFS:
                    data = FILES[m.group(1)]
                    if hub_.flip_byte:
                        data = data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]
                    return self.blob(data, body, {"ETag": '"cdn-md5-ish-1"'})
                self.send(404)

            def blob(self, data: bytes, body: bool, headers: dict[str, str]) -> None:
                status, start = 200, 0
                rng = self.headers.get("Range")
                if rng and not hub_.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        return self.send(416, headers={"Content-Range": f"bytes */{len(data)}"})
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                payload = data[start:]
                if body and self.path.startswith("/blobs/") and hub_.cut_first_get_at is not None:
                    payload, hub_.cut_first_get_at = payload[: hub_.cut_first_get_at], None
                    self.send(status, headers, str(len(data) - start))
                    self.wfile.write(payload)
                    return  # HTTP/1.0: the connection closes with the body short
                self.send(status, headers, str(len(payload)), payload if body else b"")

            def send(self, status: int, headers: dict[str, str] | None = None,
                     length: str = "0", payload: bytes = b"") -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def gets(self, path_part: str = "") -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and path_part in r[1]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_hub():
    h = FakeHub()
    yield h
    h.close()


def assert_complete(folder: Path) -> None:
    for name, data in FILES.items():
        assert (folder / name).read_bytes() == data
        assert not (folder / (name + ".part")).exists()


def test_full_download(fake_hub, tmp_path, capsys):
    out = hub.download("gpt2", tmp_path / "weights", endpoint=fake_hub.url, progress=True)
    assert out == tmp_path / "weights" / "gpt2"
    assert_complete(out)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 4  # not a TTY: one line per file
    assert "sha256 ok" in err and "git-sha1 ok" in err
    # 307 (renamed repo) then 302 (to the blob); the HEAD stays a HEAD across redirects
    assert [(m, p) for m, p, _ in fake_hub.requests if "model" in p] == [
        (m, p) for m in ("HEAD", "GET") for p in
        ("/gpt2/resolve/main/model.safetensors", f"/{REPO}/resolve/main/model.safetensors", "/blobs/model.safetensors")
    ]


def test_cdn_on_another_host_is_not_probed(fake_hub, tmp_path):
    cdn = FakeHub()
    try:
        cdn.refuse_head = True
        fake_hub.blob_base = cdn.url
        hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
        assert [m for m, _, _ in cdn.requests] == ["GET"]  # metadata came from the hub's 302
        assert_complete(tmp_path / "gpt2")
    finally:
        cdn.close()


def test_org_name_and_env_endpoint(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url + "/")
    out = hub.download(REPO, tmp_path, progress=False)
    assert out == tmp_path / "gpt2"
    assert_complete(out)


def test_progress_bar_on_tty(fake_hub, tmp_path, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    hub.download("gpt2", tmp_path, endpoint=fake_hub.url)
    text = err.getvalue()
    assert "\r" in text and "MB/s" in text and "ETA" in text
    assert text.count("\n") == 4


def test_interrupted_then_resumed(fake_hub, tmp_path):
    fake_hub.cut_first_get_at = 100_000
    with pytest.raises(MinitfError, match="resume"):
        hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
    part = tmp_path / "gpt2" / "model.safetensors.part"
    assert part.stat().st_size == 100_000
    assert not (tmp_path / "gpt2" / "model.safetensors").exists()

    hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
    assert fake_hub.gets("/blobs/")[-1][2] == "bytes=100000-"
    assert_complete(tmp_path / "gpt2")


def test_server_ignores_range_starts_over(fake_hub, tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "model.safetensors.part").write_bytes(b"\xff" * 5000)  # junk; the 200 replaces it
    fake_hub.ignore_range = True
    hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
    assert fake_hub.gets("/blobs/")[-1][2] == "bytes=5000-"
    assert_complete(folder)


def test_corrupt_byte_is_rejected(fake_hub, tmp_path):
    fake_hub.flip_byte = True
    with pytest.raises(MinitfError, match="sha256 mismatch") as e:
        hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
    msg = str(e.value)
    assert "model.safetensors" in msg and hashlib.sha256(MODEL).hexdigest() in msg and "\n" not in msg
    assert not (tmp_path / "gpt2" / "model.safetensors").exists()
    assert not (tmp_path / "gpt2" / "model.safetensors.part").exists()


def test_complete_files_are_not_refetched(fake_hub, tmp_path, capsys):
    hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
    before = len(fake_hub.gets())
    hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
    assert len(fake_hub.gets()) == before
    assert capsys.readouterr().err.count("already complete") == 4


def test_changed_local_file_is_fetched_again(fake_hub, tmp_path):
    hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
    (tmp_path / "gpt2" / "vocab.json").write_bytes(b"{}")
    hub.download("gpt2", tmp_path, endpoint=fake_hub.url, progress=False)
    assert_complete(tmp_path / "gpt2")


def test_unreachable_endpoint(tmp_path):
    with socket.socket() as s:  # grab a free port, then close it: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MinitfError) as e:
        hub.download("gpt2", tmp_path / "weights", endpoint=f"http://127.0.0.1:{port}", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"cannot reach http://127.0.0.1:{port} (")
    assert msg.endswith(
        f"download config.json, vocab.json, merges.txt and model.safetensors from "
        f"http://127.0.0.1:{port}/gpt2 by hand into {tmp_path / 'weights' / 'gpt2'}/"
    )
    assert not (tmp_path / "weights").exists()  # nothing half-made left behind


def test_silent_server_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "TIMEOUT", 0.3)
    with socket.socket() as s:  # listens (the kernel completes the connect) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(MinitfError, match=r"cannot reach .*timed out.*by hand"):
            hub.download("gpt2", tmp_path, endpoint=url, progress=False)


def test_missing_repo_404(fake_hub, tmp_path):
    with pytest.raises(MinitfError, match=r"HTTP 404 .*by hand into"):
        hub.download("gpt2-xl", tmp_path, endpoint=fake_hub.url, progress=False)


def test_bad_name(tmp_path):
    with pytest.raises(MinitfError, match="not a Hugging Face model name"):
        hub.download("../evil", tmp_path, endpoint="http://127.0.0.1:9")


@pytest.mark.parametrize("name", ["gpt5", "gpt2-huge", "someone/gpt2", "EleutherAI/gpt-neo-125m"])
def test_only_the_four_gpt2_sizes(tmp_path, name):
    """Refused before any request (the endpoint is a closed port) and before any folder is made."""
    with pytest.raises(MinitfError, match=f"^{name}: not a GPT-2 model; download takes gpt2, gpt2-medium, "
                                          "gpt2-large or gpt2-xl"):
        hub.download(name, tmp_path / "w", endpoint="http://127.0.0.1:9")
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- resolve_model_dir


def make_cache(root: Path, repo: str, revs: list[str], main: str | None,
               files: tuple[str, ...] = ("config.json", "model.safetensors")) -> Path:
    """An HF cache repo folder: blobs/, snapshots/<rev>/<file> symlinks into blobs, refs/main."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    for name in files:
        (base / "blobs" / hashlib.sha1(name.encode()).hexdigest()).write_text(name)
    for rev in revs:
        snap = base / "snapshots" / rev
        snap.mkdir(parents=True)
        for name in files:
            (snap / name).symlink_to(Path("../../blobs") / hashlib.sha1(name.encode()).hexdigest())
    if main:
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text(main + "\n")
    return base


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "hfhome" / "hub"
    root.mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    return root


def test_resolve_existing_dir_and_weights_root(tmp_path, cache):
    d = tmp_path / "somewhere"
    d.mkdir()
    assert hub.resolve_model_dir(str(d), tmp_path / "weights") == d
    (tmp_path / "weights" / "tiny").mkdir(parents=True)
    assert hub.resolve_model_dir("tiny", tmp_path / "weights") == tmp_path / "weights" / "tiny"
    (tmp_path / "weights" / "gpt2").mkdir()
    assert hub.resolve_model_dir("openai-community/gpt2", tmp_path / "weights") == tmp_path / "weights" / "gpt2"


def test_resolve_hf_cache_prefers_refs_main(tmp_path, cache):
    base = make_cache(cache, "openai-community/gpt2", ["aaa", "bbb"], main="aaa")
    got = hub.resolve_model_dir("gpt2", tmp_path / "weights")  # bare name -> openai-community
    assert got == base / "snapshots" / "aaa"
    assert (got / "model.safetensors").is_symlink() and (got / "config.json").read_text() == "config.json"
    assert hub.resolve_model_dir("openai-community/gpt2", tmp_path / "weights") == got


def test_resolve_hf_cache_env_and_incomplete_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    base = make_cache(tmp_path / "c", "gpt2-medium", ["old"], main=None)
    make_cache(tmp_path / "c", "gpt2-large", ["x"], main="x", files=("config.json",))  # no weights
    assert hub.resolve_model_dir("gpt2-medium", tmp_path / "w") == base / "snapshots" / "old"
    with pytest.raises(MinitfError, match="not in the Hugging Face cache"):
        hub.resolve_model_dir("gpt2-large", tmp_path / "w")


def test_resolve_not_found_message(tmp_path, cache, monkeypatch):
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MinitfError) as e:
        hub.resolve_model_dir("gpt2", Path("weights"))
    assert str(e.value) == (
        "`model` gpt2: no such folder, no weights/gpt2, and not in the Hugging Face cache "
        "(~/.cache/huggingface/hub); run 'python cli.py download gpt2'"
    )
    with pytest.raises(MinitfError, match="no such folder"):
        hub.resolve_model_dir("./nope/x/y", tmp_path)
