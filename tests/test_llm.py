"""minitf.explain.llm against a real HTTP server on 127.0.0.1 speaking the chat-completions protocol.

The server (``FakeServer``) runs in a thread on port 0 and answers ``POST /v1/chat/completions``
with scripted behaviour: a queue of actions (HTTP errors, a slow reply, a given text) consumed one
per request, then normal answers from ``answer(body)``. Requests go through the real ``openai``
client with ``base_url=http://127.0.0.1:PORT/v1``, which does the retries; the scripted errors carry
``retry-after-ms: 1`` (honoured by the client) so the tests need not wait for its 0.5 s backoff.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest

from minitf.errors import MinitfError
from minitf.explain.driver import SCORE_PARAMS, HeadExamples, evaluate_head
from minitf.explain.llm import LLM, MISSING_KEY_MESSAGE, cache_key, redact_url, server_id

SECRET = "sk-test-SECRET-0123456789abcdef"


# ------------------------------------------------------------------------------------- server


class FakeServer:
    """Threaded chat-completions server with scripted answers.

    ``script`` holds actions consumed one per request, in order:
        ``("status", code)``          reply with that HTTP error (JSON error body);
        ``("status", code, headers)`` … with these headers (instead of ``retry-after-ms: 1``);
        ``("sleep", seconds)``        wait, then answer normally (the client may have given up);
        ``("text", text)``            answer with this text.
    With the script empty, the reply text is ``answer(body)``. ``reject_logprobs`` makes every
    request that asks for logprobs fail with 400, like servers without logprob support.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple] = []
        self.answer: Callable[[dict[str, Any]], str] = lambda body: "Yes"
        self.reject_logprobs = False
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "authorization": self.headers.get("Authorization"), "body": body}
                    )
                    action = server.script.pop(0) if server.script else None
                try:
                    server.respond(self, body, action)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    @classmethod
    def serving(cls, answer: Callable[[dict[str, Any]], str] | None = None):
        """A started server answering ``answer(body)`` (default "Yes"), stopped after: ``yield from`` it in a
        fixture."""
        srv = cls()
        if answer is not None:
            srv.answer = answer
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()

    def respond(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], action: tuple | None) -> None:
        if handler.path != "/v1/chat/completions":
            return self.send(handler, 404, {"error": {"message": f"no route {handler.path}"}})
        text = None
        if action is not None:
            kind = action[0]
            if kind == "status":
                headers = action[2] if len(action) > 2 else {"retry-after-ms": "1"}
                return self.send(handler, action[1], {"error": {"message": f"scripted {action[1]}", "type": "x"}}, headers)
            if kind == "sleep":
                time.sleep(action[1])
            elif kind == "text":
                text = action[1]
        if self.reject_logprobs and body.get("logprobs"):
            return self.send(handler, 400, {"error": {"message": "logprobs are not supported", "type": "invalid_request_error"}})
        if text is None:
            text = self.answer(body)
        self.send(handler, 200, completion(body, text))

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)


def completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    """A chat.completion response; with logprobs when asked (the answer at -0.1, the other at -2.4)."""
    logprobs = None
    if body.get("logprobs"):
        other = {"Yes": "No", "No": "Yes"}.get(text, "Yes")
        top = [
            {"token": text, "logprob": -0.1, "bytes": None},
            {"token": other, "logprob": -2.4, "bytes": None},
            {"token": " maybe", "logprob": -5.0, "bytes": None},
        ][: body.get("top_logprobs") or 0]
        logprobs = {"content": [{"token": text, "logprob": -0.1, "bytes": None, "top_logprobs": top}]}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


@pytest.fixture
def server():
    yield from FakeServer.serving()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def make_llm(server: FakeServer, tmp_path: Path, **kw: Any) -> LLM:
    kw = {"cache_dir": tmp_path / "cache", "max_retries": 3, "timeout": 5.0, **kw}
    return LLM("test-model", server.url, **kw)


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------- tests


