"""The HTML report: escaping and embedding in Python, then the real page in headless Chromium.

The browser tests drive Debian's chromium through the DevTools protocol over ``--remote-debugging-pipe``
(a small client below: JSON messages separated by NUL bytes on fds 3 and 4; no extra dependency). They
record every network request the page makes (``Network.requestWillBeSent``), every console message,
log entry (CSP violations land there), uncaught exception and JavaScript dialog, and check the DOM after
the page's script has run. A canary page first proves that this recorder does see a request, a CSP
violation, a console error and an exception, so that "nothing recorded" means something.
"""
from __future__ import annotations

import base64
import fcntl
import html.parser
import json
import os
import random
import re
import select
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from minitf.errors import MinitfError
from minitf.report.page import render_html, write_html

CHROMIUM = "/usr/bin/chromium"
GOLDEN = Path(__file__).resolve().parent / "golden"
NASTY = "<script>alert(1)</script>"
NASTY_IMG = "<img src=x onerror=alert(2)>"
NASTY_CLOSE = "</script><!--"

# ---------------------------------------------------------------------------------------------------------
# A hand-made trace with the schema of minitf.trace (per_position=True), untrusted text included
# ---------------------------------------------------------------------------------------------------------


def make_trace(n_prompts: int = 4, seed: int = 0) -> dict:
    rng = random.Random(seed)
    heads = [f"L{layer}H{h}" for layer in range(3) for h in range(4)]
    words = ["And the king said unto them", "and the lord spake unto moses", "she was not in the least",
             "Then Jesus answered and said"]
    prompts = []
    for n in range(n_prompts):
        if n == 3:  # untrusted text: a script, an image with a handler, a script-closer and a newline
            toks = ["<|endoftext|>", "Hello", " " + NASTY, " &amp;", " " + NASTY_IMG, "\n", " " + NASTY_CLOSE, " the"]
        else:
            ws = words[n % len(words)].split(" ")
            toks = ["<|endoftext|>", ws[0]] + [" " + w for w in ws[1:]]
        positions = []
        for i in range(len(toks)):
            a = max(-0.17, rng.gauss(0.2, 0.6)) if i else 0.0
            hs = sorted(((h, rng.gauss(0, 0.5)) for h in heads), key=lambda x: -x[1])[:5]
            positions.append({"activation": a, "pre": a + 0.1, "heads": [{"head": h, "effect": e + 0.02, "context": e}
                                                                              for h, e in hs]})
        act = 2.5 - 0.4 * n
        positions[-1]["activation"] = act
        top = []
        for j, h in enumerate(heads[:5]):
            eff = 1.2 - 0.25 * j
            src = [(len(toks) - 2 - j % 2, 0.6), (1 + j % 3, 0.3), (0, 0.07)]
            top.append({"head": h, "effect": eff + 0.03, "context": eff, "constant": 0.03, "active": j < 2,
                        "sources": [{"position": p, "token": toks[p], "effect": eff * s, "attention": 0.5 * s}
                                    for p, s in src]})
        prompts.append({"text": "".join(toks[1:]), "tokens": toks, "truncated": n == 2, "mined": None,
                        "activation": act, "pre": act + 0.2, "sigma": 1.1,
                        "components": {"embed": 0.1, "pos_embed": 0.0, "heads": 1.0, "attn_bias": [0.0] * 3,
                                       "mlp": [0.0] * 3, "constant": 0.1},
                        "identity_error": 1e-7, "active_heads": ["L0H0", "L0H1"], "top_heads": top,
                        "positions": positions})
    records = []
    for k, h in enumerate(heads):
        diff = h in ("L1H1", "L0H2")
        ablation = None
        if k < 5 or diff:
            ablation = {"mean_dpost": -0.1, "mean_dp": -0.012, "mean_dpost_active": -0.2,
                        "mean_dpost_inactive": -0.01, "mean_dp_active": -0.03, "mean_dp_inactive": -0.001, "ks": None}
        records.append({"head": h, "layer": int(h[1]), "index": int(h[3]), "mean_effect": 0.92 - 0.17 * k,
                        "std_effect": 0.2, "mean_context": 0.9 - 0.17 * k, "std_context": 0.2, "mean_constant": 0.02, "active_count": 2 if diff else (4 if k < 2 else 0),
                        "active_fraction": 0.5 if diff else (1.0 if k < 2 else 0.0), "differential": diff,
                        "ablation": ablation})
    card = {"name": "L3N100", "layer": 3, "index": 100, "token": {"id": 262, "str": " the"},
            "congruence": 0.412, "rank": 2, "layer_size": 64, "kurtosis": 14.2, "skew": 1.31, "class": "prediction",
            "promoted": [{"id": 200 + k, "token": t, "value": v} for k, (t, v) in enumerate(
                [(" the", 0.41), (" The", 0.33), (" thee", 0.21), (NASTY, 0.2), (" their", 0.18), ("\n", 0.12)])],
            "suppressed": [{"id": 300 + k, "token": t, "value": v} for k, (t, v) in enumerate(
                [(" and", -0.3), (" of", -0.25), (",", -0.2)])]}
    return {"schema_version": 2,
            "model": {"folder": "weights/<b>tiny</b>", "n_layer": 4, "n_head": 4, "d_mlp": 64, "n_ctx": 128},
            "neuron": card,
            "settings": {"rule": "sigma2", "scores": "paper", "include_same_layer": False, "candidates": 12,
                         "scores_note": "heads selected on their context part",
                         "effects": "effects are exact direct effects on the pre-activation", "bos": True,
                         "notes": [f"a note with {NASTY}"], "source": "top 4 mined from corpus.txt.gz, split train",
                         "corpus": "weights/tiny/corpus.txt.gz", "split": "train"},
            "prompts": prompts, "heads": records, "differential_heads": ["L0H2", "L1H1"],
            "identity_check": {"max_abs_error": 2.4e-7, "max_rel_error": 3.1e-8}}


