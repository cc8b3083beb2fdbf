"""A small chat-completions client: cached, budgeted, with bounded concurrency.

Talks to OpenAI or any OpenAI-compatible server (vLLM, llama.cpp, Ollama …) through the official
``openai`` package, created lazily on the first cache miss, so nothing here needs a key at import
time or when every answer is cached. Its parts, each in its own module:

* credentials (``minitf.explain.credentials``): the server from ``base_url`` or ``OPENAI_BASE_URL``
  (default: OpenAI), the key from ``OPENAI_API_KEY``; the key never printed, logged or cached, error
  messages scrubbed of it;
* the response cache (``minitf.explain.cache``): one JSON file per request, keyed by the sha256 of
  (server, model, messages, params, PROMPT_FORMAT_VERSION);
* the budget (``minitf.explain.budget``): ``max_calls`` caps the requests sent to the server (cache
  misses; a request's retries count once); the next miss raises ``BudgetExhausted``, and what was
  answered so far is cached, so a rerun continues where it stopped.

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

The defaults below (model, timeout, retries, concurrency) are the only ones: the CLI and the study use them.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait, FIRST_EXCEPTION
from pathlib import Path
from typing import Any, Sequence

from minitf.errors import MinitfError
from minitf.explain.budget import BudgetExhausted, CallBudget  # noqa: F401  (BudgetExhausted: the client's error)
from minitf.explain.cache import ResponseCache, cache_key
from minitf.explain.credentials import MISSING_KEY_MESSAGE, Credentials, redact_url, server_id  # noqa: F401
from minitf.util.fmt import count

log = logging.getLogger(__name__)

DEFAULT_LLM = "gpt-4o-mini"  # the LLM asked when none is named (--llm; a study with OPENAI_API_KEY set)
DEFAULT_TIMEOUT = 60.0  # seconds per HTTP attempt (--timeout); a long explanation from a slow server needs it
DEFAULT_MAX_RETRIES = 2  # the openai client's retries after the first attempt (--max-retries)
DEFAULT_CONCURRENCY = 4  # requests in flight in complete_many (--concurrency)
_RETRIED_STATUSES = {408, 409, 429} | set(range(500, 600))  # what the openai client retries
_LOGPROB_PARAMS = ("logprobs", "top_logprobs")
_STATUS_HINTS = {
    401: ": check OPENAI_API_KEY",
    403: ": check OPENAI_API_KEY and the model's access",
    404: ": check the LLM model name and `base_url`",
}


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
        server: the server's name in messages and cache keys (``credentials.server_id``).
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
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        if not model:
            raise MinitfError("the LLM model name must not be empty", param="model")
        if concurrency < 1:
            raise MinitfError(f"`concurrency`: must be at least 1, got {concurrency}", param="concurrency")
        if max_retries < 0:
            raise MinitfError(f"`max_retries`: must be 0 or more, got {max_retries}", param="max_retries")
        if timeout <= 0:
            raise MinitfError(f"`timeout`: must be positive, got {timeout}", param="timeout")
        self.model = model
        self.base_url = base_url
        self.budget = CallBudget(max_calls)
        self.credentials = Credentials.from_env(base_url)
        self.server = self.credentials.server
        self.cache = ResponseCache(cache_dir)
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries

        self.cache_hits = 0
        self.http_attempts = 0
        self.retries = 0
        self.logprobs_supported = True

        self._lock = threading.Lock()
        self._client: Any = None

    def __repr__(self) -> str:
        return f"LLM(model={self.model!r}, base_url={self.base_url!r}, cache_dir={str(self.cache_dir)!r})"

    @property
    def cache_dir(self) -> Path | None:
        return self.cache.folder

    @property
    def max_calls(self) -> int | None:
        return self.budget.max_calls

    @property
    def calls_made(self) -> int:
        return self.budget.calls_made

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

    def request_key(self, request: dict[str, Any]) -> str:
        """The cache key of one request ``{"messages", **params}``, as :meth:`complete_many` computes it."""
        return cache_key(self.server, self.model, request["messages"],
                         {k: v for k, v in request.items() if k != "messages"})

    def is_cached(self, request: dict[str, Any]) -> bool:
        """Whether the answer to ``request`` is in the cache (then asking costs no call); counts nothing."""
        return self.cache.get(self.request_key(request)) is not None

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """One chat completion, from the cache or the server.

        ``params`` are chat-completions parameters (``max_tokens``, ``temperature``, ``logprobs``,
        ``top_logprobs`` …). Returns ``{"text": str, "logprobs": list | None, "finish_reason":
        str | None, "model": str | None, "cached": bool}``; ``logprobs`` lists the generated tokens
        as ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}, …]}``. Raises BudgetExhausted
        when the answer is not cached and ``max_calls`` requests were sent.
        """
        key = cache_key(self.server, self.model, messages, params)
        cached = self.cache.get(key)
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return {**cached, "cached": True}
        self.cache.check_writable()  # before the request: a cache that cannot keep its answer costs nothing
        self.budget.spend(cache_hits=self.cache_hits)
        response = self._request(messages, params)
        self.cache.put(key, {"model": self.model, "messages": messages, "params": params}, response,
                       scrub=self.credentials.scrub)
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

    # ---------------------------------------------------------------- the openai client

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            key = self.credentials.api_key()
            try:
                import openai
            except ImportError as e:  # pragma: no cover - dependency missing
                raise MinitfError("openai: the package is not installed: pip install openai") from e
            self._client = openai.OpenAI(
                api_key=key,
                base_url=self.credentials.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
            return self._client

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
                log.info("server %s rejected logprobs (HTTP %s); retrying without", self.server, e.status_code)
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
        detail = self.credentials.scrub(str(getattr(e, "message", "") or e)).replace("\n", " ")
        hint = _STATUS_HINTS.get(e.status_code, "")
        if e.status_code in _RETRIED_STATUSES:
            hint += f" {self._gave_up}"
        return MinitfError(f"LLM server {self.server}: HTTP {e.status_code}{hint} ({detail})")

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
                what = f"connection error ({self.credentials.scrub(str(e.__cause__ or e))})".replace("\n", " ")
            raise MinitfError(f"LLM server {self.server}: {what}; gave up {self._gave_up} "
                              f"in {seconds:.1f} s") from None
        except openai.APIStatusError as e:
            self._count(self.max_retries if e.status_code in _RETRIED_STATUSES else 0)
            raise
        self._count(raw.retries_taken)
        try:  # a body that is not JSON (a proxy's HTML page, a truncated answer) is the server's fault: one line
            completion = raw.parse()
            if isinstance(completion, (str, bytes)):
                raise ValueError("not JSON")
            return _parse_completion(completion, self.server)
        except (ValueError, TypeError, AttributeError):
            body = self.credentials.scrub(raw.http_response.text[:80]).replace("\n", " ")
            raise MinitfError(f"LLM server {self.server}: HTTP {raw.status_code} with a body that is not a chat "
                              f"completion ({body!r})") from None

    def _count(self, retries: int) -> None:
        with self._lock:
            self.http_attempts += retries + 1
            self.retries += retries


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