def test_normal_answers_and_logprobs(server: FakeServer, tmp_path: Path) -> None:
    server.answer = lambda body: "No" if "neg" in body["messages"][-1]["content"] else "Yes"
    llm = make_llm(server, tmp_path)
    yes = llm.complete(msgs("pos"), **SCORE_PARAMS)
    no = llm.complete(msgs("neg"), **SCORE_PARAMS)
    assert (yes["text"], no["text"]) == ("Yes", "No")
    assert yes["cached"] is False and yes["finish_reason"] == "stop" and yes["model"] == "test-model"
    assert [t["token"] for t in yes["logprobs"][0]["top_logprobs"]] == ["Yes", "No", " maybe"]
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["authorization"] == f"Bearer {SECRET}"
    assert sent["body"]["model"] == "test-model"
    assert sent["body"]["max_tokens"] == 1 and sent["body"]["temperature"] == 0
    assert sent["body"]["logprobs"] is True and sent["body"]["top_logprobs"] == 5
    assert llm.stats() == {"calls_made": 2, "cache_hits": 0, "http_attempts": 2, "retries": 0}


def test_cache_rerun_makes_no_requests(server: FakeServer, tmp_path: Path) -> None:
    requests = [{"messages": msgs(f"prompt {i}"), **SCORE_PARAMS} for i in range(6)]
    first = make_llm(server, tmp_path).complete_many(requests)
    assert len(server.requests) == 6
    second_llm = make_llm(server, tmp_path)
    second = second_llm.complete_many(requests)
    assert len(server.requests) == 6  # nothing new reached the server
    assert second_llm.calls_made == 0 and second_llm.cache_hits == 6
    strip = lambda r: {k: v for k, v in r.items() if k != "cached"}
    assert [strip(r) for r in first] == [strip(r) for r in second]
    assert all(r["cached"] for r in second)
    # one JSON file per request, named by the cache key, holding request and response
    files = sorted((tmp_path / "cache").glob("*.json"))
    assert len(files) == 6
    entry = json.loads(files[0].read_text())
    assert set(entry) >= {"key", "request", "response"}
    assert files[0].stem == cache_key(server.url, "test-model", entry["request"]["messages"], entry["request"]["params"])
    assert not list((tmp_path / "cache").glob(".*"))  # no temp files left behind


def test_cache_key_depends_on_server_params_and_model() -> None:
    s = "http://a/v1"
    base = cache_key(s, "m", msgs("x"), {"max_tokens": 1})
    assert base == cache_key(s, "m", msgs("x"), {"max_tokens": 1})
    assert base != cache_key("http://b/v1", "m", msgs("x"), {"max_tokens": 1})
    assert base != cache_key(s, "m2", msgs("x"), {"max_tokens": 1})
    assert base != cache_key(s, "m", msgs("x"), {"max_tokens": 2})
    assert base != cache_key(s, "m", msgs("y"), {"max_tokens": 1})
    # canonical: parameter order does not matter
    assert cache_key(s, "m", msgs("x"), {"a": 1, "b": 2}) == cache_key(s, "m", msgs("x"), {"b": 2, "a": 1})
    # the server is the base URL without credentials, query or trailing slash
    assert server_id("http://user:pw@h:8000/v1/?k=1") == server_id("http://h:8000/v1") == "http://h:8000/v1"
    assert server_id(None) == "https://api.openai.com/v1"


def test_api_key_never_in_cache(server: FakeServer, tmp_path: Path) -> None:
    server.script = [("status", 500)]
    llm = make_llm(server, tmp_path)
    llm.complete(msgs("hello"), **SCORE_PARAMS)
    llm.complete(msgs("explain"), max_tokens=50, temperature=0)
    assert server.requests[0]["authorization"] == f"Bearer {SECRET}"  # the key was really used
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 2
    for path in files:
        text = path.read_text()
        assert SECRET not in text and SECRET[:12] not in text
        assert server.url not in text and "127.0.0.1" not in text
    assert SECRET not in repr(llm)


def test_retry_after_429(server: FakeServer, tmp_path: Path) -> None:
    server.script = [("status", 429, {"Retry-After": "0.01"})]
    llm = make_llm(server, tmp_path)
    assert llm.complete(msgs("x"))["text"] == "Yes"
    assert len(server.requests) == 2
    assert llm.stats() == {"calls_made": 1, "cache_hits": 0, "http_attempts": 2, "retries": 1}


