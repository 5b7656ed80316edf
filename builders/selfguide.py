"""`load_dataset("selfguide", task=...)`: the student writes and labels its own training data (SELF-GUIDE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import datasets

from ..journal import Journal
from ..report import FilterReport
from ..synthesis.pipeline import SelfGuidePipeline
from ..synthesis.shards import run_sharded
from ..task import Task
from .base import TaskDatasetBuilder, TaskDatasetConfig
from ..errors import ConfigError

LABEL_STRATEGIES = ("likelihood", "channel", "vote")
SCORED_STRATEGIES = ("likelihood", "channel")  # they need the log-probability of a continuation: Engine.score
BALANCE_MODES = ("cap", "downsample", "rank", "none")


@dataclass
class SelfGuideConfig(TaskDatasetConfig):
    """Every knob of the method; the defaults follow the paper unless a comment says otherwise.

    The paper's values were tuned for a 7B chat model. The remedies for a small base student
    (likelihood labels, the length-window floor, the copy filter, format checks) are on by default
    and each can be switched back to the paper's behaviour.
    """

    # (a) input generation
    temperature: Optional[float] = None  # None: 0.7 for classification, 0.9 for generation
    top_k: int = 40
    top_p: float = 1.0
    inputs_per_prompt: int = 2
    prompts_per_batch: int = 16
    min_low_quality: int = 1
    max_low_quality: int = 3  # "a few"; each one lengthens every input-generation prompt (ANLI: 800+ tokens at 10)
    input_max_new_tokens: Optional[int] = None  # None: 1.5x the longest demonstration input
    max_rounds: int = 10
    oversample: float = 2.0
    # (b) input filters
    length_std_factor: float = 2.0
    length_window_floor: float = 0.5  # the window is at least ± this fraction of the mean length
    extra_noise_patterns: tuple = ()
    format_check: bool = True
    near_duplicate_threshold: float = 0.8
    # (c) output annotation
    # classification: "likelihood" (calibrated), "channel" (the label under which the input is likeliest) or "vote" (paper)
    label_strategy: str = "likelihood"
    calibrate: bool = True  # likelihood labels only: with "channel" or "vote" it changes nothing, nor the cache key
    annotation_samples: int = 5
    annotation_temperature: float = 0.2
    min_majority: float = 0.3
    output_max_new_tokens: Optional[int] = None
    # (d) classification balance / generation output filters
    # None: "rank" with likelihood or channel labels (the argmax of a small student's labels starves every class
    # but one: on SNLI the 270M student gave no 'E' among 150 inputs), else the paper's "cap".
    balance: Optional[str] = None
    output_length_filter: bool = True
    copy_threshold: float = 0.9
    # scale-out: each round's batches dealt to this many shards, each with its own engine, seed stream and journal
    # (selfguide/synthesis/shards.py); the rows depend on the shard count, not on where the shards run
    num_shards: int = 1
    # where the shards run: None in this process, one after another; "local" a Ray started here; "auto" or
    # "ray://host:10001" a Ray cluster. Not in the cache key: the same shards give the same rows anywhere.
    ray_address: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        if self.label_strategy not in LABEL_STRATEGIES:
            raise ConfigError(f"label_strategy: {self.label_strategy!r} is not one of {LABEL_STRATEGIES}")
        if self.balance is None:
            self.balance = "cap" if self.label_strategy == "vote" else "rank"
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"balance: {self.balance!r} is not one of {BALANCE_MODES}")
        if self.balance == "rank" and self.label_strategy == "vote":
            raise ConfigError("balance: 'rank' orders rows by their label likelihoods. Fix: set label_strategy='likelihood' or 'channel', or another balance")
        if not 0 < self.min_majority <= 1:
            raise ConfigError(f"min_majority: must be in (0, 1], got {self.min_majority}")
        if not 0 <= self.min_low_quality <= self.max_low_quality:
            raise ConfigError("min_low_quality/max_low_quality: need 0 <= min_low_quality <= max_low_quality")
        if self.ray_address and self.num_shards < 2:
            raise ConfigError("ray_address: Ray runs the shards of a sharded run, and num_shards is 1. Fix: set num_shards=2 or more")
        for knob in ("inputs_per_prompt", "prompts_per_batch", "max_rounds", "annotation_samples", "num_shards"):
            if getattr(self, knob) < 1:
                raise ConfigError(f"{knob}: must be at least 1, got {getattr(self, knob)}")
        if self.oversample <= 0:
            # No candidates would be asked for, and the empty result would be blamed on the filters.
            raise ConfigError(f"oversample: candidate inputs per missing row, must be above 0, got {self.oversample}")

    def cache_kwargs(self) -> dict:
        kwargs = super().cache_kwargs()
        # Toggling a knob the labeller ignores must not re-run an identical build.
        if self.label_strategy != "likelihood":
            del kwargs["calibrate"]
        return kwargs


class SelfGuide(TaskDatasetBuilder):
    BUILDER_CONFIG_CLASS = SelfGuideConfig
    METHOD = "SELF-GUIDE"
    NO_ROWS_FIX = "raise max_rounds, loosen the filter that dropped most rows, or use a stronger model"

    def provenance_features(self):
        return {
            "round": datasets.Value("int32"),
            "votes": datasets.Value("int32"),
            "agreement": datasets.Value("float32"),
        }

    def provenance_defaults(self):
        return {"round": -1, "votes": 0, "agreement": 0.0}

    def synthesize(self, task: Task, journal: Journal, report: FilterReport) -> list[dict]:
        cfg = self.config
        on_ray = bool(cfg.ray_address)
        engine = self.engine() if not on_ray or cfg.base_url else None  # Ray's workers build their own
        try:
            if engine and task.is_classification and cfg.label_strategy in SCORED_STRATEGIES:
                engine.check_scoring()  # a server that cannot score fails here, before any sampling is spent
            if cfg.num_shards > 1:
                return run_sharded(task, None if on_ray else engine, cfg, journal.path.parent, report, chat=self.chat)
            return SelfGuidePipeline(task, engine, cfg, journal, report, chat=self.chat).run()
        finally:
            if engine:
                engine.close()
