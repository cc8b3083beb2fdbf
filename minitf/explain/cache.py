"""The LLM's response cache: one JSON file ``<folder>/<sha256>.json`` per request.

The key is the sha256 of the canonical JSON of ``(server, model, messages, params, PROMPT_FORMAT_VERSION)``,
the server being the base URL without credentials, query or trailing slash (``credentials.server_id``): two
servers never share an answer, and a server that cannot be reached fails even when another one's answers
are cached. The file holds the request (model, messages, params; no key, no URL) and the response (text,
per-token logprobs, finish reason, model), written with ``minitf.util.files.atomic_write``. An unreadable
file is a miss (with a warning), rewritten by the next answer.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from minitf.errors import MinitfError, warn
from minitf.explain.prompts import PROMPT_FORMAT_VERSION
from minitf.util.files import atomic_write


def cache_key(server: str, model: str, messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of (server, model, messages, params, PROMPT_FORMAT_VERSION)."""
    payload = {
        "server": server,
        "model": model,
        "messages": list(messages),
        "params": params,
        "prompt_format_version": PROMPT_FORMAT_VERSION,
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Responses on disk under ``folder`` (created on the first write); ``folder=None``: nothing is kept."""

    def __init__(self, folder: Path | str | None):
        self.folder = Path(folder) if folder is not None else None

    def check_writable(self) -> None:
        """MinitfError naming the folder unless a file can be made in it (created if missing): called before the
        first request is sent, so a read-only cache costs no paid request."""
        if self.folder is None or getattr(self, "_writable", False):
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.folder).close()
        except OSError as e:
            raise MinitfError(f"{self.folder}: cannot write the LLM cache ({e.strerror or e})") from None
        self._writable = True

    def _path(self, key: str) -> Path | None:
        return self.folder / f"{key}.json" if self.folder is not None else None

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached response (text, logprobs, finish_reason, model), or None."""
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            response = json.loads(path.read_text(encoding="utf-8"))["response"]
            return {
                "text": response["text"],
                "logprobs": response.get("logprobs"),
                "finish_reason": response.get("finish_reason"),
                "model": response.get("model"),
            }
        except (OSError, ValueError, KeyError, TypeError) as e:
            warn(f"{path}: unreadable LLM cache entry ({e}); asking the server again")
            return None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any],
            scrub: Callable[[str], str] = lambda text: text) -> None:
        """Keep ``response`` to ``request`` (model, messages, params); ``scrub`` cleans the text written."""
        path = self._path(key)
        if path is None:
            return
        entry = {
            "key": key,
            "prompt_format_version": PROMPT_FORMAT_VERSION,
            "request": request,
            "response": response,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MinitfError(f"{self.folder}: cannot write the LLM cache ({e.strerror or e})") from None
        atomic_write(path, scrub(json.dumps(entry, ensure_ascii=False, indent=1)))
