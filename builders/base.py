"""What both data methods share: a task in, `train` (synthetic) and `test` (gold) splits out.

A subclass supplies its config knobs, its provenance columns and `synthesize`; this class turns the
task into the cache key, keeps the resume journal, adds the prompt/completion columns that TRL's
SFTTrainer reads, and stores the filter report in the dataset's description.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import logging
import numbers
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import datasets
import numpy as np

from ..engines import Engine, OpenAIEngine, ServerError, TransformersEngine
from ..journal import Journal
from ..prompt_format import PROMPT_FORMATS, resolve_prompt_format
from ..prompts import prompt_completion
from ..report import FilterReport
from ..patches import installed_versions
from ..student import DEFAULT_STUDENT, EMBEDDED_PACKAGE, resolve_dtype
from ..task import Task, TaskSpecError
from ..errors import ConfigError, SelfGuideError

logger = logging.getLogger(__name__)


_BUILDER_CONFIG_FIELDS = {f.name for f in fields(datasets.BuilderConfig)}
# DatasetBuilder's own arguments: every other keyword a builder gets is a config knob.
_BUILDER_ARGS = set(inspect.signature(datasets.DatasetBuilder.__init__).parameters)
# Knobs that change how fast rows are made, never which rows: kept out of the cache key
# (and the api key must not end up in a cache folder name).
_NOT_IN_CACHE_KEY = {"api_key", "concurrency", "timeout", "max_retries", "ray_address"}
ENGINES = ("transformers", "llama.cpp")


def _typed(knob, value):
    """`value` as its knob's annotated type, spelled one way for the cache key: a path as its string, a bare
    string for a list knob as one item, numpy numbers and 0/1 flags as Python ones, an int for a float knob
    as a float (JSON and YAML write 2 for 2.0), a list or set as a tuple. A value of another type is refused
    here; the knobs' range checks would fail on it with a bare TypeError."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    annotation = str(knob.type)
    optional = annotation.startswith("Optional[")
    name = annotation[len("Optional[") : -1] if optional else annotation
    if name not in ("bool", "int", "float", "str", "tuple") or (optional and value is None):
        return value
    is_flag = isinstance(value, (bool, np.bool_))
    if name == "bool" and (is_flag or isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    if name == "int" and isinstance(value, numbers.Integral) and not is_flag:
        return int(value)
    if name == "float" and isinstance(value, numbers.Real) and not is_flag:
        return float(value)
    if name == "str" and isinstance(value, str):
        return value
    if name == "tuple" and isinstance(value, str):
        return (value,)  # iterated, it would be one item per character
    if name == "tuple" and isinstance(value, (tuple, list, set, frozenset)):
        return tuple(sorted(value)) if isinstance(value, (set, frozenset)) else tuple(value)
    kind = "a list" if name == "tuple" else name
    raise ConfigError(f"{knob.name}: must be {kind}{' or None' if optional else ''}, got {value!r}. Fix: pass a value of that type")


class NoRowsError(SelfGuideError, RuntimeError):
    """Every synthetic row was filtered out; the message carries the filter report and the fix."""


@dataclass
class TaskDatasetConfig(datasets.BuilderConfig):
    """Knobs common to every method. `task` is a path (NI V2 task file, YAML, JSON), a dict or a `Task`."""

    # Libraries whose behaviour changes the rows written (sampling, tokenization, the saved files): their versions
    # key the cache, so an upgrade makes new rows instead of reusing old ones. Not a knob (no annotation).
    ROW_LIBRARIES = ("datasets", "torch", "transformers", "llama-cpp-python")

    task: Any = None
    model: Optional[str] = None
    num_examples: int = 64
    seed: int = 0
    batch_size: int = 16
    dtype: str = "auto"
    # The engine that runs `model`: "transformers" in process (any Hub id, folder or .gguf, dequantized), or
    # "llama.cpp" in process (a .gguf through llama-cpp-python). A `base_url` sends every call to an
    # OpenAI-compatible server (vLLM, llama.cpp's server, TGI) instead, where `model` names the served model.
    engine: str = "transformers"
    base_url: Optional[str] = None
    api_key: Optional[str] = None  # default: $OPENAI_API_KEY; never part of the cache key
    concurrency: int = 4  # requests in flight to base_url
    timeout: float = 120.0
    max_retries: int = 4
    # Where a served model's chat template comes from (Hub id, folder or .gguf); a server does not say.
    tokenizer: Optional[str] = None
    # "chat": prompts and training rows in the student's chat template (TRL's conversational prompt-completion
    # rows); "document": plain documents for a base model to continue; "auto": chat when the student has a template.
    prompt_format: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        if self.task is None:
            raise TaskSpecError("task", "is missing", 'pass load_dataset(..., task="path/to/task.yaml") or a dict')
        for knob in fields(self):
            setattr(self, knob.name, _typed(knob, getattr(self, knob.name)))
        for knob in ("num_examples", "batch_size"):
            if getattr(self, knob) < 1:
                raise ConfigError(f"{knob}: must be a positive integer, got {getattr(self, knob)!r}")
        resolve_dtype(self.dtype)  # a bad name fails here, not when the engine loads after retrieval
        if self.engine not in ENGINES:
            raise ConfigError(f"engine: {self.engine!r} is not one of {ENGINES}. Fix: pass one of them, or base_url=... for a server")
        if self.base_url and self.engine != "transformers":
            raise ConfigError(f"engine: {self.engine!r} runs in process, but base_url={self.base_url!r} sends calls to a server. Fix: drop one of them")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format: {self.prompt_format!r} is not one of {PROMPT_FORMATS}")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0:
            raise ConfigError("concurrency/max_retries/timeout: need concurrency >= 1, max_retries >= 0 and timeout > 0")

    @classmethod
    def check_knobs(cls, kwargs: dict) -> None:
        """A misspelt knob is an error naming the nearest one; the dataclass would raise a bare TypeError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            knobs = sorted(known - _BUILDER_CONFIG_FIELDS)
            problems = []
            for name in unknown:
                near = difflib.get_close_matches(name, knobs, n=1)
                problems.append(f"{name}: no such knob of {cls.__name__}" + (f" (did you mean '{near[0]}'?)" if near else ""))
            raise ConfigError("; ".join(problems) + f". Fix: correct or remove it; the knobs are {', '.join(knobs)}")

    def cache_kwargs(self) -> dict:
        """What the cache key hashes: every knob's value, defaults included, so `seed=0` named or left out
        is one cache; the task by its content, not the path or object that carried it; and the default
        student by one name however it was given (the recipe, the CLI and a bare load_dataset share it); and the
        versions of the ROW_LIBRARIES installed, and of the embedded student's package when it is the student."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _BUILDER_CONFIG_FIELDS | _NOT_IN_CACHE_KEY}
        kwargs["task"] = Task.load(self.task).fingerprint()
        if kwargs["model"] in (None, ""):
            kwargs["model"] = DEFAULT_STUDENT
        packages = self.ROW_LIBRARIES + ((EMBEDDED_PACKAGE,) if kwargs["model"] == DEFAULT_STUDENT else ())
        kwargs["versions"] = installed_versions(packages)
        return kwargs

    def create_config_id(self, config_kwargs: dict, custom_features=None) -> str:
        return super().create_config_id(self.cache_kwargs(), custom_features)


def build_engine(cfg: TaskDatasetConfig, progress: Optional[str] = None) -> Engine:
    """The engine a config names: a server with `base_url`, else `engine` in process. A function of the config
    alone, so a Ray worker builds the same engine the driver would."""
    if cfg.base_url:
        return OpenAIEngine(
            cfg.base_url, model=cfg.model, api_key=cfg.api_key or os.environ.get("OPENAI_API_KEY"), timeout=cfg.timeout,
            max_retries=cfg.max_retries, concurrency=cfg.concurrency, tokenizer=cfg.tokenizer,
        )
    if cfg.engine == "llama.cpp":
        from ..engines.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine.from_pretrained(cfg.model, seed=cfg.seed, progress=progress)
    return TransformersEngine.from_pretrained(cfg.model, dtype=cfg.dtype, batch_size=cfg.batch_size, progress=progress)


class TaskDatasetBuilder(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = TaskDatasetConfig
    METHOD = "synthetic"
    NO_ROWS_FIX = "loosen the filter that dropped most rows, or use a stronger model"

    # -- what a method provides ------------------------------------------------------------------

    def provenance_features(self) -> dict[str, datasets.Value]:
        """Columns saying where each synthetic row came from; gold rows get `provenance_defaults`."""
        return {}

    def provenance_defaults(self) -> dict[str, Any]:
        return {}

    def synthesize(self, task: Task, journal: Journal, report: FilterReport) -> list[dict]:
        """Rows with `input`, `output` and the provenance columns."""
        raise NotImplementedError

    # -- the shared machinery --------------------------------------------------------------------

    def engine(self, progress: Optional[str] = None) -> Engine:
        return build_engine(self.config, progress)

    def __init__(self, cache_dir: Optional[str] = None, **kwargs):
        # A misspelt knob is named here; datasets would hand it to the config class, a bare TypeError.
        self.BUILDER_CONFIG_CLASS.check_knobs({k: v for k, v in kwargs.items() if k not in _BUILDER_ARGS})
        super().__init__(cache_dir=cache_dir, **kwargs)
        self.cache_root = Path(os.path.expanduser(cache_dir or datasets.config.HF_DATASETS_CACHE))  # as datasets roots its cache

    @property
    def chat(self) -> bool:
        """Whether prompts and training rows use the student's chat template (`prompt_format`)."""
        if not hasattr(self, "_chat"):
            cfg = self.config
            self._chat = resolve_prompt_format(cfg.prompt_format, cfg.model, cfg.base_url, cfg.tokenizer) == "chat"
        return self._chat

    @property
    def task(self) -> Task:
        if not hasattr(self, "_task"):
            self._task = Task.load(self.config.task)
        return self._task

    def _info(self) -> datasets.DatasetInfo:
        # Document rows here: a cached dataset's own info replaces this one, and a build that finds the student to be
        # a chat model switches prompt and completion to turns (_split_generators) once the student is at hand.
        text = datasets.Value("string")
        features = {"input": text, "output": text, "prompt": text, "completion": text}
        if self.task.is_classification:
            features["label"] = datasets.ClassLabel(names=self.task.labels)
        features.update(self.provenance_features())
        return datasets.DatasetInfo(
            description=f"{self.METHOD} synthetic data for task '{self.task.name}'",
            features=datasets.Features(features),
        )

    @property
    def work_dir(self) -> Path:
        """Resume state lives beside the cache, keyed like it, and outlives failed attempts."""
        key = hashlib.sha256(str(self.cache_dir).encode()).hexdigest()[:16]
        return self.cache_root / "selfguide_work" / f"{self.dataset_name}-{key}"

    def _row(self, row: dict) -> dict:
        out = dict(row)
        out.update(prompt_completion(self.task, row["input"], row.get("completion_text", row["output"]), chat=self.chat))
        out.pop("completion_text", None)
        if self.task.is_classification:
            out["label"] = self.task.labels.index(row["output"])
        return out

    def _split_generators(self, dl_manager):
        task = self.task
        report = FilterReport()
        if self.chat:  # TRL's conversational prompt-completion rows: lists of {role, content} turns
            text = datasets.Value("string")
            turns = [{"role": text, "content": text}]
            self.info.features = datasets.Features({**self.info.features, "prompt": turns, "completion": turns})
        try:
            rows = self.synthesize(task, Journal(self.work_dir / "journal.jsonl"), report)
        except ServerError as e:
            raise ServerError(f"{e}\nFinished batches are kept in {self.work_dir}: the same call continues from them.") from e
        if not rows:
            raise NoRowsError(
                f"{self.METHOD}: no synthetic row survived the filters for task '{task.name}'.\n{report.summary()}\n"
                f"Fix: {self.NO_ROWS_FIX}. "
                f"Finished batches are kept in {self.work_dir} and reused on the next run."
            )
        if len(rows) < self.config.num_examples:
            logger.warning("%s: %d of the %d requested rows survived", self.METHOD, len(rows), self.config.num_examples)
        headline = f"{self.METHOD} synthetic data for task '{task.name}': {len(rows)} rows"
        print(f"{headline}\n{report.summary()}")
        self.info.description = report.to_description(headline)
        splits = [datasets.SplitGenerator(datasets.Split.TRAIN, gen_kwargs={"rows": [self._row(r) for r in rows]})]
        if task.gold:
            defaults = self.provenance_defaults()
            gold = [self._row({"input": g.input, "output": g.output, **defaults}) for g in task.gold]
            splits.append(datasets.SplitGenerator(datasets.Split.TEST, gen_kwargs={"rows": gold}))
        return splits

    def _generate_examples(self, rows):
        yield from enumerate(rows)
