"""Where explanations and scores live: one JSON file per neuron under minitf's cache (see ``minitf.explain.driver``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from minitf.errors import MinitfError
from minitf.util.files import atomic_write, cache_path

class ResultStore:
    """Explanations and scores of one model's neurons, one JSON file per neuron, written atomically:
    ``<cache_dir>/results/<model folder name>-<hash of its path>/<neuron>.json`` → {head: {...}}
    (``cache_dir`` None: minitf's cache, ``minitf.util.files.default_cache_dir``)."""

    def __init__(self, cache_dir: Path | str | None, model_folder: Path | str, neuron: str):
        folder = Path(model_folder).resolve()
        tag = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
        self.path = cache_path("results", cache_dir) / f"{folder.name}-{tag}" / f"{neuron}.json"

    def load(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise MinitfError(f"{self.path}: unreadable results file ({e})") from None

    def update(self, head: str, **fields: Any) -> None:
        data = self.load()
        data.setdefault(head, {}).update(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(data, indent=2, ensure_ascii=False))
