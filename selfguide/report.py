"""Rows in and out of every stage, with drops by reason: the receipt a synthetic dataset ships with."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional
from .errors import ConfigError

_MARKER = "selfguide-filter-report:"


@dataclass
class StageCount:
    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter = field(default_factory=Counter)


class FilterReport:
    def __init__(self, stages: Optional[dict[str, StageCount]] = None):
        self.stages: dict[str, StageCount] = stages or {}

    def stage(self, name: str) -> StageCount:
        return self.stages.setdefault(name, StageCount())

    def add(self, name: str, rows_in: int, rows_out: int, dropped: Optional[dict[str, int]] = None) -> None:
        s = self.stage(name)
        s.rows_in += rows_in
        s.rows_out += rows_out
        s.dropped.update({k: v for k, v in (dropped or {}).items() if v})

    def cut(self, rows: list, size: int) -> list:
        """The first `size` rows; the overshoot of the last batch is recorded, so the report ends at the
        dataset's row count."""
        if len(rows) > size:
            self.add("final", len(rows), size, {"over_budget": len(rows) - size})
        return rows[:size]

    def to_dict(self) -> dict:
        return {n: {"in": s.rows_in, "out": s.rows_out, "dropped": dict(s.dropped)} for n, s in self.stages.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "FilterReport":
        return cls({n: StageCount(d["in"], d["out"], Counter(d.get("dropped", {}))) for n, d in data.items()})

    def rows(self) -> list[tuple[str, int, int, str]]:
        """(stage, rows in, rows out, the drop reasons most frequent first) per stage, as the tables show them."""
        return [
            (name, s.rows_in, s.rows_out, ", ".join(f"{k}: {v}" for k, v in s.dropped.most_common()) or "-")
            for name, s in self.stages.items()
        ]

    def summary(self) -> str:
        lines = [f"{'stage':<22}{'in':>8}{'out':>8}  dropped"]
        lines += [f"{name:<22}{rows_in:>8}{rows_out:>8}  {reasons}" for name, rows_in, rows_out, reasons in self.rows()]
        return "\n".join(lines)

    def to_description(self, headline: str) -> str:
        """Text for DatasetInfo.description: readable, and parseable back by `from_description`."""
        return f"{headline}\n\n{self.summary()}\n\n{_MARKER}{json.dumps(self.to_dict())}"

    @classmethod
    def from_description(cls, description: str) -> "FilterReport":
        if _MARKER not in (description or ""):
            raise ConfigError("description: this dataset carries no selfguide filter report")
        return cls.from_dict(json.loads(description.split(_MARKER, 1)[1].strip()))


def filter_report(dataset) -> FilterReport:
    """The filter report kept with a dataset built by selfguide (a Dataset or DatasetDict)."""
    info = dataset.info if hasattr(dataset, "info") else next(iter(dataset.values())).info
    return FilterReport.from_description(info.description)
