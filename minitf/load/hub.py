"""Fetch GPT-2 and Pythia weights from the Hugging Face hub, and find model folders for ``--model``.

Protocol notes (what the hub does, and what :func:`download` relies on):

* ``GET {endpoint}/{repo}/resolve/main/{file}`` serves a file of the repo's main branch.
  Renamed repos answer with a relative redirect (``gpt2`` -> ``openai-community/gpt2``);
  large (LFS) files answer with a redirect to a CDN.
* The hub's own responses carry the integrity data.  For an LFS file the redirect has
  ``X-Linked-Etag: "<sha256 of the file>"`` and ``X-Linked-Size``; the CDN's own ETag is
  unrelated (an MD5 or multipart tag), which is why we read X-Linked-Etag and not ETag.
  For a small (non-LFS) file the 200 response's ``ETag`` is the git blob id,
  ``sha1(b"blob <size>\\0" + content)``.
* The metadata request is a HEAD that follows redirects only while they stay on the same
  host: CDN URLs are presigned for GET and may refuse HEAD; the hub hop has all we need.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

from minitf.errors import MinitfError
from minitf.util.files import file_sha256
from minitf.util.fmt import megabytes
from minitf.util.progress import Progress

FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors")
GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # what ``download`` fetches (OpenAI's GPT-2)
# EleutherAI's Pythia (GPT-NeoX): the sizes the paper's pipeline runs on, each also trained on the deduped Pile
PYTHIA_SIZES = tuple(f"pythia-{n}{d}" for n in ("70m", "160m", "410m", "1b", "1.4b") for d in ("", "-deduped"))
PYTHIA_FILES = ("config.json", "tokenizer.json", "model.safetensors")  # sharded: its index, then each shard
DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT = 30.0  # seconds, per socket operation (connect, each read)
CHUNK = 1 << 20
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class Remote:
    """What the hub says about one file: its URL, expected size and hash (if given)."""

    url: str
    size: int | None
    algo: str | None  # "sha256", "git-sha1" or None (no usable hash given)
    digest: str | None


# ---------------------------------------------------------------- HTTP plumbing


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects keeping the method (urllib turns HEAD into GET) and records every hop's
    headers; with ``same_host_only`` it stops at a redirect to another host (urllib then raises
    HTTPError carrying that 3xx response)."""

    def __init__(self, same_host_only: bool) -> None:
        self.same_host_only = same_host_only
        self.hops: list[Message] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        self.hops.append(headers)
        if self.same_host_only and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            return None
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        new.method = req.get_method()
        return new


def _open(url: str, method: str, headers: dict[str, str] | None = None, same_host_only: bool = False):
    """Open ``url``; return ``(response, headers of the redirect hops)``. Raises urllib errors."""
    redirects = _Redirects(same_host_only)
    opener = urllib.request.build_opener(redirects)
    req = urllib.request.Request(url, method=method, headers={"User-Agent": "minitf", **(headers or {})})
    try:
        return opener.open(req, timeout=TIMEOUT), redirects.hops
    except urllib.error.HTTPError as e:
        if e.code in _REDIRECTS and same_host_only:  # stopped at a cross-host redirect: fine
            return e, redirects.hops
        raise


