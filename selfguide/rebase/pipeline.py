"""ReBase end to end: retrieve rows for the task, transform them batch by batch until enough survive.

Retrieval and every transformation batch are journaled; the checks between them (validation,
deduplication) are cheap and deterministic, so a resumed run replays the journal into exactly the
state the interrupted run had, and loads no model when nothing is left to generate.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable

from datasets.utils import tqdm

from ..engines import Engine
from ..journal import Journal
from ..metrics import normalize
from ..report import FilterReport
from ..task import Task
from .datastore import Datastore
from .retrieval import Retrieved, retrieve
from .transformation import Outcome, Transformer, record


class ReBasePipeline:
    """`config` carries the knobs: a `ReBaseConfig` (see builders/rebase.py) or anything alike."""

    def __init__(
        self,
        task: Task,
        store: Datastore,
        engine_factory: Callable[[], Engine],
        config,
        journal: Journal,
        report: FilterReport,
        progress: bool = True,
    ):
        self.task, self.store, self.engine_factory, self.cfg = task, store, engine_factory, config
        self.journal, self.report, self.progress = journal, report, progress
        self._transformer = None

    @property
    def transformer(self) -> Transformer:
        if self._transformer is None:
            cfg = self.cfg
            self._transformer = Transformer(
                self.task, self.engine_factory(), cot=cfg.cot, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed
            )
        return self._transformer

    def retrieve(self) -> list[Retrieved]:
        k = math.ceil(self.cfg.num_examples * self.cfg.retrieve_factor)

        def run():
            report = FilterReport()
            rows = retrieve(
                self.store,
                self.task,
                k,
                exclude_datasets=self.cfg.exclude_datasets,
                candidates=self.cfg.candidates,
                dedupe_threshold=self.cfg.dedupe_threshold,
                report=report,
            )
            return {"rows": [r.to_dict() for r in rows], "report": report.to_dict()}

        done = self.journal.run(f"retrieve:{k}", run)
        for name, stage in done["report"].items():
            self.report.add(name, stage["in"], stage["out"], stage["dropped"])
        return [Retrieved(**r) for r in done["rows"]]

    def run(self) -> list[dict]:
        retrieved = self.retrieve()
        size = self.cfg.batch_size
        outcomes: list[Outcome] = []
        rows: list[dict] = []
        seen: set[str] = set()
        batches = range(0, len(retrieved), size)
        for b in tqdm(batches, desc="ReBase transform", disable=not self.progress):
            batch = retrieved[b : b + size]
            labels = [r.label for r in batch] if self.cfg.source_labels else None
            done = self.journal.run(
                f"transform:{b // size}", lambda: [asdict(o) for o in self.transformer.transform([r.content for r in batch], labels)]
            )
            for source, outcome in zip(batch, (Outcome(**d) for d in done)):
                key = normalize(outcome.input)
                if outcome.status == "ok" and key in seen:
                    outcome.status = "duplicate"
                outcomes.append(outcome)
                if outcome.status != "ok":
                    continue
                seen.add(key)
                rows.append(self._row(source, outcome))
            if len(rows) >= self.cfg.num_examples:
                break
        record(outcomes, self.report)
        return self.report.cut(rows, self.cfg.num_examples)

    def _row(self, source: Retrieved, outcome: Outcome) -> dict:
        row = {
            "input": outcome.input,
            "output": outcome.output,
            "reasoning": outcome.reasoning,
            "source_dataset": source.dataset,
            "source_config": source.config,
            "source_split": source.split,
            "source_row_id": source.row_id,
            "source_license": source.license,
            "retrieval_score": source.score,
            "label_from_source": outcome.label_from_source,
        }
        if self.cfg.cot:
            row["completion_text"] = outcome.reasoning
        return row
