"""Classification post-processing: map free text to a label, and keep the classes balanced."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Optional, Sequence

from ..metrics import extract_label


def to_label(text: str, labels: Sequence[str]) -> Optional[str]:
    return extract_label(text, labels)


def class_cap(num_examples: int, labels: Sequence[str]) -> int:
    """Each class's share of the requested rows."""
    return math.ceil(num_examples / len(labels))


def downsample_to_smallest(rows: list[dict], seed: int) -> list[dict]:
    """Equal class sizes: every class cut to the size of the smallest one present."""
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row["output"], []).append(row)
    smallest = min(len(v) for v in by_class.values())
    rng = random.Random(seed)
    kept = [r for v in by_class.values() for r in rng.sample(v, smallest)]
    return sorted(kept, key=rows.index)


def class_counts(rows: Sequence[dict]) -> Counter:
    return Counter(r["output"] for r in rows)