def _int(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _unquote_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


def probe(url: str) -> Remote:
    """HEAD ``url`` and read the expected size and hash from the hub's headers.

    X-Linked-Etag/X-Linked-Size (LFS files, on the hub's redirect) win over ETag/Content-Length
    of the final 200 response; an ETag of 64 hex digits is a sha256, of 40 a git blob sha1,
    anything else (a CDN tag) is ignored.
    """
    resp, hops = _open(url, "HEAD", same_host_only=True)
    with resp:
        final = resp.headers
        status = resp.status
    linked = next((h["X-Linked-Etag"] for h in [*hops, final] if h.get("X-Linked-Etag")), None)
    linked_size = next((h["X-Linked-Size"] for h in [*hops, final] if h.get("X-Linked-Size")), None)
    digest = _unquote_etag(linked) or _unquote_etag(final.get("ETag"))
    size = _int(linked_size) if linked_size else _int(final.get("Content-Length")) if status == 200 else None
    algo = None
    if digest and re.fullmatch(r"[0-9a-f]{64}", digest):
        algo = "sha256"
    elif digest and re.fullmatch(r"[0-9a-f]{40}", digest) and not linked:
        algo = "git-sha1"
    return Remote(url, size, algo, digest if algo else None)


def file_digest(path: Path, algo: str) -> str:
    """Hash a local file in chunks: ``sha256`` of the content, or ``git-sha1`` (the git blob id,
    ``sha1(b"blob <size>\\0" + content)``)."""
    if algo == "sha256":
        return file_sha256(path)
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _matches(path: Path, remote: Remote) -> bool:
    """True if ``path`` has the remote size and hash (size alone when no hash was given)."""
    if remote.size is not None and path.stat().st_size != remote.size:
        return False
    if remote.algo:
        return file_digest(path, remote.algo) == remote.digest
    return remote.size is not None


# ---------------------------------------------------------------- download


def _fetch(remote: Remote, part: Path, label: str, live: bool) -> Progress | None:
    """Stream ``remote`` into ``part``, resuming from its current size with ``Range: bytes=N-``.

    206 -> append; 200 (server ignored Range) -> start over; 416 -> drop the part, start over.
    Returns the transfer's progress record (None if the part was already complete); a short
    body raises MinitfError, network errors propagate; either way the part is kept.
    """
    for _ in range(2):
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have > remote.size:
            part.unlink()
            have = 0
        if have and have == remote.size:
            return None  # complete from an earlier run; the caller verifies it
        try:
            resp, _ = _open(remote.url, "GET", {"Range": f"bytes={have}-"} if have else None)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                part.unlink()
                continue
            raise
        with resp:
            mode = "wb"
            if resp.status == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != have:
                    part.unlink()
                    continue
                mode = "ab"
            else:
                have = 0
            length = _int(resp.headers.get("Content-Length"))
            total = have + length if length is not None else remote.size
            bar = Progress(label, total, have, amount=megabytes, live=live)
            try:
                with open(part, mode) as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except BaseException:
                bar.end_line()
                raise
            if total is not None and bar.done != total:
                bar.end_line()
                raise MinitfError(
                    f"{label}: connection closed after {bar.done} of {total} bytes; "
                    f"partial data kept in {part}, run the download again to resume"
                )
            return bar
    raise MinitfError(f"{remote.url}: server keeps refusing the byte range; delete {part} and retry")


def split_name(name: str) -> tuple[str, str]:
    """``"gpt2"`` -> ``("gpt2", "gpt2")``; ``"openai-community/gpt2"`` -> (that, ``"gpt2"``);
    ``"pythia-160m"`` -> (``"EleutherAI/pythia-160m"``, ``"pythia-160m"``): the hub repo id and the local folder
    name (its last part). Only the four GPT-2 sizes and ``PYTHIA_SIZES``."""
    repo = name.strip().strip("/")
    if not _REPO_ID.match(repo) or ".." in repo:
        raise MinitfError(f"{name}: not a Hugging Face model name (e.g. gpt2, gpt2-xl, openai-community/gpt2)")
    org, _, folder = repo.rpartition("/")
    if folder in PYTHIA_SIZES and org in ("", "EleutherAI"):
        return f"EleutherAI/{folder}", folder
    if folder.startswith("pythia"):
        raise MinitfError(f"{name}: not a Pythia that download takes: pythia-70m, -160m, -410m, -1b or -1.4b, "
                          f"optionally -deduped (as EleutherAI/<name> too)")
    if folder not in GPT2_SIZES or org not in ("", "openai-community"):
        raise MinitfError(f"{name}: not a GPT-2 model; download takes {', '.join(GPT2_SIZES[:-1])} or "
                          f"{GPT2_SIZES[-1]} (optionally as openai-community/<name>)")
    return repo, folder


def download(
    name: str,
    dest_root: Path = Path("weights"),
    endpoint: str | None = None,
    progress: bool = True,
) -> Path:
    """Download config.json, vocab.json, merges.txt and model.safetensors of hub repo ``name`` (a Pythia's:
    config.json, tokenizer.json and model.safetensors, or, when the repo has none, model.safetensors.index.json
    and the shards it names) into ``dest_root/<last part of name>/`` and return that folder.

    Endpoint: ``endpoint``, else ``$HF_ENDPOINT``, else https://huggingface.co; files come from
    ``{endpoint}/{repo}/resolve/main/{file}``.  Each file is streamed into ``<file>.part``
    (resumed with a Range request when one exists), checked against the hub's sha256
    (X-Linked-Etag) or git blob sha1 (ETag) and size, and only then renamed into place.
    Files already present with the right hash are skipped.  A live progress bar goes to stderr
    when ``progress`` and stderr is a terminal; otherwise one line per file.
    Raises MinitfError (one line) on network, HTTP and hash problems.
    """
    repo, folder = split_name(name)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    dest = Path(dest_root) / folder
    files = PYTHIA_FILES if folder in PYTHIA_SIZES else FILES
    by_hand = (
        f"download {', '.join(files[:-1])} and {files[-1]} from {endpoint}/{repo} by hand into {dest}/"
    )
    for filename in files:
        if folder in PYTHIA_SIZES and filename == "model.safetensors":
            if not _get(endpoint, repo, dest, filename, by_hand, progress, missing_ok=True):
                index = "model.safetensors.index.json"
                _get(endpoint, repo, dest, index, by_hand, progress)
                from minitf.load.weights import checkpoint_files

                (dest / "model.safetensors").unlink(missing_ok=True)  # a stale single file would be read first
                for shard in checkpoint_files(dest)[0]:
                    _get(endpoint, repo, dest, shard.name, by_hand, progress)
            continue
        _get(endpoint, repo, dest, filename, by_hand, progress)
    return dest


def _get(endpoint: str, repo: str, dest: Path, filename: str, by_hand: str, progress: bool,
         missing_ok: bool = False) -> bool:
    """Download one file of ``repo`` into ``dest`` (resumed, size- and hash-checked, renamed into place); False
    when ``missing_ok`` and the hub has no such file (HTTP 404), True when it is in place."""
    url = f"{endpoint}/{repo}/resolve/main/{filename}"
    final, part = dest / filename, dest / (filename + ".part")
    remote = None
    try:
        remote = probe(url)
        dest.mkdir(parents=True, exist_ok=True)  # only once the hub answered: no empty folder left behind
        if final.exists() and _matches(final, remote):
            part.unlink(missing_ok=True)
            print(f"{final}: already complete, {remote.algo or 'size'} ok", file=sys.stderr)
            return True
        bar = _fetch(remote, part, str(final), progress)
    except urllib.error.HTTPError as e:
        if e.code == 404 and missing_ok and remote is None:
            return False
        hint = " (no such public repo or file?)" if e.code in (401, 403, 404) else ""
        raise MinitfError(f"{url}: HTTP {e.code} {e.reason}{hint}: {by_hand}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if isinstance(e, OSError) and e.filename:  # a local file problem (permissions, disk full)
            raise MinitfError(f"{e.filename}: {e.strerror}") from None
        reason = getattr(e, "reason", None) or e
        if remote is not None and part.exists() and part.stat().st_size:
            raise MinitfError(
                f"{final}: download interrupted ({reason}); partial data kept in {part}, "
                f"run the download again to resume, or {by_hand}"
            ) from None
        raise MinitfError(f"cannot reach {endpoint} ({reason}): {by_hand}") from None
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise MinitfError(
            f"{final}: size mismatch: expected {remote.size} bytes, got {size}; partial download deleted"
        )
    if remote.algo:
        got = file_digest(part, remote.algo)
        if got != remote.digest:
            part.unlink()
            raise MinitfError(
                f"{final}: {remote.algo} mismatch: expected {remote.digest}, got {got}; "
                f"partial download deleted, run the download again"
            )
    os.replace(part, final)
    if remote.algo:
        note = f"{remote.algo} ok"
    else:
        note = "size ok (no hash given)" if remote.size is not None else "not verified (no hash or size given)"
    bar = bar or Progress(str(final), size, size, live=False)
    secs, got = bar.elapsed, bar.done - bar.start_done
    bar.finish(f"{megabytes(bar.done)}, {megabytes(got)} fetched in {secs:.1f} s "
               f"({got / 1e6 / max(secs, 1e-6):.1f} MB/s), {note}")
    return True


# ---------------------------------------------------------------- --model lookup


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _cache_snapshot(repo: str) -> Path | None:
    """A snapshot folder of ``repo`` in the HF cache holding config.json and model.safetensors:
    the revision named in ``refs/main`` first, else the newest other snapshot.  The renamed
    GPT-2 repos are looked up under both names (``gpt2`` and ``openai-community/gpt2``)."""
    names = [repo]
    if repo in PYTHIA_SIZES:
        names.append(f"EleutherAI/{repo}")
    elif "/" not in repo:
        names.append(f"openai-community/{repo}")
    elif repo.startswith("openai-community/"):
        names.append(repo.split("/", 1)[1])
    for r in names:
        base = hf_cache_dir() / ("models--" + r.replace("/", "--"))
        snaps = base / "snapshots"
        if not snaps.is_dir():
            continue
        ref = base / "refs" / "main"
        main = snaps / ref.read_text().strip() if ref.is_file() else None
        others = sorted((p for p in snaps.iterdir() if p != main), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in ([main] if main else []) + others:
            # exists() follows the symlinks into blobs/: a dangling link means a missing blob
            if (snap / "config.json").exists() and ((snap / "model.safetensors").exists()
                                                    or (snap / "model.safetensors.index.json").exists()):
                return snap
    return None


def _tilde(path: Path) -> str:
    home = str(Path.home())
    s = str(path)
    return "~" + s[len(home):] if s == home or s.startswith(home + os.sep) else s


def resolve_model_dir(spec: str, weights_root: Path) -> Path:
    """Map a ``--model`` value to a model folder, without looking inside the files.

    An existing directory -> itself; a model name (``gpt2``, ``tiny``, ``openai-community/gpt2``)
    -> ``weights_root/<last part>`` if it exists, else its Hugging Face cache snapshot.
    Raises MinitfError saying where it looked and how to download the model.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MinitfError(f"`model` {spec}: not a folder (give the folder holding config.json and model.safetensors)",
                          param="model")
    repo = spec.strip().strip("/")
    if not _REPO_ID.match(repo) or ".." in repo:
        raise MinitfError(f"`model` {spec}: no such folder", param="model")
    local = Path(weights_root) / repo.rsplit("/", 1)[-1]
    if local.is_dir():
        return local
    snap = _cache_snapshot(repo)
    if snap is not None:
        return snap
    raise MinitfError(
        f"`model` {spec}: no such folder, no {local}, and not in the Hugging Face cache "
        f"({_tilde(hf_cache_dir())}); run 'python cli.py download {repo}'", param="model"
    )