def test_retry_after_500(server: FakeServer, tmp_path: Path) -> None:
    server.script = [("status", 500), ("status", 503)]
    llm = make_llm(server, tmp_path)
    assert llm.complete(msgs("x"))["text"] == "Yes"
    assert len(server.requests) == 3
    assert llm.retries == 2 and llm.calls_made == 1


def test_retry_after_timeout(server: FakeServer, tmp_path: Path) -> None:
    server.script = [("sleep", 3.0)]
    llm = make_llm(server, tmp_path, timeout=0.3)
    start = time.monotonic()
    assert llm.complete(msgs("x"))["text"] == "Yes"
    assert time.monotonic() - start < 2.0  # the client did not wait for the slow reply (0.3 s + ≤ 0.5 s backoff)
    assert len(server.requests) == 2 and llm.retries == 1


def test_gives_up_after_max_retries(server: FakeServer, tmp_path: Path) -> None:
    server.script = [("status", 500)] * 10
    llm = make_llm(server, tmp_path, max_retries=2)
    with pytest.raises(MinitfError) as info:
        llm.complete(msgs("x"))
    message = str(info.value)
    assert server.url in message and "HTTP 500" in message and "3 attempts" in message
    assert "\n" not in message and SECRET not in message
    assert len(server.requests) == 3
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.json"))


def test_no_retry_on_401(server: FakeServer, tmp_path: Path) -> None:
    server.script = [("status", 401)]
    llm = make_llm(server, tmp_path)
    with pytest.raises(MinitfError, match=r"HTTP 401: check OPENAI_API_KEY"):
        llm.complete(msgs("x"))
    assert len(server.requests) == 1


