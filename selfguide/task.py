"""The task spec: an instruction, a few demonstrations, and (optionally) gold rows kept for evaluation."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .metrics import match_label, normalize_label
from .errors import ConfigError

TaskType = Literal["classification", "generation"]
TASK_TYPES = ("classification", "generation")


class TaskSpecError(ConfigError):
    """A task spec is unusable. The message names the field and the fix."""

    def __init__(self, field_name: str, problem: str, fix: str, source: Optional[str] = None):
        where = f" in {source}" if source else ""
        super().__init__(f"task field '{field_name}'{where}: {problem}. Fix: {fix}")
        self.field = field_name


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    # Every answer the row accepts when it has several (an NI instance lists them), `output` first; () when
    # `output` is the only one. Scoring takes the best of them.
    references: tuple[str, ...] = ()

    @property
    def answers(self) -> tuple[str, ...]:
        return self.references or (self.output,)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output} | ({"references": list(self.references)} if self.references else {})


@dataclass
class Task:
    """What the user wants a model for.

    `examples` are the demonstrations shown to synthesis and prompting; `gold` rows (NI `Instances`,
    or a spec's `test` list) are held out for evaluation and never reach a synthesis prompt.
    `label_aliases` gives other names of a label (`{"E": ["entailment"]}`): a label written as a
    letter or digit says nothing to a retriever or a rewriter, while existing datasets write the word.
    Answers are still scored against the labels themselves.
    """

    name: str
    instruction: str
    examples: list[Example]
    type: TaskType
    labels: Optional[list[str]] = None
    gold: list[Example] = field(default_factory=list)
    source: Optional[str] = None
    label_aliases: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    @property
    def is_classification(self) -> bool:
        return self.type == "classification"

    def validate(self) -> None:
        src = self.source
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise TaskSpecError("instruction", "is missing or empty", "write one or two sentences saying what the model must do", src)
        if not self.examples:
            raise TaskSpecError("examples", "has no entries", "give at least one {input, output} demonstration", src)
        if self.type not in TASK_TYPES:
            raise TaskSpecError("type", f"is {self.type!r}", f"use one of {TASK_TYPES} or leave it out to infer it", src)
        for i, ex in enumerate(self.examples):
            if not ex.input.strip():
                raise TaskSpecError(f"examples[{i}].input", "is empty", "give the demonstration's input text", src)
            if not ex.output.strip():
                raise TaskSpecError(f"examples[{i}].output", "is empty", "give the demonstration's expected output", src)
        if self.is_classification:
            if not self.labels:
                raise TaskSpecError("labels", "is empty for a classification task", "list the label strings", src)
            for label in self.labels:
                if not isinstance(label, str):
                    raise TaskSpecError("labels", f"label {label!r} is not a string", f"write it as text, e.g. {str(label)!r}", src)
                if not normalize_label(label):
                    raise TaskSpecError("labels", f"label {label!r} has no letter or digit in it, so no answer can match it",
                                        "name the label with a word, e.g. 'question' for '?'", src)
            if len(set(self.labels)) < 2:
                # Nothing to choose between: label scoring and class balance need a second class.
                raise TaskSpecError(
                    "labels", f"has only one label ({self.labels[0]!r}) for a classification task",
                    "add examples of at least two labels, or set type: generation", src,
                )
            known = set(self.labels)
            for field_name, rows in (("examples", self.examples), ("test", self.gold)):
                for i, ex in enumerate(rows):
                    if ex.output in known:
                        continue
                    raise TaskSpecError(
                        f"{field_name}[{i}].output",
                        f"is {ex.output!r}, which is not one of the labels {self.labels}",
                        "add it to 'labels' or correct the row",
                        src,
                    )
        elif self.labels:
            raise TaskSpecError("labels", "is set for a generation task", "drop 'labels' or set type: classification", src)
        self._validate_aliases()

    def _validate_aliases(self) -> None:
        src = self.source
        if not isinstance(self.label_aliases, dict):
            raise TaskSpecError("label_aliases", "is not a mapping", "write e.g. label_aliases: {E: [entailment]}", src)
        if not self.label_aliases:
            return
        if not self.is_classification:
            raise TaskSpecError("label_aliases", "is set for a generation task", "drop 'label_aliases' or set type: classification", src)
        # A single alias may be given bare; a label key written as a number in JSON or Python means its text.
        self.label_aliases = {str(label): [names] if isinstance(names, str) else names for label, names in self.label_aliases.items()}
        owner = {normalize_label(label): label for label in self.labels}
        for label, names in self.label_aliases.items():
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise TaskSpecError(f"label_aliases.{label}", "must be a non-empty string or list of them", f"write e.g. {label}: [entailment]", src)
            if label not in self.labels:
                raise TaskSpecError(f"label_aliases.{label}", f"names no label of {self.labels}", "key each alias list by one of the labels", src)
            for name in names:
                if not normalize_label(name):
                    # Normalised away entirely ("?!"), it would match every empty answer.
                    raise TaskSpecError(f"label_aliases.{label}", f"alias {name!r} has no word in it", "give words, e.g. [entailment]", src)
                taken = owner.setdefault(normalize_label(name), label)
                if taken != label:
                    raise TaskSpecError(
                        f"label_aliases.{label}", f"alias {name!r} already names {taken!r}", "give each alias to one label only", src
                    )

    def named_labels(self) -> list[str]:
        """Each label with its aliases, as prompts and cards show them: `E (entailment)`."""
        return [f"{label} ({', '.join(self.label_aliases[label])})" if label in self.label_aliases else label for label in self.labels or []]

    def label_of(self, answer: str) -> Optional[str]:
        """The label `answer` is, by name, alias or the named form prompts show (`E (entailment)`), up to
        normalisation; None for any other text."""
        labels = self.labels or []
        names = {label: [*self.label_aliases.get(label, []), shown] for label, shown in zip(labels, self.named_labels())}
        return match_label(answer, labels, names)

    def fingerprint(self) -> str:
        """Content hash: the cache key of everything derived from this task."""
        # Without aliases a task hashes as it did before the field existed.
        fields = {k: v for k, v in asdict(self).items() if k != "source" and not (k == "label_aliases" and not v)}
        # Rows hash as written, so a row with one answer hashes as it did before `references` existed.
        fields |= {"examples": [e.to_dict() for e in self.examples], "gold": [e.to_dict() for e in self.gold]}
        payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "instruction": self.instruction,
            "type": self.type,
            "labels": self.labels,
            "examples": [e.to_dict() for e in self.examples],
            "test": [e.to_dict() for e in self.gold],
        } | ({"label_aliases": self.label_aliases} if self.label_aliases else {})

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def load(cls, spec: Union["Task", dict, str, os.PathLike]) -> "Task":
        """Build a task from a `Task`, a dict, or a path to a NI V2 task file / YAML / JSON spec."""
        if isinstance(spec, Task):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        if isinstance(spec, (str, os.PathLike)):
            return cls.from_file(spec)
        raise TaskSpecError("task", f"has type {type(spec).__name__}", "pass a path, a dict or a selfguide.Task")

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "Task":
        path = Path(path)
        src = str(path)
        if path.is_dir():
            saved = path / TASK_FILE
            fix = (f"pass {saved}, the task spec `selfguide generate` saved there" if saved.is_file()
                   else "pass the task file inside it: a NI V2 task file or a YAML/JSON spec")
            raise TaskSpecError("task", f"{src} is a folder, not a task file", fix)
        if not path.is_file():
            raise TaskSpecError("task", f"file {src} does not exist", "pass the path of a NI V2 task file or a YAML/JSON spec")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise TaskSpecError("task", f"file is not UTF-8 ({e.reason} at byte {e.start})", "re-save the file as UTF-8", src) from None
        except OSError as e:
            raise TaskSpecError("task", f"file cannot be read ({e.strerror})", "check the path and its permissions", src) from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                data = _load_yaml(text)
            else:
                data = json.loads(text)
        except Exception as e:  # yaml and json raise different types; both mean "unparseable"
            raise TaskSpecError("task", f"file cannot be parsed ({e})", "fix the YAML/JSON syntax", src) from None
        if not isinstance(data, dict):
            raise TaskSpecError("task", "file does not hold a mapping", "write a mapping with 'instruction' and 'examples'", src)
        name = task_name(path)
        if "Definition" in data or "Positive Examples" in data:
            return cls.from_natural_instructions(data, name=name, source=src)
        return cls.from_dict(data, name=name, source=src)

    @classmethod
    def from_dict(cls, data: dict, name: Optional[str] = None, source: Optional[str] = None) -> "Task":
        instruction = data.get("instruction")
        if isinstance(instruction, list):
            instruction = " ".join(instruction)
        examples = _examples(data.get("examples"), "examples", source)
        gold = _examples(data.get("test") or [], "test", source) if data.get("test") else []
        labels = data.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or not all(isinstance(label, str) and label.strip() for label in labels):
                raise TaskSpecError("labels", "must be a list of non-empty strings", 'write e.g. labels: ["yes", "no"]', source)
        task_type = data.get("type") or infer_type(examples, gold, labels)
        if task_type == "classification" and not labels:
            labels = _label_set(examples, gold)
        return cls(
            name=str(data.get("name") or name or "task"),
            instruction=(instruction or "").strip() if isinstance(instruction, str) else instruction,
            examples=examples,
            type=task_type,
            labels=labels,
            gold=gold,
            source=source,
            label_aliases={} if data.get("label_aliases") is None else data["label_aliases"],
        )

    @classmethod
    def from_natural_instructions(cls, data: dict, name: str, source: Optional[str] = None) -> "Task":
        """A Natural Instructions V2 task file: Definition, Positive Examples, Instances."""
        definition = data.get("Definition")
        instruction = " ".join(definition) if isinstance(definition, list) else definition
        examples = _examples(data.get("Positive Examples"), "Positive Examples", source)
        gold = []
        for i, inst in enumerate(data.get("Instances") or []):
            outputs = inst.get("output")
            outputs = outputs if isinstance(outputs, list) else [outputs]
            if isinstance(inst.get("input"), str) and outputs and all(isinstance(o, str) for o in outputs):
                gold.append(Example(inst["input"], outputs[0], tuple(outputs) if len(outputs) > 1 else ()))
        task_type = infer_type(examples, gold, None)
        labels = _label_set(examples, gold) if task_type == "classification" else None
        return cls(name=name, instruction=instruction or "", examples=examples, type=task_type, labels=labels, gold=gold, source=source)

    @classmethod
    def from_saved(cls, folder: Union[str, os.PathLike]) -> Optional["Task"]:
        """The task `save_task` saved in `folder` (as `selfguide generate` does beside its dataset), or None."""
        path = Path(folder) / TASK_FILE
        return cls.from_file(path) if path.is_file() else None


TASK_FILE = "task.json"


def task_name(path: Union[str, os.PathLike]) -> str:
    """A task file's task name: its whole stem, dots and all (`task1529_scitail1.1_classification`, `my.task`)."""
    return Path(path).stem


def save_task(task: Task, folder: Union[str, os.PathLike]) -> Path:
    """Write the task's spec as `task.json` in `folder` (a dataset made for it, say); `Task.from_saved` reads it back."""
    path = Path(folder) / TASK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(task.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@functools.lru_cache(maxsize=1)
def _spec_loader():
    """A YAML loader that reads every scalar as written: a spec holds text, and YAML 1.1 would turn the labels
    `yes`/`no` into booleans (then "True"/"False"), `1.50` into 1.5 and a date into a datetime."""
    import yaml

    class SpecLoader(yaml.SafeLoader):
        pass

    kept = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
    SpecLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag in kept]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return SpecLoader


def _load_yaml(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_spec_loader())


def _examples(raw: Any, field_name: str, source: Optional[str]) -> list[Example]:
    if raw is None:
        raise TaskSpecError(field_name, "is missing", "add a list of {input, output} demonstrations", source)
    if not isinstance(raw, list):
        raise TaskSpecError(field_name, "is not a list", "write a list of {input, output} mappings", source)
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise TaskSpecError(f"{field_name}[{i}]", "is not a mapping", "write {input: ..., output: ...}", source)
        for key in ("input", "output"):
            if key not in item or item[key] is None:
                raise TaskSpecError(f"{field_name}[{i}].{key}", "is missing", f"add the '{key}' text", source)
        output, references = str(item["output"]), item.get("references") or []
        if not isinstance(references, list) or not all(isinstance(r, str) for r in references) or references[:1] not in ([], [output]):
            raise TaskSpecError(f"{field_name}[{i}].references", "must be a list of strings whose first is the row's output",
                                f"write references: [{output!r}, <each other accepted answer>], or leave it out", source)
        out.append(Example(str(item["input"]), output, tuple(references) if len(references) > 1 else ()))
    return out


def _label_set(examples: list[Example], gold: list[Example]) -> list[str]:
    counts = Counter(e.output for e in examples + gold)
    return sorted(counts)


def infer_type(examples: list[Example], gold: list[Example], labels: Optional[list[str]]) -> TaskType:
    """Classification when outputs come from a small closed set of short strings."""
    if labels:
        return "classification"
    rows = examples + gold
    if not rows:
        return "generation"
    outputs = [e.output.strip() for e in rows]
    distinct = set(outputs)
    short = all(len(o.split()) <= 3 for o in outputs)
    if gold:
        # Many rows and few distinct answers is the signature of a label set.
        return "classification" if short and len(distinct) <= min(20, max(2, len(rows) // 5)) else "generation"
    return "classification" if short and len(distinct) < len(outputs) else "generation"
