"""Guard rails (issue 26): every bad input is one line on stderr, a non-zero exit and nothing left behind; a
trace's memory is bounded by its batch, not its prompt count. Each case runs the CLI in a subprocess."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import minitf
import minitf.trace as trace_module
from minitf.names import Neuron
from minitf.prompts import prompts_from_texts
from minitf.trace import trace
from minitf.util.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
NEURON = "L3N872"  # the README's explain example: it has differential heads on tiny, so explain asks the LLM


def cli(*args: str, cwd: Path = ROOT, limit_mb: int | None = None, **env: str) -> subprocess.CompletedProcess:
    def limit():  # the child's address space (numpy's threads reserve it too: one thread)
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    environ = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit if limit_mb else None)


def one_line(r: subprocess.CompletedProcess, code: int = 1) -> str:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


class Server:
    """A chat-completions server that answers 200 with ``body`` (bytes) and counts the requests."""

    def __init__(self, body: bytes):
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def completion(text: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture
def llm_env(tmp_path):
    return {"OPENAI_API_KEY": "sk-test", "MINITF_CACHE_DIR": str(tmp_path / "cache")}


def test_llm_answer_not_json_is_one_line(tmp_path, llm_env):
    server = Server(b"<html>502 Bad Gateway</html>")
    r = cli("explain", "--neuron", NEURON, "--base-url", server.url, "--llm", "m",
            "--cache-dir", str(tmp_path / "cache"), **llm_env)
    assert "with a body that is not a chat completion ('<html>502 Bad Gateway</html>')" in one_line(r)
    assert server.requests >= 1 and not list((tmp_path / "cache").rglob("*.tmp"))


def test_empty_explanation_says_so(tmp_path, llm_env):
    server = Server(completion(""))
    cache = str(tmp_path / "cache")
    r = cli("explain", "--neuron", NEURON, "--base-url", server.url, "--llm", "m", "--cache-dir",
            cache, **llm_env)
    assert r.returncode == 0, r.stderr
    line = one_line(cli("score", "--neuron", NEURON, "--base-url", server.url, "--llm", "m",
                        "--cache-dir", cache, **llm_env))
    assert "explanation of L3N872" in line and "was empty" in line and "first" not in line


def test_unwritable_cache_dir_sends_no_request(tmp_path, llm_env):
    server = Server(completion("Yes"))
    (tmp_path / "file").write_text("")  # a cache folder under a file cannot be made (read-only for root too)
    r = cli("explain", "--neuron", NEURON, "--base-url", server.url, "--llm", "m",
            "--cache-dir", str(tmp_path / "file" / "cache"), **llm_env)
    assert "cannot write" in one_line(r) and server.requests == 0


def test_huge_layer_range_is_refused_before_it_is_built():
    line = one_line(cli("neurons", "--layer", "0-2000000000"), code=2)  # a usage error: exit 2, as every bad flag
    assert line == "error: --layer 0-2000000000: layer 2000000000 is above 1000, the most any model here has"


def test_prompt_file_that_never_ends(tmp_path):
    assert one_line(cli("trace", "--neuron", "L1N2", "--prompts", "/dev/zero")) == \
        "error: /dev/zero: is a device, not a prompt file"
    endless = tmp_path / "endless.txt"
    endless.write_text("word " * 40_000)  # one line of 200,000 characters
    assert "prompt 1 is over 100000 characters" in one_line(cli("trace", "--neuron", "L1N2", "--prompts", str(endless)))


def test_fractional_config_size(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(ROOT / "weights" / "tiny", folder, ignore=shutil.ignore_patterns("corpus*"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"n_layer": 6.7}))
    assert one_line(cli("run", "--model", str(folder), "--text", "hi")).endswith(
        "config.json: bad value (n_layer 6.7 is not an integer)")


def test_atomic_write_interrupted_right_after_creating_its_temp(tmp_path, monkeypatch):
    real_open = os.open

    def open_then_interrupt(*args, **kwargs):  # Ctrl-C lands just after the temp file exists
        os.close(real_open(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "index.html", "page")
    assert list(tmp_path.iterdir()) == []


def test_trace_memory_is_bounded_by_the_batch(tmp_path):
    """600 prompts under a 600 MiB address space: a trace holding every prompt's arrays at once (~0.9 MB each
    on tiny, the code before batching) runs out of memory here (checked by hand); batched it fits."""
    words = "the cat sat on a mat and then it ran to see the king of all lands who was very old".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, rng.integers(3, 13))) for _ in range(600)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(lines) + "\n")
    r = cli("trace", "--neuron", "L3N5", "--prompts", str(prompts), "--no-progress", "--json", limit_mb=600)
    assert r.returncode == 0, r.stderr[-500:]
    assert len(json.loads(r.stdout)["prompts"]) == 600


def test_batched_trace_equals_one_batch(monkeypatch):
    model = minitf.load("tiny")
    texts = ["The cat sat on the mat", "And the king said unto them", "It was a dark and stormy night, and",
             "Once upon a time there", "the LORD thy God", "He went to the market to buy", "In the beginning"]
    prompts = prompts_from_texts(model, texts)
    whole = trace(model, Neuron(3, 872), prompts).to_json()
    monkeypatch.setattr(trace_module, "trace_batches", lambda m, n, tokens: [list(range(i, min(i + 3, len(tokens))))
                                                                            for i in range(0, len(tokens), 3)])
    batched = trace(model, Neuron(3, 872), prompts).to_json()

    def same(a, b, where="trace"):
        if isinstance(a, float) or isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-5), where
        elif isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                same(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}[{i}]")
        else:
            assert a == b, where

    assert any(h["ablation"] for h in whole["heads"])  # the ablation drops are compared too
    same(whole, batched)


def test_study_skipped_neuron_apart_and_resume_from_elsewhere(tmp_path):
    """L4N340: no document of tiny's corpus activates it, so the study skips it: the table, study.json and the
    site count it as skipped, not studied. The corpus is stored absolute, so a resume from another folder works,
    and so does the relative form of older settings.json files when it names the same file."""
    names = tmp_path / "neurons.txt"
    names.write_text("L4N340\nL3N872\n")
    out = tmp_path / "study"
    args = ["study", "--neurons", str(names), "--out", str(out), "--n-prompts", "10", "--protocol", "minitf", "--no-progress"]
    env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    first = cli(*args, "--corpus", "weights/tiny/corpus.txt.gz", **env)
    assert first.returncode == 0, first.stderr
    table = first.stdout.split("\n\n")[0]  # the per-layer table (the paper's aggregates follow a blank line)
    rows = {line.split()[0]: line.split()[1:3] for line in table.splitlines()[2:]}
    assert first.stdout.splitlines()[1].split()[:3] == ["layer", "studied", "skipped"]
    assert rows == {"3": ["1", "0"], "4": ["0", "1"], "all": ["1", "1"]}
    study = json.loads((out / "study.json").read_text())
    assert (study["aggregates"]["all"]["neurons_traced"], study["aggregates"]["all"]["neurons_without_prompts"]) == (1, 1)
    assert "<th>skipped (no prompt)</th>" in (out / "index.html").read_text()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["corpus"] == str(ROOT / "weights" / "tiny" / "corpus.txt.gz")

    again = cli(*args, "--corpus", str(ROOT / "weights" / "tiny" / "corpus.txt.gz"), cwd=tmp_path, **env)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    settings["settings"]["corpus"] = "weights/tiny/corpus.txt.gz"  # as older versions stored it
    (out / "settings.json").write_text(json.dumps(settings))
    elsewhere = cli(*args, "--corpus", str(ROOT / "weights" / "tiny" / "corpus.txt.gz"), cwd=tmp_path, **env)
    assert "holds a study made with corpus = " in one_line(elsewhere)  # the relative one names no such file here
    assert cli(*args, "--corpus", str(ROOT / "weights" / "tiny" / "corpus.txt.gz"), **env).returncode == 0
