"""A small chat-completions client: on-disk cache, bounded concurrency, retries, a call budget.

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
    JSON of ``(model, messages, params, PROMPT_FORMAT_VERSION)``; the server URL is not part of
    the key. The file holds the request (model, messages, params; no key, no URL) and the
    response (text, per-token logprobs, finish reason). Written atomically (temp file +
    ``os.replace``). An unreadable cache file is treated as a miss and rewritten.

Retries
    On HTTP 429, 5xx, timeouts and connection errors, up to ``max_retries`` retries with
    exponential backoff ``retry_base_delay * 2**attempt`` (capped at ``retry_max_delay``, at least
    a 429's ``Retry-After``), times a random jitter factor in [0.5, 1.5). The openai client's own
    retries are off. Other errors (400, 401 …) fail at once. A request with ``logprobs`` that the
    server rejects with 400/422 is retried once without ``logprobs``/``top_logprobs``; if that
    works, later requests leave them out (``logprobs_supported`` becomes False).

Budget
    ``max_calls`` caps the number of requests sent to the server (cache misses; a request's
    retries count once). The next miss raises ``MinitfError("--max-calls N reached: …")``; what was
    answered so far is cached, so a rerun continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait, FIRST_EXCEPTION
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from minitf.errors import MinitfError
from minitf.explain import PROMPT_FORMAT_VERSION

log = logging.getLogger(__name__)

DEFAULT_SERVER = "https://api.openai.com/v1"
NO_KEY_PLACEHOLDER = "none"
MISSING_KEY_MESSAGE = (
    "OPENAI_API_KEY is not set: export it, or pass --base-url for a local OpenAI-compatible server"
)
_LOGPROB_PARAMS = ("logprobs", "top_logprobs")
_STATUS_HINTS = {
    401: ": check OPENAI_API_KEY",
    403: ": check OPENAI_API_KEY and the model's access",
    404: ": check --model and --base-url",
}


def cache_key(model: str, messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of (model, messages, params, PROMPT_FORMAT_VERSION)."""
    payload = {
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


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(self, status: str, retry_after: float | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


class LLM:
    """Cached, budgeted, retrying chat-completions client.

    Args:
        model: model name sent to the server (part of the cache key).
        base_url: server URL, e.g. ``http://127.0.0.1:8000/v1``; default ``OPENAI_BASE_URL`` or OpenAI.
        cache_dir: directory for the response cache (created on first write); None disables caching.
        max_calls: at most this many requests sent to the server; None for no limit.
        concurrency: threads used by :meth:`complete_many`.
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt (429, 5xx, timeouts, connection errors).
        retry_base_delay: first backoff delay in seconds (doubles per retry).
        retry_max_delay: cap on one backoff delay in seconds.

    Attributes (counters, safe to read after a run):
        calls_made: requests sent to the server (cache misses), retries not counted.
        cache_hits: requests answered from the cache.
        http_attempts: HTTP requests sent, retries and the logprobs fallback included.
        retries: retries after retryable failures.
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
        timeout: float = 60.0,
        max_retries: int = 4,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 30.0,
    ) -> None:
        if not model:
            raise MinitfError("--llm: the LLM model name must not be empty")
        if max_calls is not None and max_calls < 0:
            raise MinitfError(f"--max-calls: must be 0 or more, got {max_calls}")
        if concurrency < 1:
            raise MinitfError(f"--concurrency: must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise MinitfError(f"--max-retries: must be 0 or more, got {max_retries}")
        if timeout <= 0:
            raise MinitfError(f"--timeout: must be positive, got {timeout}")
        self.model = model
        self.base_url = base_url
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_calls = max_calls
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay

        self.calls_made = 0
        self.cache_hits = 0
        self.http_attempts = 0
        self.retries = 0
        self.logprobs_supported = True

        self._lock = threading.Lock()
        self._client: Any = None
        self._server = ""
        self._secret: str | None = None
        self._rng = random.Random()

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
        key = cache_key(self.model, messages, params)
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
            key = cache_key(self.model, request["messages"], params)
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
                    f"--max-calls {self.max_calls} reached: {self.calls_made} calls made, "
                    f"{self.cache_hits} cache hits; answers so far are cached, rerun with a higher "
                    "--max-calls to continue"
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
                max_retries=0,
            )
            return self._client

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    # ---------------------------------------------------------------- requests

    def _request(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """Send one request with retries; drop logprobs once if the server rejects them."""
        client = self._get_client()
        import openai

        send = dict(params)
        if not self.logprobs_supported:
            send = {k: v for k, v in send.items() if k not in _LOGPROB_PARAMS}
        try:
            return self._with_retries(client, messages, send)
        except openai.APIStatusError as e:
            if e.status_code in (400, 422) and any(k in send for k in _LOGPROB_PARAMS):
                log.info("server %s rejected logprobs (HTTP %s); retrying without", self._server, e.status_code)
                without = {k: v for k, v in send.items() if k not in _LOGPROB_PARAMS}
                try:
                    response = self._with_retries(client, messages, without)
                except openai.APIStatusError as e2:
                    raise self._status_error(e2) from None
                with self._lock:
                    self.logprobs_supported = False
                return response
            raise self._status_error(e) from None

    def _status_error(self, e: Any) -> MinitfError:
        detail = self._scrub(str(getattr(e, "message", "") or e)).replace("\n", " ")
        hint = _STATUS_HINTS.get(e.status_code, "")
        return MinitfError(f"LLM server {self._server}: HTTP {e.status_code}{hint} ({detail})")

    def _with_retries(self, client: Any, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """Attempts with backoff; non-retryable openai.APIStatusError propagates."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(client, messages, params)
            except _Retryable as failure:
                if attempt == attempts - 1:
                    raise MinitfError(
                        f"LLM server {self._server}: {failure.status} after {attempts} attempts "
                        f"(--max-retries {self.max_retries})"
                    ) from None
                delay = self._backoff(attempt, failure.retry_after)
                log.info("LLM server %s: %s; retry %d in %.2fs", self._server, failure.status, attempt + 1, delay)
                with self._lock:
                    self.retries += 1
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.retry_max_delay, self.retry_base_delay * 2**attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_max_delay))
        with self._lock:
            jitter = self._rng.uniform(0.5, 1.5)
        return delay * jitter

    def _attempt(self, client: Any, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """One HTTP request; retryable failures become _Retryable."""
        import openai

        with self._lock:
            self.http_attempts += 1
        try:
            completion = client.chat.completions.create(model=self.model, messages=messages, **params)
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {self.timeout:g}s") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise _Retryable(f"connection error ({self._scrub(str(cause))})") from None
        except openai.APIStatusError as e:
            if e.status_code == 429 or e.status_code >= 500:
                raise _Retryable(f"HTTP {e.status_code}", _retry_after(e)) from None
            raise
        return _parse_completion(completion, self._server)

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
            log.warning("%s: unreadable cache entry (%s); asking the server again", path, e)
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


def _retry_after(e: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (numeric form only), else None."""
    try:
        value = e.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError, TypeError):
        return None


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
