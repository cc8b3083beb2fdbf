"""A small chat-completions client: on-disk cache, bounded concurrency, a call budget.

Talks to OpenAI or any OpenAI-compatible server (vLLM, llama.cpp, Ollama …) through the official
``openai`` package, created lazily on the first cache miss, so nothing here needs a key at import
time or when every answer is cached.

Credentials
    The key comes from ``OPENAI_API_KEY`` and the server from ``base_url`` or ``OPENAI_BASE_URL``
    (default: OpenAI). With neither a key nor a base URL a cache miss raises
    ``MinitfError("OPENAI_API_KEY is not set: …")``; with a base URL and no key, ``"none"`` is sent
    (local servers ignore it). The key is never printed, logged or written to the cache; error
    messages are scrubbed of it.

Cache
    One JSON file ``<cache_dir>/<sha256>.json`` per request, keyed by the sha256 of the canonical
    JSON of ``(server, model, messages, params, PROMPT_FORMAT_VERSION)``, the server being the base
    URL without credentials, query or trailing slash: two servers never share an answer, and a
    server that cannot be reached fails even when another one's answers are cached. The file holds
    the request (model, messages, params; no key, no URL) and the response (text, per-token
    logprobs, finish reason). Written atomically (temp file + ``os.replace``). An unreadable cache
    file is treated as a miss and rewritten.

Retries
    The openai client's own: up to ``max_retries`` retries on connection errors, timeouts, HTTP
    408/409/429 and 5xx, with its exponential backoff (0.5 s doubling, at most 8 s, minus up to
    25 % jitter; a server's ``Retry-After`` is honoured up to the client's cap). Each attempt waits
    at most ``timeout`` seconds, so an unreachable server fails within (max_retries + 1) · timeout +
    8 · max_retries seconds (a refused connection: 0.5 + 1 s with the defaults), and the message
    says how long it tried and which options change that
    (``--max-retries``, ``--timeout``). Other errors (400, 401 …) fail at once. A request with
    ``logprobs`` that the server rejects with 400/422 is sent once more without
    ``logprobs``/``top_logprobs``; if that works, later requests leave them out
    (``logprobs_supported`` becomes False).

Budget
    ``max_calls`` caps the number of requests sent to the server (cache misses; a request's
    retries count once). The next miss raises ``MinitfError("`max_calls` N reached: …", param="max_calls")``; what was
    answered so far is cached, so a rerun continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait, FIRST_EXCEPTION
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from minitf.errors import MinitfError, warn
from minitf.report.text import count
from minitf.explain.driver import PROMPT_FORMAT_VERSION

log = logging.getLogger(__name__)

DEFAULT_SERVER = "https://api.openai.com/v1"
NO_KEY_PLACEHOLDER = "none"
MISSING_KEY_MESSAGE = (
    "OPENAI_API_KEY is not set: export it, or pass `base_url` for a local OpenAI-compatible server"
)
DEFAULT_LLM = "gpt-4o-mini"  # the LLM asked when none is named (--llm; a study with OPENAI_API_KEY set)
DEFAULT_TIMEOUT = 60.0  # seconds per HTTP attempt (--timeout); a long explanation from a slow server needs it
DEFAULT_MAX_RETRIES = 2  # the openai client's retries after the first attempt (--max-retries)
_RETRIED_STATUSES = {408, 409, 429} | set(range(500, 600))  # what the openai client retries
_LOGPROB_PARAMS = ("logprobs", "top_logprobs")
_STATUS_HINTS = {
    401: ": check OPENAI_API_KEY",
    403: ": check OPENAI_API_KEY and the model's access",
    404: ": check the LLM model name and `base_url`",
}


def server_id(base_url: str | None) -> str:
    """The server part of the cache key: ``base_url`` (else ``OPENAI_BASE_URL``, else OpenAI) without
    credentials, query, fragment or trailing slash."""
    return redact_url(base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_SERVER).rstrip("/")


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


def redact_url(url: str) -> str:
    """``url`` without user:password, query or fragment (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class LLM:
    """Cached, budgeted chat-completions client (the openai client does the retries).

    Args:
        model: model name sent to the server (part of the cache key).
        base_url: server URL, e.g. ``http://127.0.0.1:8000/v1``; default ``OPENAI_BASE_URL`` or OpenAI
            (part of the cache key, without credentials).
        cache_dir: directory for the response cache (created on first write); None disables caching.
        max_calls: at most this many requests sent to the server; None for no limit.
        concurrency: threads used by :meth:`complete_many`.
        timeout: seconds per HTTP attempt.
        max_retries: the openai client's retries after the first attempt (connection errors, timeouts,
            408/409/429, 5xx).

    Attributes (counters, safe to read after a run):
        calls_made: requests sent to the server (cache misses), retries not counted.
        cache_hits: requests answered from the cache.
        http_attempts: HTTP requests sent, retries and the logprobs fallback included.
        retries: retries the openai client made (those before a final non-retried error are not seen).
        logprobs_supported: False once the server has rejected ``logprobs``.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        cache_dir: Path | str | None,
        max_calls: int | None = None,
        concurrency: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        if not model:
            raise MinitfError("the LLM model name must not be empty", param="model")
        if max_calls is not None and max_calls < 0:
            raise MinitfError(f"`max_calls`: must be 0 or more, got {max_calls}", param="max_calls")
        if concurrency < 1:
            raise MinitfError(f"`concurrency`: must be at least 1, got {concurrency}", param="concurrency")
        if max_retries < 0:
            raise MinitfError(f"`max_retries`: must be 0 or more, got {max_retries}", param="max_retries")
        if timeout <= 0:
            raise MinitfError(f"`timeout`: must be positive, got {timeout}", param="timeout")
        self.model = model
        self.base_url = base_url
        self.server = server_id(base_url)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_calls = max_calls
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries

        self.calls_made = 0
        self.cache_hits = 0
        self.http_attempts = 0
        self.retries = 0
        self.logprobs_supported = True

        self._lock = threading.Lock()
        self._client: Any = None
        self._server = ""
        self._secret: str | None = None

    def __repr__(self) -> str:
        return f"LLM(model={self.model!r}, base_url={self.base_url!r}, cache_dir={str(self.cache_dir)!r})"

    # ---------------------------------------------------------------- public

    def stats(self) -> dict[str, int]:
        """Counters: calls_made, cache_hits, http_attempts, retries."""
        with self._lock:
            return {
                "calls_made": self.calls_made,
                "cache_hits": self.cache_hits,
                "http_attempts": self.http_attempts,
                "retries": self.retries,
            }

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """One chat completion, from the cache or the server.

        ``params`` are chat-completions parameters (``max_tokens``, ``temperature``, ``logprobs``,
        ``top_logprobs`` …). Returns ``{"text": str, "logprobs": list | None, "finish_reason":
        str | None, "model": str | None, "cached": bool}``; ``logprobs`` lists the generated tokens
        as ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}, …]}``.
        """
        key = cache_key(self.server, self.model, messages, params)
        cached = self._cache_read(key)
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return {**cached, "cached": True}
        self._reserve_call()
        response = self._request(messages, params)
        self._cache_write(key, messages, params, response)
        return {**response, "cached": False}

    def complete_many(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many completions, up to ``concurrency`` at a time; results in the order of ``requests``.

        Each request is a dict ``{"messages": [...], **params}``. Identical requests are sent once.
        On the first failure (e.g. the budget) pending requests are cancelled, the ones in flight
        finish (and are cached), and the error is raised.
        """
        unique: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
        keys = []
        for request in requests:
            if "messages" not in request:
                raise ValueError("complete_many: every request needs a 'messages' entry")
            params = {k: v for k, v in request.items() if k != "messages"}
            key = cache_key(self.server, self.model, request["messages"], params)
            keys.append(key)
            unique.setdefault(key, (request["messages"], params))

        results: dict[str, dict[str, Any]] = {}
        if self.concurrency == 1 or len(unique) <= 1:
            for key, (messages, params) in unique.items():
                results[key] = self.complete(messages, **params)
        else:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="minitf-llm") as pool:
                futures = {pool.submit(self.complete, m, **p): k for k, (m, p) in unique.items()}
                done, not_done = wait(futures, return_when=FIRST_EXCEPTION)
                for future in not_done:
                    future.cancel()
                for future in futures:
                    if future.cancelled():
                        continue
                    error = future.exception()
                    if error is not None:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise error
                    results[futures[future]] = future.result()
        return [results[k] for k in keys]

    # ---------------------------------------------------------------- budget, client

    def _reserve_call(self) -> None:
        with self._lock:
            if self.max_calls is not None and self.calls_made >= self.max_calls:
                raise MinitfError(
                    f"`max_calls` {self.max_calls} reached: {count(self.calls_made, 'call')} made, "
                    f"{count(self.cache_hits, 'cache hit')}; answers so far are cached, rerun with a higher "
                    "`max_calls` to continue", param="max_calls"
                )
            self.calls_made += 1

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or None
            key = os.environ.get("OPENAI_API_KEY") or None
            if key is None and base_url is None:
                raise MinitfError(MISSING_KEY_MESSAGE)
            try:
                import openai
            except ImportError as e:  # pragma: no cover - dependency missing
                raise MinitfError("openai: the package is not installed: pip install openai") from e
            self._secret = key
            self._server = redact_url(base_url or DEFAULT_SERVER)
            self._client = openai.OpenAI(
                api_key=key or NO_KEY_PLACEHOLDER,
                base_url=base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
            return self._client

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    # ---------------------------------------------------------------- requests

    def _request(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """Send one request (the client retries); drop logprobs once if the server rejects them."""
        client = self._get_client()
        import openai

        send = dict(params)
        if not self.logprobs_supported:
            send = {k: v for k, v in send.items() if k not in _LOGPROB_PARAMS}
        try:
            return self._attempt(client, messages, send)
        except openai.APIStatusError as e:
            if e.status_code in (400, 422) and any(k in send for k in _LOGPROB_PARAMS):
                log.info("server %s rejected logprobs (HTTP %s); retrying without", self._server, e.status_code)
                without = {k: v for k, v in send.items() if k not in _LOGPROB_PARAMS}
                try:
                    response = self._attempt(client, messages, without)
                except openai.APIStatusError as e2:
                    raise self._status_error(e2) from None
                with self._lock:
                    self.logprobs_supported = False
                return response
            raise self._status_error(e) from None

    def _status_error(self, e: Any) -> MinitfError:
        detail = self._scrub(str(getattr(e, "message", "") or e)).replace("\n", " ")
        hint = _STATUS_HINTS.get(e.status_code, "")
        if e.status_code in _RETRIED_STATUSES:
            hint += f" {self._gave_up}"
        return MinitfError(f"LLM server {self._server}: HTTP {e.status_code}{hint} ({detail})")

    @property
    def _gave_up(self) -> str:
        return (f"after {count(self.max_retries + 1, 'attempt')} (`max_retries` {self.max_retries}, "
                f"`timeout` {self.timeout:g} s per attempt)")

    def _attempt(self, client: Any, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """One request through the openai client, its retries included; counts attempts and retries.
        Connection errors and timeouts become one MinitfError that says how long it tried."""
        import openai

        start = time.monotonic()
        try:
            raw = client.chat.completions.with_raw_response.create(model=self.model, messages=messages, **params)
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            self._count(self.max_retries)
            seconds = time.monotonic() - start
            if isinstance(e, openai.APITimeoutError):
                what = f"no answer within {self.timeout:g} s"
            else:
                what = f"connection error ({self._scrub(str(e.__cause__ or e))})".replace("\n", " ")
            raise MinitfError(f"LLM server {self._server}: {what}; gave up {self._gave_up} "
                              f"in {seconds:.1f} s") from None
        except openai.APIStatusError as e:
            self._count(self.max_retries if e.status_code in _RETRIED_STATUSES else 0)
            raise
        self._count(raw.retries_taken)
        return _parse_completion(raw.parse(), self._server)

    def _count(self, retries: int) -> None:
        with self._lock:
            self.http_attempts += retries + 1
            self.retries += retries

    # ---------------------------------------------------------------- cache

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.json" if self.cache_dir is not None else None

    def _cache_read(self, key: str) -> dict[str, Any] | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            response = entry["response"]
            return {
                "text": response["text"],
                "logprobs": response.get("logprobs"),
                "finish_reason": response.get("finish_reason"),
                "model": response.get("model"),
            }
        except (OSError, ValueError, KeyError, TypeError) as e:
            warn(f"{path}: unreadable LLM cache entry ({e}); asking the server again")
            return None

    def _cache_write(self, key: str, messages: list[dict[str, Any]], params: dict[str, Any], response: dict[str, Any]) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        entry = {
            "key": key,
            "prompt_format_version": PROMPT_FORMAT_VERSION,
            "request": {"model": self.model, "messages": messages, "params": params},
            "response": response,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        text = self._scrub(json.dumps(entry, ensure_ascii=False, indent=1))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise MinitfError(f"{self.cache_dir}: cannot write the LLM cache ({e.strerror or e})") from None


def _parse_completion(completion: Any, server: str) -> dict[str, Any]:
    """Text, per-token logprobs, finish reason and model from an openai ChatCompletion."""
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise MinitfError(f"LLM server {server}: response without choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None) or ""
    logprobs = None
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if content:
        logprobs = [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "top_logprobs": [
                    {"token": top.token, "logprob": top.logprob} for top in (entry.top_logprobs or [])
                ],
            }
            for entry in content
        ]
    return {
        "text": text,
        "logprobs": logprobs,
        "finish_reason": getattr(choice, "finish_reason", None),
        "model": getattr(completion, "model", None),
    }