HISTOGRAM = {"edges": [0.0, 0.5, 1.0, 2.0, 4.0, 8.0], "counts": [151234, 20410, 3120, 402, 37, 2, 0],
             "positions": 175205, "positive": 23971, "split": "train"}  # as minitf.index.build gives it
EXPLANATIONS = {"L0H2": {"explanation": f"Active after a verb of speech such as 'said' {NASTY}",
                         "balanced_accuracy": 0.78, "roc_auc": 0.83},
                "L1H1": {"explanation": "Active after 'unto'.", "balanced_accuracy": 0.55, "roc_auc": None}}


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.data = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]

    def handle_data(self, data):
        self.data.append(data)


def _embedded_json(page: str) -> str:
    m = re.search(r'<script type="application/json" id="minitf-data">(.*?)</script>', page, re.S)
    assert m, "no embedded data block"
    return m.group(1)


# ---------------------------------------------------------------------------------------------------------
# Without a browser
# ---------------------------------------------------------------------------------------------------------


def test_untrusted_text_is_escaped_and_the_data_cannot_close_its_script():
    page = render_html(make_trace(), EXPLANATIONS, HISTOGRAM)
    parser = _Tags()
    parser.feed(page)
    assert parser.tags.count("script") == 2  # the JSON data block and the page's own script, nothing injected
    assert "img" not in parser.tags and not [a for a in parser.attrs if a.startswith("on")]
    text = "".join(parser.data)
    assert NASTY in text and NASTY_IMG in text  # shown as text
    data = _embedded_json(page)
    assert "</" not in data and "<!--" not in data and "<" not in data
    decoded = json.loads(data)
    assert decoded["prompts"][3]["tokens"][6] == " " + NASTY_CLOSE  # the exact token survives the round trip
    # the page allows only its own script, by hash, and loads nothing
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", page)


