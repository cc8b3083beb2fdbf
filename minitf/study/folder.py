"""A study's folder (``study --out``): what the study is, its finished neurons, its results.

    settings.json          {"format", "version", "settings"}: what the study is; a rerun with other settings is
                           refused (unless ``restart``), so a resumed study is the same study
    neurons/L{l}N{n}.json  one record per neuron, written atomically once the neuron is finished: the resume unit
    study.json             all records without per-prompt detail, the aggregates, the settings
    index.html, neurons/L{l}N{n}.html   the site (``minitf.study.site``)

Resuming needs no lock file and no journal: a record is on disk whole or not at all (``atomic_write``), so the
neurons to do are those without a readable record; a record still waiting for LLM calls (``"pending"``: the
call budget ran out) counts as not done.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from minitf.errors import MinitfError
from minitf.names import Neuron
from minitf.util.files import atomic_write

FORMAT = "minitf-study"
VERSION = 1
SETTINGS_FILE = "settings.json"
STUDY_FILE = "study.json"
NEURONS_DIR = "neurons"


def write_json(path: Path, obj) -> None:
    """``obj`` as indented UTF-8 JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


class StudyDir:
    """The folder ``path`` of one study (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.neurons = self.path / NEURONS_DIR

    def prepare(self, settings: dict, restart: bool) -> None:
        """Create the folder; refuse an earlier study there made with other settings (unless ``restart``, which
        removes its results); write ``settings``."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise MinitfError(f"`out` {out}: is a file, not a folder", param="out")
        try:
            self.neurons.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MinitfError(f"`out` {out}: cannot create the folder ({e.strerror})", param="out") from None
        if not os.access(out, os.W_OK) or not os.access(self.neurons, os.W_OK):
            raise MinitfError(f"`out` {out}: not writable", param="out")
        path = out / SETTINGS_FILE
        if path.is_file() and not restart:
            self._check_same(path, settings)
        if restart:
            for old in [out / STUDY_FILE, out / "index.html", *self.neurons.glob("L*N*.json"),
                        *self.neurons.glob("L*N*.html")]:
                old.unlink(missing_ok=True)
        write_json(path, {"format": FORMAT, "version": VERSION, "settings": settings})

    def _check_same(self, path: Path, settings: dict) -> None:
        try:
            before = json.loads(path.read_text(encoding="utf-8"))["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            raise MinitfError(f"{path}: unreadable study settings; rerun with `restart` to start over") from None
        for key in list(settings) + [k for k in before if k not in settings]:
            if not _same(before.get(key, ADDED_LATER.get(key)), settings.get(key)):
                raise MinitfError(f"`out` {self.path} holds a study made with {key} = {_short(before.get(key))}, "
                                  f"not {_short(settings.get(key))}; rerun with `restart` to start over, "
                                  "or choose another `out`", param="out")

    def record_path(self, name: str) -> Path:
        return self.neurons / f"{name}.json"

    def load_record(self, neuron: Neuron) -> dict | None:
        """A finished neuron record, or None (missing, unreadable, or waiting for LLM calls)."""
        try:
            record = json.loads(self.record_path(str(neuron)).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if record.get("neuron") == str(neuron) and not record.get("pending") else None

    def finished(self, neurons: list[Neuron]) -> dict[str, dict]:
        """{name: record} of the neurons already done (the resume)."""
        return {str(n): r for n in neurons if (r := self.load_record(n)) is not None}

    def save_record(self, record: dict) -> None:
        write_json(self.record_path(record["neuron"]), record)

    def save_study(self, study: dict) -> None:
        write_json(self.path / STUDY_FILE, study)


ADDED_LATER = {"scorers": "paper", "baselines": False}
"""Settings added after studies were made: a settings.json without one was made with this value (issue 24)."""


def _same(before, now) -> bool:
    """Equal settings; a path stored relative by an older version (corpus, model folder) matches the absolute one
    it resolves to from here."""
    if isinstance(before, dict) and isinstance(now, dict) and before.keys() == now.keys():
        return all(_same(before[k], now[k]) for k in before)
    if isinstance(before, str) and isinstance(now, str) and before != now and os.path.isabs(now):
        return not os.path.isabs(before) and os.path.abspath(before) == now
    return before == now


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"
