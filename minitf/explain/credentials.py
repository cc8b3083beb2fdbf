"""Where the LLM server is and the key it gets; the key kept out of every message and file.

The key comes from ``OPENAI_API_KEY`` and the server from ``base_url`` or ``OPENAI_BASE_URL`` (default:
OpenAI). With neither a key nor a base URL a request raises ``MinitfError(MISSING_KEY_MESSAGE)``; with a
base URL and no key, ``"none"`` is sent (local servers ignore it). The key is never printed, logged or
written to the cache: :meth:`Credentials.scrub` takes it out of any text that leaves the client.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from minitf.errors import MinitfError

DEFAULT_SERVER = "https://api.openai.com/v1"
NO_KEY_PLACEHOLDER = "none"
MISSING_KEY_MESSAGE = (
    "OPENAI_API_KEY is not set: export it, or pass `base_url` for a local OpenAI-compatible server"
)


def redact_url(url: str) -> str:
    """``url`` without user:password, query or fragment (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def server_id(base_url: str | None) -> str:
    """The server as messages and the cache key name it: ``base_url`` (else ``OPENAI_BASE_URL``, else OpenAI)
    without credentials, query, fragment or trailing slash."""
    return redact_url(base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_SERVER).rstrip("/")


@dataclass(frozen=True)
class Credentials:
    """The server's URL as given (``base_url`` or ``OPENAI_BASE_URL``; None: OpenAI), its public name
    ``server`` (:func:`server_id`) and the key (``OPENAI_API_KEY``; never in ``repr``)."""

    base_url: str | None
    server: str
    key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, base_url: str | None = None) -> "Credentials":
        return cls(base_url or os.environ.get("OPENAI_BASE_URL") or None, server_id(base_url),
                   os.environ.get("OPENAI_API_KEY") or None)

    def api_key(self) -> str:
        """The key to send: ``OPENAI_API_KEY``, or the placeholder for a server of one's own; MinitfError
        when neither a key nor a base URL is set."""
        if self.key is None and self.base_url is None:
            raise MinitfError(MISSING_KEY_MESSAGE)
        return self.key or NO_KEY_PLACEHOLDER

    def scrub(self, text: str) -> str:
        """``text`` with the key replaced by ``***``."""
        return text.replace(self.key, "***") if self.key else text
