"""Helpers shared by the benchmarks: where results go and how they are written."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def command_line() -> str:
    """How this benchmark was called, to be written beside its results. A `--note` is printed with the
    results, not repeated in the command."""
    argv = sys.argv[1:]
    if "--note" in argv:
        at = argv.index("--note")
        argv = argv[:at] + argv[at + 2 :]
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *argv])


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # Other work on the same cores skews a ratio measured across two phases; say how busy they were.
        "load_average_1m": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    print(markdown)
    return json_path, md_path


def read_records(path: Path) -> list[dict]:
    """The finished units a resumable benchmark appended to `path`, one JSON line each."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append_record(path: Path, record: dict) -> None:
    """Add one finished unit: a stopped run keeps it, and a later call skips it."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
