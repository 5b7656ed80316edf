"""Classification post-processing: keep the classes balanced."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Sequence



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


def assign_by_rank(rows: list[dict], labels: Sequence[str], size: int) -> list[dict]:
    """`size` rows in equal classes, each labelled with the class the model ranks it highest for.

    A small student's calibrated label scores still lean towards one class, so their argmax fills
    one class and starves the others. What the scores do carry is the order: the rows most
    confidently in a class relative to the others. Rows are taken by margin (the class's
    log-probability minus the best other class's), highest first, while their class has room.
    """
    # A pool short of `size` (max_rounds ran out) is shared out equally too, not filled class by class.
    per_class = class_cap(min(size, len(rows)), labels)
    pairs = []
    for i, row in enumerate(rows):
        scores = row["label_scores"]
        for c, label in enumerate(labels):
            margin = scores[c] - max(s for k, s in enumerate(scores) if k != c)
            pairs.append((-margin, i, label))
    taken: dict[int, str] = {}
    counts: Counter = Counter()
    for _, i, label in sorted(pairs):
        if i not in taken and counts[label] < per_class:
            taken[i] = label
            counts[label] += 1
    out = []
    for i in sorted(taken)[:size]:
        row = {k: v for k, v in rows[i].items() if k != "label_scores"}
        row["output"] = taken[i]
        row["agreement"] = math.exp(rows[i]["label_scores"][list(labels).index(taken[i])])
        out.append(row)
    return out
