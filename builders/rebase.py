"""`load_dataset("rebase", task=..., datastore=...)`: real rows of existing datasets, retrieved for the
task and rewritten into its format by a model (ReBase).

The model is the local student (`model=`, default the embedded one) or, with `base_url=`, any
OpenAI-compatible server, where `model=` names the served model (default: the first it lists).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import datasets

from ..journal import Journal
from ..rebase.datastore import Datastore
from ..rebase.pipeline import ReBasePipeline
from ..report import FilterReport
from ..task import Task
from .base import TaskDatasetBuilder, TaskDatasetConfig
from ..errors import ConfigError


@dataclass
class ReBaseConfig(TaskDatasetConfig):
    ROW_LIBRARIES = (*TaskDatasetConfig.ROW_LIBRARIES, "sentence-transformers")  # it embeds the retrieval queries

    datastore: Optional[str] = None
    cot: bool = False
    # Classification: a retrieved row whose dataset answers in the task's labels keeps its own label,
    # whatever the rewriter answers (with `cot`, a disagreeing row is dropped).
    source_labels: bool = True
    # Rows retrieved per requested example: the transformation drops some.
    retrieve_factor: float = 2.0
    candidates: int = 256
    exclude_datasets: tuple = ()
    dedupe_threshold: float = 0.95
    temperature: float = 0.0
    max_new_tokens: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        if not self.datastore:
            raise ConfigError(
                "datastore: is missing. Fix: build one with selfguide.rebase.build_datastore(sources, path) or `selfguide datastore`, and pass datastore=path"
            )
        if self.retrieve_factor < 1:
            raise ConfigError(f"retrieve_factor: must be at least 1, got {self.retrieve_factor}")
        if self.candidates < 1:
            raise ConfigError(f"candidates: nearest texts fetched per demo, must be at least 1, got {self.candidates}")

    def cache_kwargs(self) -> dict:
        kwargs = super().cache_kwargs()
        # The datastore's content, not its path: a rebuilt datastore must not reuse old rows.
        kwargs["datastore"] = Datastore.read_fingerprint(self.datastore)
        return kwargs


class ReBase(TaskDatasetBuilder):
    BUILDER_CONFIG_CLASS = ReBaseConfig
    METHOD = "ReBase"

    def provenance_features(self):
        return {
            "reasoning": datasets.Value("string"),
            "source_dataset": datasets.Value("string"),
            "source_config": datasets.Value("string"),
            "source_split": datasets.Value("string"),
            "source_row_id": datasets.Value("string"),
            "source_license": datasets.Value("string"),
            "retrieval_score": datasets.Value("float32"),
            "label_from_source": datasets.Value("bool"),
        }

    def provenance_defaults(self):
        return {
            "reasoning": "",
            "source_dataset": "",
            "source_config": "",
            "source_split": "",
            "source_row_id": "",
            "source_license": "",
            "retrieval_score": -1.0,
            "label_from_source": False,
        }

    def synthesize(self, task: Task, journal: Journal, report: FilterReport) -> list[dict]:
        store = Datastore.load(self.config.datastore)
        return ReBasePipeline(task, store, self.engine, self.config, journal, report).run()
