"""An append-only record of finished work units, so an interrupted build resumes without redoing or duplicating."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    """One JSON line per finished unit, keyed by a string the caller derives deterministically.

    A unit is written only once complete and flushed to disk, so a kill at any moment loses at most
    the unit in flight.
    """

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, Any] = {}
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                # A kill mid-write leaves a torn last line; cut it, or the next record would be glued to it.
                data = data[: data.rfind(b"\n") + 1]
                with self.path.open("r+b") as f:
                    f.truncate(len(data))
            # Only "\n" ends a record: values are written with ensure_ascii=False, so U+2028, U+0085 and the
            # like stand raw inside them, and str.splitlines would cut a record there. [:-1] drops the empty
            # piece after the last newline.
            for line in data.decode("utf-8").split("\n")[:-1]:
                entry = json.loads(line)
                self._done[entry["key"]] = entry["value"]

    def record(self, key: str, value: Any) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._done[key] = value

    def run(self, key: str, fn):
        """Return the recorded value for `key`, or compute it with `fn()` and record it."""
        if key not in self._done:
            self.record(key, fn())
        return self._done[key]