def test_the_hand_made_trace_follows_the_trace_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
    schema = json.loads((GOLDEN.parent.parent / "docs" / "trace.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(make_trace(), schema)


def test_sections_follow_the_data():
    page = render_html(make_trace(), EXPLANATIONS, HISTOGRAM)
    assert "L3N100" in page and 'class="tok big"> the</span>' in page
    assert page.count('<article class=prompt') == 4
    assert "Explanations" in page and "0.780" in page  # the explanation table
    assert "log count" in page and "≤0" in page and "&gt;8" in page and "positive at 13.68%" in page
    assert "weights/tiny/corpus.txt.gz" in page and "prepended" in page and "2.4e−07" in page
    bare = render_html(make_trace(n_prompts=2))
    assert "Explanations" not in bare and "no activation histogram" in bare


def test_cards_as_neurons_py_writes_them_render_too():
    trace = make_trace(n_prompts=1)
    from minitf.trace import card_record

    trace["neuron"] = card_record({"layer": 3, "index": 100, "name": "L3N100", "token_id": 262, "token": " the",
                                   "promoted": [(262, " the", 0.41), (7, NASTY, 0.2)], "suppressed": [(9, " and", -0.3)],
                                   "congruence": 0.41, "rank": 1, "kurtosis": 12.5, "skew": 1.2, "class": "prediction"},
                                  trace["model"]["d_mlp"]).to_json()
    page = render_html(trace)
    assert 'class="tok big"> the</span>' in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "prediction" in page and NASTY not in page


def test_without_per_position_data_only_the_last_token_is_shaded():
    trace = make_trace(n_prompts=2)
    for p in trace["prompts"]:
        del p["positions"]
    page = render_html(trace)
    assert "Only the last token" in page
    assert len(re.findall(r'class="t[^"]*" data-i="\d+" style=', page)) == 2


def test_write_html_is_atomic_and_reports_bad_paths(tmp_path):
    out = write_html(tmp_path / "r.html", make_trace(n_prompts=1))
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temp file left behind
    with pytest.raises(MinitfError, match=r"missing.*does not exist"):
        write_html(tmp_path / "missing" / "r.html", make_trace(n_prompts=1))
    with pytest.raises(MinitfError, match="is a folder"):
        write_html(tmp_path, make_trace(n_prompts=1))
    with pytest.raises(MinitfError, match="^trace: missing key 'prompts'"):
        render_html({"neuron": {}, "model": {}, "settings": {}, "heads": []})


# ---------------------------------------------------------------------------------------------------------
# A minimal DevTools-protocol client over --remote-debugging-pipe
# ---------------------------------------------------------------------------------------------------------


class Browser:
    """Headless chromium driven over fds 3 (commands in) and 4 (replies and events out)."""

    def __init__(self, user_data_dir: Path, width: int = 1200, height: int = 1600):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # the child's ends above fd 4, so that dup2 to 3 and 4 cannot clobber one another
        hi_r, hi_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(out_w)
        self.log_path = user_data_dir.parent / "chromium.log"
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                "--disable-dev-shm-usage", "--disable-breakpad",
                f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]
        try:
            self.pid = os.posix_spawn(CHROMIUM, args, dict(os.environ), file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
                (os.POSIX_SPAWN_DUP2, hi_r, 3), (os.POSIX_SPAWN_DUP2, hi_w, 4)], setsid=True)
        finally:
            for fd in (hi_r, hi_w, log, devnull):
                os.close(fd)
        self.width, self.height = width, height
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session = None

    # -- wire
    def _send(self, method, params=None, session=True):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _read(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer in time; its log: {self._log_tail()}")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe; its log: {self._log_tail()}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, params=None, session=True, timeout=30.0):
        want = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method, timeout=30.0):
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e["method"] == method:
                return self.events.pop(i)
        while True:
            msg = self._read(deadline)
            if msg.get("method") == method:
                return msg
            if "method" in msg:
                self.events.append(msg)

    def _log_tail(self):
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    # -- pages
    def attach(self):
        targets = self.call("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        # the viewport exactly the window size (headless otherwise keeps some height for a window frame)
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False})

    def open(self, url, ready_expr="true"):
        """Navigate, wait for load and ``ready_expr``; returns what the page did (requests, errors, dialogs)."""
        self.events.clear()
        self.call("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")
        deadline = time.monotonic() + 10
        while not self.eval(ready_expr):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: never ready ({ready_expr})")
            time.sleep(0.05)
        time.sleep(0.2)  # let late console messages and requests arrive
        self.call("Runtime.evaluate", {"expression": "1"})  # drain events that came in the meantime
        return self.record()

    def record(self):
        out = {"requests": [], "console": [], "exceptions": [], "log": [], "dialogs": []}
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Network.requestWillBeSent":
                out["requests"].append(p["request"]["url"])
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                out["console"].append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                out["exceptions"].append(p["exceptionDetails"].get("exception", {}).get("description")
                                         or p["exceptionDetails"].get("text"))
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out["log"].append(p["entry"]["text"])
            elif m == "Page.javascriptDialogOpening":
                out["dialogs"].append(p["message"])
                self.call("Page.handleJavaScriptDialog", {"accept": True})
        return out

    def eval(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def mouse(self, kind, x, y):
        params = {"type": kind, "x": x, "y": y, "button": "left" if kind != "mouseMoved" else "none"}
        if kind != "mouseMoved":
            params["clickCount"] = 1
        self.call("Input.dispatchMouseEvent", params)

    def center(self, selector):
        """Scroll the element into view; its centre in viewport coordinates."""
        return self.eval(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: "center"}}); const r = e.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; }})()""")

    def screenshot(self, path, full_page=False):
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}
        else:
            self.eval("window.scrollTo(0, 0)")
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:
            os.killpg(self.pid, signal.SIGKILL)  # its own session (setsid): chromium and its children only
            os.waitpid(self.pid, 0)
        os.close(self._cmd_w)
        os.close(self._out_r)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium; .ci/run does) "
                    "to run the browser tests")
    folder = tmp_path_factory.mktemp("chromium")
    b = Browser(folder / "profile")
    try:
        b.attach()
        yield b
    finally:
        b.close()
        shutil.rmtree(folder, ignore_errors=True)


READY = "document.documentElement.getAttribute('data-ready') === '1'"


def test_the_recorder_sees_requests_csp_violations_and_errors(browser, tmp_path):
    """The canary: without it, an empty record would prove nothing."""
    (tmp_path / "open.html").write_text(
        '<!DOCTYPE html><img src="http://127.0.0.1:9/canary.png">'
        "<script>console.error('canary'); setTimeout(() => { throw new Error('boom') }, 0);</script>")
    got = browser.open((tmp_path / "open.html").as_uri())
    assert any(u.startswith("http://127.0.0.1:9/") for u in got["requests"])
    assert any("canary" in c for c in got["console"]) and any("boom" in x for x in got["exceptions"])
    (tmp_path / "csp.html").write_text(
        "<!DOCTYPE html><meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
        '<img src="http://127.0.0.1:9/blocked.png">')
    got = browser.open((tmp_path / "csp.html").as_uri())
    assert any("Content Security Policy" in x for x in got["log"] + got["console"]), got


@pytest.fixture(scope="module")
def report_page(browser, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_html(path, make_trace(), EXPLANATIONS, HISTOGRAM)
    return path, browser.open(path.as_uri(), READY)


def test_the_page_makes_no_request_and_logs_no_error(report_page):
    path, got = report_page  # the one request: the page itself
    assert got == {"requests": [path.as_uri()], "console": [], "exceptions": [], "log": [], "dialogs": []}


def test_untrusted_tokens_stay_text_in_the_browser(browser, report_page):
    dom = browser.eval("""(() => ({
        scripts: document.scripts.length,
        injected: document.querySelectorAll("img, iframe, object, embed, link, base, form, meta[http-equiv=refresh]")
            .length,
        handlers: [...document.querySelectorAll("*")]
            .filter(e => [...e.attributes].some(a => a.name.startsWith("on"))).length,
        text: document.body.innerText,
        token: document.querySelector("h1 .tok").textContent,
        title: document.title}))()""")
    assert dom["scripts"] == 2 and dom["injected"] == 0 and dom["handlers"] == 0
    assert NASTY in dom["text"] and NASTY_IMG in dom["text"] and NASTY_CLOSE in dom["text"]
    assert dom["token"] == " the" and "' the'" in dom["title"]
    # the neuron's token is on screen, at the top of the page
    rect = browser.eval("(() => { window.scrollTo(0, 0); const r = document.querySelector('h1 .tok')"
                        ".getBoundingClientRect(); return [r.top, r.width, r.height]; })()")
    assert 0 < rect[0] < 200 and rect[1] > 10 and rect[2] > 10


def test_hovering_and_clicking_a_token_shows_the_heads_there(browser, report_page):
    # hover the script-closing token of prompt 4: the panel shows its text (from the JSON) and its heads
    x, y = browser.center('article[data-p="3"] .t[data-i="6"]')
    browser.mouse("mouseMoved", x, y)
    panel = browser.eval("document.getElementById('detail-3').innerText")
    assert "position 6" in panel and NASTY_CLOSE in panel and panel.count("L") >= 5
    expected = make_trace()["prompts"][3]["positions"][6]["heads"][0]["head"]
    assert expected in panel
    # click pins a token; moving elsewhere keeps it; a second click unpins
    x, y = browser.center('article[data-p="3"] .t[data-i="2"]')
    browser.mouse("mousePressed", x, y)
    browser.mouse("mouseReleased", x, y)
    x2, y2 = browser.center('article[data-p="3"] .t[data-i="1"]')
    browser.mouse("mouseMoved", x2, y2)
    panel = browser.eval("document.getElementById('detail-3').innerText")
    assert "position 2" in panel and "pinned" in panel and NASTY in panel
    # hovering a head row outlines the tokens it looked up
    x, y = browser.center('article[data-p="0"] tr.hrow')
    browser.mouse("mouseMoved", x, y)
    looked = browser.eval("[...document.querySelectorAll('article[data-p=\"0\"] .t.looked')].map(t => +t.dataset.i)")
    assert sorted(looked) == sorted(s["position"] for s in make_trace()["prompts"][0]["top_heads"][0]["sources"])
    assert browser.record()["exceptions"] == []


def _decode_png(data: bytes) -> np.ndarray:
    """A screenshot PNG (8-bit RGB or RGBA, not interlaced) → pixels [H, W, C]: zlib + the five row filters."""
    import struct
    import zlib
    pos, idat, (width, height, depth, colour) = 8, b"", (0, 0, 0, 0)
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert depth == 8 and colour in (2, 6)
    c = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * c)
    out = np.zeros((height, width * c), np.int32)
    for y in range(height):
        f, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros_like(row)
        if f in (0, 2):
            out[y] = (row + (up if f == 2 else 0)) % 256
        else:  # Sub, Average, Paeth depend on the pixel to the left: go along the row
            cur = out[y]
            for x in range(len(row)):
                a = cur[x - c] if x >= c else 0
                b, d = up[x], (up[x - c] if x >= c else 0)
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    pa, pb, pc = abs(b - d), abs(a - d), abs(a + b - 2 * d)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else d)
                cur[x] = (row[x] + pred) % 256
    return out.reshape(height, width, c).astype(np.uint8)


def test_screenshot(browser, report_page, tmp_path):
    shot = tmp_path / "report.png"
    browser.screenshot(shot)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = _decode_png(data)  # [H, W, channels]
    assert pixels.shape[:2] == (1600, 1200)
    # the heading is really painted where the DOM puts it: its box holds ink (dark text on the light page),
    # and a box of the same size in the empty right margin does not
    left, top, w, h = browser.eval("""(() => { const r = document.querySelector('h1').getBoundingClientRect();
        return [r.left, r.top, r.width, r.height].map(Math.round); })()""")
    heading = pixels[top:top + h, left:left + w, :3].astype(int)
    background = pixels[5, -5, :3].astype(int)
    ink = np.abs(heading - background).sum(-1) > 120
    assert ink.mean() > 0.02, "the heading's box is blank in the screenshot"
    margin = pixels[top:top + h, -40:-5, :3].astype(int)
    assert (np.abs(margin - background).sum(-1) > 120).mean() < 0.001
    if os.environ.get("MINITF_REPORT_SHOTS"):  # keep the screenshots to look at them
        keep = Path(os.environ["MINITF_REPORT_SHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report.png")
        browser.screenshot(keep / "report-full.png", full_page=True)


# ---------------------------------------------------------------------------------------------------------
# A real trace (golden model with a real tokenizer), and the CLI
# ---------------------------------------------------------------------------------------------------------

REAL_TEXTS = ["the theatre is in the centre", "he said <b>&</b> there", "in the beginning", "a b c d e f",
              "on the other hand, the", "and then the king said", "to be or not to be"]


@pytest.fixture(scope="module")
def real_trace():
    from minitf import Model, Neuron
    from minitf.prompts import prompts_from_texts
    from minitf.trace import NeuronCard, TraceOptions, trace

    model = Model.load(GOLDEN / "prefixed_f16")  # 3 layers, 4 heads, n_ctx 16
    card = NeuronCard.from_json({"name": "L2N7", "layer": 2, "index": 7, "token": {"id": 294, "str": " th"}})
    return trace(model, Neuron(2, 7), prompts_from_texts(model, REAL_TEXTS), TraceOptions(per_position=True, ablate=3),
                 card=card)


def test_a_real_trace_renders_every_token(real_trace):
    page = render_html(real_trace)
    for n, p in enumerate(real_trace.prompts):
        block = page.split(f'id="ptext-{n}"')[1].split("</div>")[0]
        assert block.count('class="t') == len(p.tokens) == len(p.positions)
        parser = _Tags()
        parser.feed("<div " + block)
        assert parser.tags == ["div"] + ["span"] * len(p.tokens)  # the "<b>" of prompt 2 is no tag
        assert "".join(parser.data) == "<|endoftext|>" + REAL_TEXTS[n]


def test_a_real_trace_in_the_browser(browser, real_trace, tmp_path):
    path = write_html(tmp_path / "real.html", real_trace)
    got = browser.open(path.as_uri(), READY)
    assert got == {"requests": [path.as_uri()], "console": [], "exceptions": [], "log": [], "dialogs": []}
    p = real_trace.prompts[1]
    i = 4  # a token inside "<b>&</b>"
    x, y = browser.center(f'article[data-p="1"] .t[data-i="{i}"]')
    browser.mouse("mouseMoved", x, y)
    panel = browser.eval("document.getElementById('detail-1').innerText")
    assert f"position {i}" in panel and p.positions[i].heads[0].head in panel
    assert f"activation {p.positions[i].activation:+.3f}".replace("-", "\u2212") in panel


@pytest.fixture
def fake_trace_neuron(monkeypatch):
    """trace_neuron replaced by the hand-made trace; records how the CLI called it."""
    import minitf.trace

    calls = []

    def fake(model, neuron, source, options):
        calls.append({**vars(source), **vars(options)})
        return minitf.trace.Trace.from_json(make_trace())
    monkeypatch.setattr(minitf.trace, "trace_neuron", fake)
    return calls


def test_cli_report_and_trace_html(fake_trace_neuron, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cli
    from minitf import Model, Neuron
    from minitf.explain.driver import ResultStore

    monkeypatch.setenv("MINITF_CACHE_DIR", str(tmp_path / "cache"))
    model = str(GOLDEN / "prefixed_f16")
    store = ResultStore(tmp_path / "cache", Model.load(model).folder, str(Neuron(2, 7)))
    store.update("L0H2", explanation="fires after 'said'", balanced_accuracy=0.7, roc_auc=0.75)
    runner = CliRunner()
    out = tmp_path / "r.html"
    r = runner.invoke(cli.main, ["report", "--neuron", "L2N7", "--model", model, "--text", "a b", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert fake_trace_neuron[-1]["per_position"] is True and fake_trace_neuron[-1]["texts"] == ["a b"]
    page = out.read_text(encoding="utf-8")
    assert "fires after &#x27;said&#x27;" in page and "0.700" in page  # from the results store
    # trace --html: the report as a side effect, the JSON on stdout untouched
    r = runner.invoke(cli.main, ["trace", "--neuron", "L2N7", "--model", model, "--text", "a b", "--json",
                                 "--html", str(tmp_path / "t.html")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["neuron"]["name"] == "L3N100" and (tmp_path / "t.html").exists()
    assert fake_trace_neuron[-1]["per_position"] is True
    r = runner.invoke(cli.main, ["trace", "--neuron", "L2N7", "--model", model, "--text", "a b", "--json"])
    assert fake_trace_neuron[-1]["per_position"] is False  # no report, no per-position work
    # errors: one line naming the file, exit 1
    r = runner.invoke(cli.main, ["report", "--neuron", "L2N7", "--model", model, "--text", "a b",
                                 "--out", str(tmp_path / "nope" / "r.html")])
    assert r.exit_code == 1 and "nope" in r.stderr and "does not exist" in r.stderr
    r = runner.invoke(cli.main, ["report", "--neuron", "L2N7", "--model", model, "--text", "a b"])
    assert r.exit_code == 2 and "--out" in r.stderr


def test_cli_report_end_to_end(tmp_path, monkeypatch):
    """No stand-in: the real trace_neuron with a real tokenizer, written and parsed back."""
    pytest.importorskip("minitf.prompts", reason="minitf/prompts.py (mined prompts) has not landed yet")
    from click.testing import CliRunner

    import cli

    monkeypatch.setenv("MINITF_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "r.html"
    args = ["report", "--neuron", "L2N7", "--model", str(GOLDEN / "prefixed_f16"), "--out", str(out)]
    for text in REAL_TEXTS:
        args += ["--text", text]
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    data = json.loads(_embedded_json(page))
    assert len(data["prompts"]) == len(REAL_TEXTS) and all(p["positions"] for p in data["prompts"])


def test_a_layer_0_neuron_without_bos_has_no_heads_and_no_errors(browser, tmp_path):
    from minitf import Model, Neuron
    from minitf.prompts import prompts_from_texts
    from minitf.trace import NeuronCard, PromptOrigin, TraceOptions, trace

    model = Model.load(GOLDEN / "prefixed_f16")
    card = NeuronCard.from_json({"name": "L0N3", "layer": 0, "index": 3, "token": {"id": 5, "str": "&"}})
    result = trace(model, Neuron(0, 3), prompts_from_texts(model, REAL_TEXTS[:2], bos=False),
                   TraceOptions(per_position=True), card=card, origin=PromptOrigin(bos=False))
    path = write_html(tmp_path / "l0.html", result)
    got = browser.open(path.as_uri(), READY)
    assert got == {"requests": [path.as_uri()], "console": [], "exceptions": [], "log": [], "dialogs": []}
    assert "no candidate heads" in browser.eval("document.getElementById('heads').textContent")
    assert browser.eval("[...document.querySelectorAll('dl.meta dt')].find(d => d.textContent === 'BOS')"
                        ".nextElementSibling.textContent") == "none"
    x, y = browser.center('article[data-p="0"] .t[data-i="0"]')
    browser.mouse("mouseMoved", x, y)
    assert "position 0" in browser.eval("document.getElementById('detail-0').innerText")


def test_the_histogram_comes_from_the_neuron_index(tmp_path):
    from minitf import Model, Neuron
    from minitf.index.build import build_index
    from minitf.report.page import report_extras
    from minitf.trace import PromptOrigin

    model = Model.load(GOLDEN / "prefixed_f16")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(REAL_TEXTS * 3) + "\n")
    trace = PromptOrigin(corpus=str(corpus), split="all")  # where the trace's prompts came from
    explanations, histogram = report_extras(model, Neuron(2, 7), trace, cache_dir=tmp_path / "cache")
    assert explanations is None and "no neuron index" in histogram["note"]
    build_index(model, corpus, layers=[2], k=3, workers=1, progress=False)
    _, histogram = report_extras(model, Neuron(2, 7), trace, cache_dir=tmp_path / "cache")
    assert len(histogram["edges"]) == 6 and len(histogram["counts"]) == 7
    assert sum(histogram["counts"]) == histogram["positions"] > 0 and 0 <= histogram["positive"] <= histogram["positions"]
    page = render_html(make_trace(n_prompts=1), histogram=histogram)
    figure = page.split("<figure class=hist>")[1].split("</figure>")[0]
    assert figure.count("<rect") == 7 and "indexed positions" in figure  # one bar per bin
    assert "not in the index" in report_extras(model, Neuron(1, 7), trace)[1]["note"]
    corpus.write_text("changed\n")  # a stale index: the page says so, the report is still written
    _, histogram = report_extras(model, Neuron(2, 7), trace, cache_dir=tmp_path / "cache")
    assert "stale" in histogram["note"]
    assert "stale index" in render_html(make_trace(n_prompts=1), histogram=histogram)


# ---- trace --why: clicking a looked-up token shows the pairs that made the head look there -------------------
def test_clicking_a_source_token_shows_why_the_head_looked_there(browser, tmp_path):
    from minitf import Model, Neuron
    from minitf.prompts import prompts_from_texts
    from minitf.trace import NeuronCard, TraceOptions, trace

    model = Model.load(GOLDEN / "prefixed_f16")
    card = NeuronCard.from_json({"name": "L2N7", "layer": 2, "index": 7, "token": {"id": 294, "str": " th"}})
    result = trace(model, Neuron(2, 7), prompts_from_texts(model, REAL_TEXTS), TraceOptions(ablate=0, why=True),
                   card=card)
    path = write_html(tmp_path / "why.html", result)
    got = browser.open(path.as_uri(), READY)
    assert got == {"requests": [path.as_uri()], "console": [], "exceptions": [], "log": [], "dialogs": []}
    head = result.prompts[0].top_heads[0]
    source = head.why.sources[-1]  # the last listed source of the prompt's top head
    assert browser.eval("document.querySelectorAll('#why-0 tr.whypair').length") == 0  # nothing until a click
    x, y = browser.center(f'article[data-p="0"] tr.hrow[data-head="{head.head}"] .src[data-pos="{source.position}"]')
    browser.mouse("mousePressed", x, y)
    browser.mouse("mouseReleased", x, y)
    panel = browser.eval("document.getElementById('why-0').innerText")
    assert head.head in panel and f"@{source.position}" in panel
    rows = browser.eval("[...document.querySelectorAll('#why-0 tr.whypair')].map(r => r.innerText.split('\\t'))")
    assert [r[:2] for r in rows] == [[x.query, x.key] for x in source.pairs]
    def shown(x):  # as the page shows a value: 4 significant digits in its data, 3 decimals on screen
        return f"{float(f'{x:.4g}'):+.3f}".replace("-", "\u2212")

    assert [r[2] for r in rows] == [shown(x.centred) for x in source.pairs]
    for c in source.carried:
        assert f"{c.component} {shown(c.effect)}" in panel
    assert browser.record()["exceptions"] == []