def test_key_not_logged(server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.script = [("status", 429), ("status", 401)]
    with pytest.raises(MinitfError):
        make_llm(server, tmp_path).complete(msgs("x"))
    assert "retry 1" in caplog.text  # the openai client's retry log line was captured
    assert SECRET not in caplog.text


def dead_url() -> str:
    dead = FakeServer()  # bound but never started, then closed: the port refuses connections
    url = dead.url
    dead.httpd.server_close()
    return url


def test_connection_refused_is_retried_then_fails_in_bounded_time(tmp_path: Path) -> None:
    url = dead_url()
    llm = LLM("test-model", url, cache_dir=tmp_path, max_retries=2, timeout=2.0)
    start = time.monotonic()
    with pytest.raises(MinitfError, match=r"connection error.*gave up after 3 attempts \(`max_retries` 2, "
                                          r"`timeout` 2 s per attempt\) in \d+\.\d s$") as info:
        llm.complete(msgs("x"))
    took = time.monotonic() - start
    assert url in str(info.value) and "\n" not in str(info.value)
    assert llm.http_attempts == 3 and llm.retries == 2
    assert 0.5 < took < 3.0  # the client's backoff 0.5 s + 1 s (minus jitter), nothing like 14–19 s
    quick = LLM("test-model", url, cache_dir=tmp_path, max_retries=0)
    start = time.monotonic()
    with pytest.raises(MinitfError, match=r"after 1 attempt \(`max_retries` 0, "):
        quick.complete(msgs("x"))
    assert time.monotonic() - start < 0.5


def test_servers_never_share_cache_entries(tmp_path: Path) -> None:
    """Two live servers with different answers and one cache: each gets its own answers back, on the first run
    and on a rerun; a dead server finds nothing cached, although both others' answers are."""
    a, b = FakeServer(), FakeServer()
    a.answer, b.answer = (lambda body: "from A"), (lambda body: "from B")
    a.start()
    b.start()
    try:
        requests = [{"messages": msgs(f"p{i}"), **SCORE_PARAMS} for i in range(3)]
        for _ in range(2):  # first run, then all from the cache
            got_a = make_llm(a, tmp_path).complete_many(requests)
            got_b = make_llm(b, tmp_path).complete_many(requests)
            assert [r["text"] for r in got_a] == ["from A"] * 3 and [r["text"] for r in got_b] == ["from B"] * 3
        assert len(a.requests) == len(b.requests) == 3 and got_a[0]["cached"] and got_b[0]["cached"]
        assert len(list((tmp_path / "cache").glob("*.json"))) == 6
        dead = LLM("test-model", dead_url(), cache_dir=tmp_path / "cache", max_retries=0)
        with pytest.raises(MinitfError, match="connection error"):
            dead.complete_many(requests)
        assert dead.cache_hits == 0
    finally:
        a.stop()
        b.stop()


def test_logprobs_unsupported_dropped_and_remembered(server: FakeServer, tmp_path: Path) -> None:
    server.reject_logprobs = True
    llm = make_llm(server, tmp_path)
    first = llm.complete(msgs("a"), **SCORE_PARAMS)
    assert first["text"] == "Yes" and first["logprobs"] is None
    assert len(server.requests) == 2  # rejected once, then sent without logprobs
    assert "logprobs" not in server.requests[1]["body"] and "top_logprobs" not in server.requests[1]["body"]
    assert llm.logprobs_supported is False
    llm.complete(msgs("b"), **SCORE_PARAMS)
    assert len(server.requests) == 3  # remembered: no second rejection
    assert "logprobs" not in server.requests[2]["body"]
    # cached under the requested params: a rerun hits the cache
    rerun = make_llm(server, tmp_path)
    rerun.complete(msgs("a"), **SCORE_PARAMS)
    assert rerun.cache_hits == 1 and len(server.requests) == 3


def test_max_calls_budget(server: FakeServer, tmp_path: Path) -> None:
    llm = make_llm(server, tmp_path, max_calls=2)
    llm.complete(msgs("1"))
    llm.complete(msgs("2"))
    llm.complete(msgs("1"))  # cache hits are free
    with pytest.raises(MinitfError, match=r"^`max_calls` 2 reached: 2 calls made, 1 cache hit;") as info:
        llm.complete(msgs("3"))
    assert info.value.param == "max_calls"
    assert len(server.requests) == 2
    assert llm.calls_made == 2 and llm.cache_hits == 1
    # zero budget still serves the cache
    cached_only = make_llm(server, tmp_path, max_calls=0)
    assert cached_only.complete(msgs("2"))["cached"] is True


def test_max_calls_budget_in_complete_many(server: FakeServer, tmp_path: Path) -> None:
    requests = [{"messages": msgs(f"p{i}")} for i in range(10)]
    llm = make_llm(server, tmp_path, max_calls=4, concurrency=3)
    with pytest.raises(MinitfError, match="`max_calls` 4 reached"):
        llm.complete_many(requests)
    assert len(server.requests) == 4
    assert len(list((tmp_path / "cache").glob("*.json"))) == 4  # what was answered is kept
    # a rerun with more budget continues from the cache
    more = make_llm(server, tmp_path, max_calls=6, concurrency=3)
    assert len(more.complete_many(requests)) == 10
    assert more.calls_made == 6 and more.cache_hits == 4 and len(server.requests) == 10


def test_complete_many_order_concurrency_and_dedup(server: FakeServer, tmp_path: Path) -> None:
    active = {"n": 0, "peak": 0}
    lock = threading.Lock()

    def answer(body: dict[str, Any]) -> str:
        with lock:
            active["n"] += 1
            active["peak"] = max(active["peak"], active["n"])
        time.sleep(0.05)
        with lock:
            active["n"] -= 1
        return body["messages"][-1]["content"].upper()

    server.answer = answer
    prompts = [f"p{i}" for i in range(8)] + ["p0", "p1"]  # two duplicates
    llm = make_llm(server, tmp_path, concurrency=4)
    results = llm.complete_many([{"messages": msgs(p), "max_tokens": 3} for p in prompts])
    assert [r["text"] for r in results] == [p.upper() for p in prompts]
    assert len(server.requests) == 8  # duplicates sent once
    assert 2 <= active["peak"] <= 4


def test_missing_key_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    llm = LLM("test-model", cache_dir=tmp_path)  # constructing needs no key
    with pytest.raises(MinitfError) as info:
        llm.complete(msgs("x"))
    assert str(info.value) == MISSING_KEY_MESSAGE
    assert str(info.value).startswith("OPENAI_API_KEY is not set: export it, or pass `base_url`")


def test_no_key_cache_hit_needs_no_key(server: FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_llm(server, tmp_path).complete(msgs("x"))
    monkeypatch.delenv("OPENAI_API_KEY")
    server.stop()
    offline = LLM("test-model", server.url, cache_dir=tmp_path / "cache")  # the same server, now down: cached
    assert offline.complete(msgs("x"))["cached"] is True
    # no key and no base URL means OpenAI, whose answers are not cached: the local server's must not be used
    default = LLM("test-model", cache_dir=tmp_path / "cache")
    with pytest.raises(MinitfError, match="OPENAI_API_KEY is not set"):
        default.complete(msgs("x"))
    # an OpenAI answer in the cache is served without a key
    (path,) = (tmp_path / "cache").glob("*.json")
    entry = json.loads(path.read_text())
    entry["response"]["text"] = "from OpenAI"
    key = cache_key(server_id(None), "test-model", msgs("x"), {})
    (tmp_path / "cache" / f"{key}.json").write_text(json.dumps(entry))
    assert default.complete(msgs("x"))["text"] == "from OpenAI"
    assert len(server.requests) == 1


def test_base_url_without_key_sends_placeholder(server: FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    make_llm(server, tmp_path).complete(msgs("x"))
    assert server.requests[0]["authorization"] == "Bearer none"


def test_base_url_from_environment(server: FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("OPENAI_API_KEY")
    LLM("test-model", cache_dir=tmp_path).complete(msgs("x"))
    assert len(server.requests) == 1


def test_corrupt_cache_entry_is_refetched(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    llm = make_llm(server, tmp_path)
    llm.complete(msgs("x"))
    (path,) = (tmp_path / "cache").glob("*.json")
    path.write_text("{ truncated")
    again = make_llm(server, tmp_path)
    assert again.complete(msgs("x"))["cached"] is False
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {path}: unreadable LLM cache entry") and err.count("\n") == 1
    assert json.loads(path.read_text())["response"]["text"] == "Yes"


def test_redact_url() -> None:
    assert redact_url("http://user:pw@host:8000/v1?token=abc") == "http://host:8000/v1"


def test_evaluate_head_end_to_end_with_malformed(server: FakeServer, tmp_path: Path) -> None:
    """Explanation + scoring through the real client; a "Maybe" answer is counted as malformed."""

    def answer(body: dict[str, Any]) -> str:
        user = body["messages"][-1]["content"]
        if body.get("max_tokens", 0) > 1:
            return "The head is active when the document is about a war."
        example = next(line for line in user.splitlines() if line.startswith("* "))
        if "Maybe" in example:
            return "Maybe"
        return "Yes" if "war" in example else "No"

    server.answer = answer
    train = HeadExamples("L4N100", "L2H3", " Israel", ["The war with", "A war in"], ["I visited", "Flights to"])
    test = HeadExamples(
        "L4N100", "L2H3", " Israel",
        active=["During the war,", "The war between Egypt and", "Maybe in"],
        inactive=["Holidays in", "A war film about"],
    )
    llm = make_llm(server, tmp_path)
    result = evaluate_head(llm, train, test)
    assert result.explanation == "The head is active when the document is about a war."
    assert (result.tp, result.fn, result.tn, result.fp) == (2, 0, 1, 1)
    assert result.n_malformed == 1 and result.n_test == 5 and not result.skipped
    assert result.balanced_accuracy == pytest.approx((1.0 + 0.5) / 2)
    assert result.roc_auc is not None
    assert len(server.requests) == 6  # 1 explanation + 5 answers
    # rerun: all from the cache
    again = evaluate_head(make_llm(server, tmp_path), train, test)
    assert len(server.requests) == 6
    assert again.to_dict() == result.to_dict()
