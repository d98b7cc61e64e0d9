"""JSONL metrics log: one JSON object per line, appended, flushed at once (safe to tail while training)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Append ``{"time": ..., **metrics}`` lines to ``path``; a no-op when ``enabled`` is False (non-zero ranks)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._end_torn_line()

    def _end_torn_line(self) -> None:
        """A run killed mid-write can leave a last line without its newline: end it, so the next row starts
        its own line (``read`` skips the torn one)."""
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb+") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")

    def log(self, **metrics: Any) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a killed run
                continue
        return rows
