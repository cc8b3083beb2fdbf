"""One progress display for long work (downloads, indexing), on ``click.progressbar``.

On a terminal it is click's bar on stderr, redrawn at most every ``REDRAW_SECONDS``:

    model.safetensors  [##########--------------------------]   28%  14.0 MB / 50.0 MB  7.0 MB/s  ETA 0:05

Elsewhere (a pipe, a log file, CI) the same text goes out as plain lines, one every ``every`` seconds
(never when ``every`` is None), so logs stay readable. ``enabled=False`` (``--no-progress``, ``--json``)
prints nothing at all. ``finish(line)`` replaces the bar by a summary line.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

import click

from minitf.util.fmt import duration, thousands

REDRAW_SECONDS = 0.1


class Progress:
    """Progress of ``total`` units (None: unknown), starting at ``done`` (resumed work is not in the rate).

    Args:
        label: what is being done, e.g. a file name or ``"index"``.
        unit: the units' name, e.g. ``"documents"`` ("" for bytes shown by ``amount=megabytes``).
        amount: how a number of units is written.
        counters: other running totals shown with the bar, e.g. ``{"tokens": 0}`` (``update(tokens=...)``).
        rate_of: the counter whose rate per second is shown ("" = the units).
        enabled: False prints nothing at all.
        live: draw a bar when ``file`` is a terminal (False: only plain lines and the summary).
        every: seconds between plain lines when not live (None: none).
    """

    def __init__(self, label: str, total: int | None = None, done: int = 0, *, unit: str = "",
                 amount: Callable[[float], str] = thousands, counters: dict[str, int] | None = None, rate_of: str = "",
                 enabled: bool = True, live: bool = True, every: float | None = None, file: TextIO | None = None):
        self.label, self.total, self.done, self.start_done = label, total, done, done
        self.unit, self.amount, self.rate_of, self.every = unit, amount, rate_of, every
        self.counters = dict(counters or {})
        self.status = ""  # what is being done now, shown after the numbers (``update(status=...)``)
        self.enabled = enabled
        self.file = file or sys.stderr
        self.live = enabled and live and self.file.isatty()
        self.t0 = self.last = time.monotonic()
        self.bar, self.drawn = None, False
        self.shown = None  # units done at the last plain line
        if self.live:
            self.bar = click.progressbar(length=total, label=label, file=self.file, show_eta=False,
                                         item_show_func=lambda _: self.info(), width=24)
            self.bar.pos = done

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def info(self, percent: bool = False) -> str:
        """``14.0 MB / 50.0 MB  7.0 MB/s  ETA 0:05`` (what the bar shows next to itself)."""
        unit = f" {self.unit}" if self.unit else ""
        text = self.amount(self.done) + (f" / {self.amount(self.total)}" if self.total else "") + unit
        if percent and self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        for name, value in self.counters.items():
            text += f"  {thousands(value)} {name}"
        elapsed = max(self.elapsed, 1e-6)
        rate = (self.counters[self.rate_of] if self.rate_of else self.done - self.start_done) / elapsed
        text += f"  {self.amount(rate)}{unit if not self.rate_of else ' ' + self.rate_of}/s"
        unit_rate = (self.done - self.start_done) / elapsed
        if self.total and unit_rate > 0:
            text += f"  ETA {duration((self.total - self.done) / unit_rate)}"
        return text + (f"  {self.status}" if self.status else "")

    def line(self) -> str:
        """The plain-line form: ``index: 300 / 1,000 documents (30%)  51,200 tokens  9,000 tokens/s  ETA 0:07``."""
        return f"{self.label}: {self.info(percent=True)}"

    def update(self, n: int = 0, resumed: bool = False, status: str | None = None, **counters: int) -> None:
        """Advance by ``n`` units and add to the named counters; redraw when due. ``resumed``: the ``n`` units
        were done by an earlier run (e.g. a worker reporting its checkpoint), so they stay out of the rate.
        ``status``: what is being done now (e.g. ``"L3N872: trace"``)."""
        self.done += n
        if status is not None:
            self.status = status
        if resumed:
            self.start_done += n
        for name, value in counters.items():
            self.counters[name] += value
        if self.enabled:
            self.draw()

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.bar is not None:
            if force or now - self.last >= REDRAW_SECONDS or self.done == self.total:
                self.last = now
                self.bar.pos = self.done
                self.bar.render_progress()
                self.drawn = True
        elif self.every is not None and (force or now - self.last >= self.every):
            self.last, self.shown = now, self.done
            click.echo(self.line(), file=self.file)

    def end_line(self) -> None:
        """Leave the bar as it is and move to a new line (before an error message or a note)."""
        if self.bar is not None and self.drawn:
            click.echo("\x1b[?25h", file=self.file)  # the cursor back (click hides it while drawing)
            self.drawn = False

    def note(self, text: str) -> None:
        """A message on its own line, the bar going on below it."""
        if self.enabled:
            self.end_line()
            click.echo(text, file=self.file)

    def finish(self, summary: str | None = None) -> None:
        """Replace the bar by ``label: summary`` (or, with no summary, the bar's last state) and end the line."""
        if not self.enabled:
            return
        if self.bar is not None:
            if summary is None:
                self.draw(force=True)
                self.bar.render_finish()
                self.drawn = False  # the line is ended
                return
            text = f"{self.label}: {summary}"
            click.echo("\r" + text.ljust(self.bar.max_width or 0) + "\x1b[?25h", file=self.file)
            self.drawn = False
        elif summary is not None:
            click.echo(f"{self.label}: {summary}", file=self.file)
        elif self.every is not None and self.shown != self.done:  # not already the last plain line
            click.echo(self.line(), file=self.file)
