"""ReBase stage 2, retrieval: the datastore rows most like the task, minus duplicates and contamination.

The ReBase score of a row averages three cosine similarities: the task instruction against the
description of the row's dataset, each demo input against the row's closest cell, and each demo
output against the row's closest cell (the last two averaged over the demos).

A classification task scores the output term as the best match of any of its labels, and leaves the
row's label cell out of the input term. Averaged over the demos, the output term ranked rows by how
close their label's name sits to the other labels' names: on NI task937 "weakener" rows scored 0.90
and "strengthener" rows 0.80, and 29 of the 32 retrieved rows the run rewrote were weakeners.

Scoring every row exactly would embed-compare the whole datastore per task; instead the FAISS index
proposes the rows holding one of the nearest cell texts of some demo, and the score is computed
exactly on those.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..metrics import match_label, normalize
from ..report import FilterReport
from ..task import Task
from .datastore import Datastore, embed
from ..errors import ConfigError


@dataclass
class Retrieved:
    """One selected row: where it comes from, what it holds, and why it ranked."""

    index: int
    score: float
    description_score: float
    input_score: float
    output_score: float
    dataset: str
    config: str
    split: str
    row_id: str
    license: str
    content: dict
    # The task label the row already carries (see `carried_label`); None for generation tasks.
    label: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class ContaminationGuard:
    """Flags text that overlaps the gold evaluation rows.

    Gold texts of `n` tokens or more match through any shared `n`-gram; shorter ones when a text
    contains them whole; texts under `min_tokens` only when equal, since a few common words inside
    a long text prove nothing.
    """

    def __init__(self, gold_texts: Sequence[str], n: int = 8, min_tokens: int = 4):
        self.n = n
        self.exact: set[str] = set()
        self.contained: list[str] = []
        self.ngrams: set[tuple[str, ...]] = set()
        for text in gold_texts:
            tokens = normalize(text).split()
            if len(tokens) >= n:
                self.ngrams |= _ngrams(tokens, n)
            elif len(tokens) >= min_tokens:
                self.contained.append(f" {' '.join(tokens)} ")
            elif tokens:
                self.exact.add(" ".join(tokens))

    @classmethod
    def for_task(cls, task: Task, **kwargs) -> "ContaminationGuard":
        """Gold inputs always; gold outputs only for generation, where a label would match every row."""
        texts = [g.input for g in task.gold]
        if not task.is_classification:
            texts += [g.output for g in task.gold]
        return cls(texts, **kwargs)

    def __bool__(self) -> bool:
        return bool(self.exact or self.contained or self.ngrams)

    def overlaps(self, text: str) -> bool:
        tokens = normalize(text).split()
        joined = " ".join(tokens)
        if joined in self.exact:
            return True
        padded = f" {joined} "
        if any(gold in padded for gold in self.contained):
            return True
        return bool(self.ngrams) and not self.ngrams.isdisjoint(_ngrams(tokens, self.n))


def is_excluded(dataset: str, patterns: Sequence[str]) -> bool:
    """Whether `dataset` matches a pattern, whole or by one of its '/' parts ('ni/task20*' or 'task201_mnli')."""
    names = [dataset, *dataset.split("/")]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def carried_label(
    store: Datastore,
    labels: Sequence[str],
    dataset: str,
    config: str,
    content: dict,
    aliases: Optional[Mapping[str, Sequence[str]]] = None,
) -> Optional[str]:
    """The task label a row already holds: a cell that is one of `labels` (or their `aliases`), in a
    column whose values across the dataset are all labels too (the dataset answers in the task's label
    set; GLUE's "1", meaning not-entailed, is no answer for a task whose "1" names the first choice).
    None when no column qualifies or two disagree.
    """
    found = set()
    # A file of one class holds its label in a column constant over the dataset, kept with the dataset.
    for column, value in {**store.constant_columns(dataset, config), **content}.items():
        label = match_label(value, labels, aliases) if isinstance(value, str) else None
        if label is None:
            continue
        values = store.column_values(dataset, config, column)
        if values is not None and all(match_label(v, labels, aliases) for v in values):
            found.add(label)
    return found.pop() if len(found) == 1 else None


def rebase_scores(
    store: Datastore,
    rows: np.ndarray,
    instruction_vec: np.ndarray,
    input_vecs: np.ndarray,
    output_vecs: np.ndarray,
    label_outputs: bool = False,
):
    """The three ReBase similarities of each row in `rows`, computed exactly from the stored vectors.

    With `label_outputs` the output queries are a task's labels: the output term is the best of them, and
    the row's cell that matches them best (its label) takes no part in the input term.
    """
    source_sim = store.source_embeddings() @ instruction_vec
    description = source_sim[store.rows.data.column("source").take(pa.array(rows)).to_numpy()]
    cells = store.cells(rows)
    flat = np.fromiter((t for c in cells for t in c), dtype=np.int64)
    unique, inverse = np.unique(flat, return_inverse=True)
    vectors = store.text_embeddings(unique)
    starts = np.cumsum([0] + [len(c) for c in cells[:-1]])
    per_cell_input = (vectors @ input_vecs.T)[inverse]
    per_cell_output = (vectors @ output_vecs.T)[inverse]
    if label_outputs:
        # A label word sits closer to a demo input than a long unrelated passage does, so left in
        # the input term it favours the rows of whichever label's name is most "input-like".
        label_match = per_cell_output.max(axis=1)
        for start, n in zip(starts, (len(c) for c in cells)):
            if n > 1:
                per_cell_input[start + int(np.argmax(label_match[start : start + n]))] = -1.0
    # Best cell of each row per query, then the mean over queries (or the best query, for labels).
    input_best = np.maximum.reduceat(per_cell_input, starts, axis=0).mean(axis=1)
    output_per_query = np.maximum.reduceat(per_cell_output, starts, axis=0)
    output_best = output_per_query.max(axis=1) if label_outputs else output_per_query.mean(axis=1)
    return description, input_best, output_best


def retrieve(
    store: Datastore,
    task: Task,
    k: int,
    *,
    exclude_datasets: Sequence[str] = (),
    candidates: int = 256,
    dedupe_threshold: float = 0.95,
    report: Optional[FilterReport] = None,
) -> list[Retrieved]:
    """The `k` best rows for `task` by ReBase score, after the contamination guard and deduplication.

    Rows of datasets matching `exclude_datasets` or the task's own name (its evaluation source) are
    excluded, as are rows overlapping the task's gold rows. Two rows count as duplicates when their
    cells are equal after normalisation, or their longest cells are closer than `dedupe_threshold`
    (one passage under several prompt templates, say).
    `candidates` nearest texts per demo are fetched from the index; fewer than `k` usable rows
    widens the search until the whole datastore has been seen.
    """
    if k < 1:
        raise ConfigError(f"k: must be at least 1, got {k}")
    patterns = [task.name, *exclude_datasets]
    guard = ContaminationGuard.for_task(task)
    instruction_vec = embed([task.instruction], store.embedder)[0]
    input_vecs = embed([e.input for e in task.examples], store.embedder)
    if task.is_classification:
        # A label's aliases are queries beside it: the output term takes the best of them.
        outputs = task.labels + [a for names in task.label_aliases.values() for a in names]
    else:
        outputs = [e.output for e in task.examples]
    output_vecs = embed(outputs, store.embedder)
    queries = np.vstack([input_vecs, output_vecs])
    datasets_column = store.rows.data.column("dataset")
    width = candidates
    while True:
        _, text_ids = store.search(queries, width)
        rows = store.rows_with_texts(np.unique(text_ids))
        names = datasets_column.take(rows).to_pylist()
        excluded = np.array([is_excluded(n, patterns) for n in names], dtype=bool)
        usable = rows[~excluded]
        selected, dropped = _select(store, usable, k, guard, dedupe_threshold, instruction_vec, input_vecs, output_vecs, task)
        if len(selected) >= k or width >= len(store.texts):
            break
        width *= 4
    dropped["below_top_k"] = len(usable) - len(selected) - sum(dropped.values())
    dropped["own_eval_source"] = int(excluded.sum())
    if report is not None:
        report.add("retrieve", len(rows), len(selected), dropped)
    return selected


def _select(store, rows, k, guard, dedupe_threshold, instruction_vec, input_vecs, output_vecs, task):
    dropped = {"gold_overlap": 0, "duplicate": 0}
    if len(rows) == 0:
        return [], dropped
    description, input_score, output_score = rebase_scores(
        store, rows, instruction_vec, input_vecs, output_vecs, task.is_classification
    )
    score = (description + input_score + output_score) / 3
    order = np.lexsort((rows, -score))  # best first; ties broken by row order, so runs repeat exactly
    cells = store.cells(rows)
    selected: list[Retrieved] = []
    signatures: set[str] = set()
    kept = np.zeros((k, store.meta["dim"]), dtype=np.float32)  # longest-cell vector of each selected row
    for j in order:
        if len(selected) == k:
            break
        texts = store.text(cells[j])
        if guard and any(guard.overlaps(t) for t in texts):
            dropped["gold_overlap"] += 1
            continue
        signature = normalize(" ".join(texts))
        longest = store.text_embeddings([cells[j][int(np.argmax([len(t) for t in texts]))]])[0]
        if signature in signatures or (selected and float(np.max(kept[: len(selected)] @ longest)) >= dedupe_threshold):
            dropped["duplicate"] += 1
            continue
        signatures.add(signature)
        kept[len(selected)] = longest
        row = store.row(int(rows[j]))
        if task.is_classification:
            row["label"] = carried_label(store, task.labels, row["dataset"], row["config"], row["content"], task.label_aliases)
        selected.append(
            Retrieved(
                index=int(rows[j]),
                score=float(score[j]),
                description_score=float(description[j]),
                input_score=float(input_score[j]),
                output_score=float(output_score[j]),
                **row,
            )
        )
    return selected, dropped
