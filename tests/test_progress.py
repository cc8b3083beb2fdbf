"""minitf.util.progress: the one progress display (click.progressbar on a terminal, plain lines elsewhere)."""
import io

import minitf.util.progress as progress
from minitf.util.fmt import duration, megabytes
from minitf.util.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_then_summary(monkeypatch):
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    f = Tty()
    bar = Progress("model.safetensors", 4_000_000, 1_000_000, amount=megabytes, file=f)
    for _ in range(3):
        bar.update(1_000_000)
    text = f.getvalue()
    assert "\n" not in text and text.count("\r") == 3  # one line, redrawn in place
    assert "[" + "#" * 24 + "]" in text and "100%" in text and "4.0 MB / 4.0 MB" in text and "MB/s" in text
    assert "ETA" in text  # while unfinished
    bar.finish("sha256 ok")
    last = f.getvalue().rsplit("\r", 1)[1]
    assert last.startswith("model.safetensors: sha256 ok") and last.endswith("\n") and f.getvalue().count("\n") == 1


def test_counters_rate_and_plain_lines():
    f = io.StringIO()  # not a terminal: no bar, a plain line every `every` seconds
    bar = Progress("index", 10, unit="documents", counters={"tokens": 0}, rate_of="tokens", every=0.0, file=f)
    bar.update(3, tokens=1000)
    bar.update(2, tokens=24)
    lines = f.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in f.getvalue()
    assert lines[0].startswith("index: 3 / 10 documents (30%)  1,000 tokens  ")
    assert lines[1].startswith("index: 5 / 10 documents (50%)  1,024 tokens  ") and "tokens/s  ETA " in lines[1]


def test_resumed_work_is_not_in_the_rate():
    f = io.StringIO()
    bar = Progress("index", 100, unit="documents", every=0.0, file=f)
    bar.update(90, resumed=True)
    assert bar.done == 90 and bar.start_done == 90
    assert "ETA" not in f.getvalue().splitlines()[-1]  # no rate yet: no ETA
    bar.update(5)
    assert bar.done - bar.start_done == 5 and "95 / 100 documents (95%)" in f.getvalue()


def test_not_a_terminal_without_every_prints_only_the_summary():
    f = io.StringIO()
    bar = Progress("vocab.json", 100, amount=megabytes, file=f)
    bar.update(100)
    bar.end_line()
    assert f.getvalue() == ""
    bar.finish("git-sha1 ok")
    assert f.getvalue() == "vocab.json: git-sha1 ok\n"


def test_disabled_prints_nothing():
    for f in (io.StringIO(), Tty()):
        bar = Progress("index", 10, enabled=False, every=0.0, file=f)
        bar.update(10)
        bar.note("a note")
        bar.finish("done")
        assert f.getvalue() == ""


def test_note_ends_the_bar_line_first(monkeypatch):
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    f = Tty()
    bar = Progress("index", 10, file=f)
    bar.update(1)
    bar.note("worker 1 restarted")
    assert f.getvalue().endswith("\nworker 1 restarted\n")


def test_formats():
    assert megabytes(12_345_678) == "12.3 MB" and megabytes(4_500) == "4.5 kB"
    assert duration(65) == "1:05" and duration(3725) == "1:02:05"
