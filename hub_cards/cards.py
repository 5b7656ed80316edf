"""Render the model card and the synthetic dataset card from the Jinja templates beside this file.

Both go through huggingface_hub's card classes, so the YAML header is the Hub's own serialisation;
`validate_*` re-parse what was rendered the way the Hub reads it and check the fields it would reject.
The Hub's online validator (`RepoCard.validate`) needs the network, so it is not called here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..diagnosis import finetuning_warnings
from ..evaluation import FEW_SHOT, ZERO_SHOT, TaskScore, format_table
from ..metrics import metric_name
from ..report import FilterReport
from ..task import Task
from ..errors import ConfigError
from ..patches import installed_versions

TEMPLATES = Path(__file__).parent
# The embedded student is Google's Gemma 3 270M base model (shipped as a Q4_K_M GGUF and dequantised).
EMBEDDED_BASE_MODEL_ID = "google/gemma-3-270m"
EMBEDDED_LICENSE = "gemma"

_METHODS = {
    "selfguide": ("SELF-GUIDE", "the base model wrote and labelled itself (SELF-GUIDE)"),
    "rebase": ("ReBase", "was retrieved from existing datasets and rewritten for the task (ReBase)"),
}
# What a reader must know of the rows before training on them; keyed by DataSummary.method.
_LIMITS = {
    "SELF-GUIDE": (
        "The rows were written and labelled by the base model itself: expect label noise, near-duplicates that "
        "the filters missed, and inputs narrower than real traffic, and the biases of the model. Nothing was reviewed by a person."
    ),
    "ReBase": (
        "The rows are rows of existing datasets, rewritten into the task's format by a model. A row whose dataset "
        "uses the task's labels keeps its annotators' label (`label_from_source`); the others were labelled by the "
        "rewriter, so expect label noise there. The `source_*` columns name each row's dataset and license: those "
        "licenses, and the sources' biases, carry over."
    ),
}
_METRIC_TYPES = {"exact_match": ("exact_match", "Exact match"), "rougeL": ("rouge", "ROUGE-L")}
_PIPELINE_TAGS = {"classification": "text-classification", "generation": "text-generation"}


class CardValidationError(ConfigError):
    pass


@dataclass
class DataSummary:
    """Where the training rows came from, for both cards."""

    method: str
    source: str
    writer_sentence: str
    train_rows: int
    test_rows: int = 0
    report: Optional[FilterReport] = None
    hub_id: Optional[str] = None
    hub_has_gold: bool = False  # whether the pushed dataset holds the gold rows as its `test` split
    settings: dict = field(default_factory=dict)

    @property
    def synthesized(self) -> bool:
        """Whether a selfguide builder made the rows, so the cards can vouch for how they were made."""
        return self.method in _LIMITS

    @property
    def limits(self) -> str:
        return _LIMITS.get(self.method, f"The rows came from {self.source}: that dataset's own card tells how they were made.")

    @classmethod
    def from_dataset(cls, dataset, source: str, train, test=None, settings: Optional[dict] = None) -> "DataSummary":
        """`dataset` is a DatasetDict; the method is read from the builder that made it. `train` and `test` are the
        splits trained and evaluated on, whatever their names (--dataset_train_split train_sft, say)."""
        from ..report import filter_report

        first = next(iter(dataset.values()))
        method, sentence = _METHODS.get(first.info.builder_name or "", ("given dataset", f"came from {source}"))
        try:
            report = filter_report(dataset)
        except ValueError:
            report = None
        return cls(
            method=method,
            source=source,
            writer_sentence=sentence,
            train_rows=train.num_rows,
            test_rows=test.num_rows if test is not None else 0,
            report=report,
            settings=dict(settings or {}),
        )


@dataclass
class ModelCardInfo:
    """Everything about a finetuning run that the model card states, other than scores and hyperparameters."""

    model_name: str
    task: Task
    base_model: str  # what was loaded: a Hub id or a local folder
    finetuning: str  # "qlora", "lora" or "full"
    data: DataSummary
    base_model_id: Optional[str] = None  # the Hub id for the `base_model` metadata, when there is one
    adapter: Optional[dict] = None  # r, alpha, dropout, target_modules
    quantization: Optional[dict] = None
    license: Optional[str] = None
    repo_id: Optional[str] = None
    base_model_note: Optional[str] = None
    train_prompt: str = ZERO_SHOT  # or FEW_SHOT: the prompt the model was trained and scored with
    prompt_format: str = "document"  # or "chat": the prompt as one user turn of the base model's chat template
    dtype: Optional[str] = None  # the weights' dtype and, under "auto", why (student.dtype_choice)


def report_table(report: Optional[FilterReport]) -> str:
    if report is None or not report.stages:
        return ""
    lines = ["| stage | rows in | rows out | dropped |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {rows_in} | {rows_out} | {reasons} |" for name, rows_in, rows_out, reasons in report.rows()]
    return "\n".join(lines)


def eval_results(task: Task, scores: Sequence[TaskScore], dataset_id: Optional[str] = None) -> list[EvalResult]:
    """One model-index entry per row of the before/after table, told apart by `metric_config`."""
    results = []
    for s in scores:
        metric_type, pretty = _METRIC_TYPES[s.metric]
        results.append(
            EvalResult(
                task_type=_PIPELINE_TAGS[task.type],
                task_name=task.name,
                dataset_type=dataset_id or task.name,
                dataset_name=f"{task.name} (gold rows)",
                dataset_split="test",
                metric_type=metric_type,
                metric_name=f"{pretty}, {s.label}",
                metric_config=f"{s.model}-{s.prompt}",
                metric_value=round(s.value, 2),
            )
        )
    return results


def _prompt_code(info: ModelCardInfo) -> str:
    """Code that builds the prompt the model was trained with, as selfguide.prompts formats it."""
    task = info.task
    lines = [f"instruction = {task.instruction.strip()!r}"]
    if info.train_prompt == FEW_SHOT:
        lines.append("demonstrations = [  # (input, output); training shuffled their order for each row")
        lines += [f"    ({e.input.strip()!r}, {e.output.strip()!r})," for e in task.examples]
        lines.append("]")
    lines.append(f"text = {task.examples[0].input.strip()!r}")
    if info.train_prompt == FEW_SHOT:
        lines.append('shots = "".join(f"Input: {x}\\nOutput: {y}\\n\\n" for x, y in demonstrations)')
        lines.append('prompt = f"{instruction}\\n\\n{shots}Input: {text}\\nOutput:"')
    else:
        lines.append('prompt = f"{instruction}\\n\\nInput: {text}\\nOutput:"')
    return "\n".join(lines)


def usage_snippet(info: ModelCardInfo) -> str:
    where = info.repo_id or info.model_name
    base = info.base_model_id or info.base_model
    imports = "from transformers import AutoModelForCausalLM, AutoTokenizer"
    if not info.adapter:
        load = f"tokenizer = AutoTokenizer.from_pretrained({where!r})\nmodel = AutoModelForCausalLM.from_pretrained({where!r})"
    else:
        imports = f"from peft import PeftModel\n{imports}"
        load = f"tokenizer = AutoTokenizer.from_pretrained({base!r})\nmodel = AutoModelForCausalLM.from_pretrained({base!r})"
        if info.quantization:
            # The adapter learned on the 4-bit base's outputs and scored far worse on a full-precision base
            # (selfguide/evaluation.py): load the base as training did.
            q = info.quantization
            imports = f"import torch\n{imports}, BitsAndBytesConfig"
            load = (
                f"quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={q['quant_type']!r}, "
                f"bnb_4bit_use_double_quant={q['double_quant']!r}, bnb_4bit_compute_dtype=torch.{q['compute_dtype']})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({base!r})\n"
                f"model = AutoModelForCausalLM.from_pretrained({base!r}, quantization_config=quantization)"
            )
        load += f"\nmodel = PeftModel.from_pretrained(model, {where!r})"
    chat = (
        '# Trained as one user turn of the chat template:\n'
        'prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)\n'
        'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)\n'
    )
    return (
        f"{imports}\n\n{_prompt_code(info)}\n\n{load}\n\n"
        + (chat if info.prompt_format == "chat" else 'inputs = tokenizer(prompt, return_tensors="pt").to(model.device)\n')
        + "output = model.generate(**inputs, max_new_tokens=32, do_sample=False)\n"
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).split("\\n\\n")[0].strip())'
    )


_FINETUNING_LABELS = {
    "qlora": "QLoRA: LoRA adapter trained on a 4-bit quantised, frozen base",
    "lora": "LoRA adapter trained on the frozen base",
    "full": "full finetuning of every weight",
}


def render_model_card(info: ModelCardInfo, scores: Sequence[TaskScore], hyperparameters: dict) -> ModelCard:
    task = info.task
    tags = ["selfguide", "trl", "sft", "synthetic-data", info.finetuning]
    card_data = ModelCardData(
        base_model=info.base_model_id,
        datasets=[info.data.hub_id] if info.data.hub_id else None,
        library_name="peft" if info.adapter else "transformers",
        license=info.license,
        pipeline_tag="text-generation",
        tags=tags,
        model_name=info.model_name,
        # The scores' dataset is the pushed one only where its `test` split holds the rows they were made on.
        eval_results=eval_results(task, scores, info.data.hub_id if info.data.hub_has_gold else None) or None,
    )
    kind = "A LoRA adapter" if info.adapter else "A finetuned model"
    base_line = f"`{info.base_model_id}`" if info.base_model_id else f"`{info.base_model}` (local)"
    context = dict(
        model_name=info.model_name,
        kind_sentence=f"{kind} on {base_line}",
        task=task,
        num_gold=len(task.gold),
        num_scored=scores[0].num_rows if scores else 0,  # fewer than num_gold under max_eval_rows
        data=info.data,
        scores=list(scores),
        score_table=format_table(scores, task.labels),
        warnings=finetuning_warnings(scores, task),
        metric_label=_METRIC_TYPES[metric_name(task.type)][1],
        report_table=report_table(info.data.report),
        base_model_line=base_line,
        base_model_note=info.base_model_note,
        finetuning_label=_FINETUNING_LABELS[info.finetuning],
        adapter=info.adapter,
        quantization=info.quantization,
        train_prompt=info.train_prompt,
        prompt_format=info.prompt_format,
        dtype=info.dtype,
        hyperparameters=hyperparameters,
        usage=usage_snippet(info),
        versions=installed_versions(
            ["selfguide", "transformers", "trl", "peft", "torch", "datasets", "huggingface_hub"]
            + (["bitsandbytes"] if info.quantization else [])
        ),
    )
    card = ModelCard.from_template(card_data, template_path=str(TEMPLATES / "model_card.md"), **context)
    validate_model_card(card)
    return card


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < bound:
            return label
    return "100K<n<1M"


def render_dataset_card(task: Task, data: DataSummary, columns: Sequence[str], splits: Sequence[str], license: Optional[str] = None) -> DatasetCard:
    card_data = DatasetCardData(
        license=license,
        task_categories=[_PIPELINE_TAGS[task.type]],
        tags=["synthetic", "selfguide", data.method.lower()],
        size_categories=[_size_category(data.train_rows + data.test_rows)],
        pretty_name=f"{task.name} ({data.method})",
        configs=[{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}],
    )
    card = DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        pretty_name=card_data.pretty_name,
        task=task,
        data=data,
        columns=list(columns),
        report_table=report_table(data.report),
    )
    validate_dataset_card(card)
    return card


def _check_repo_ids(field_name: str, value, problems: list[str]) -> None:
    for repo_id in [value] if isinstance(value, str) else value or []:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            problems.append(f"{field_name}: {repo_id!r} is not a Hub repo id ({e})")


def _raise(kind: str, problems: list[str]) -> None:
    if problems:
        raise CardValidationError(f"{kind} card metadata is invalid: " + "; ".join(problems))


def validate_model_card(card: ModelCard | str) -> None:
    """Re-read the card text as the Hub does (YAML header, model-index) and check the values it checks."""
    problems: list[str] = []
    try:
        data = ModelCard(str(card)).data  # raises on a model-index that cannot be parsed
    except ValueError as e:
        raise CardValidationError(f"model card metadata cannot be parsed: {e}") from None
    _check_repo_ids("base_model", data.base_model, problems)
    _check_repo_ids("datasets", data.datasets, problems)
    if data.pipeline_tag not in (None, *_PIPELINE_TAGS.values()):
        problems.append(f"pipeline_tag: {data.pipeline_tag!r} is not a text pipeline tag")
    if not all(isinstance(t, str) and t for t in data.tags or []):
        problems.append("tags: every tag must be a non-empty string")
    index = data.to_dict().get("model-index")
    if index is not None:
        name, results = model_index_to_eval_results(index)
        if not name:
            problems.append("model-index: the model name is empty")
        for r in results:
            value = r.metric_value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"model-index: metric {r.metric_name!r} has non-numeric value {value!r}")
            if not r.task_type or not r.dataset_type or not r.metric_type:
                problems.append(f"model-index: {r.metric_name!r} lacks a task, dataset or metric type")
    _raise("model", problems)


def validate_dataset_card(card: DatasetCard | str, folder: Optional[Path] = None) -> None:
    """Re-read the card; with `folder`, also check that every configured data file pattern matches a file."""
    problems: list[str] = []
    try:
        data = DatasetCard(str(card)).data
    except ValueError as e:
        raise CardValidationError(f"dataset card metadata cannot be parsed: {e}") from None
    for i, config in enumerate(data.to_dict().get("configs") or []):
        for entry in config.get("data_files") or []:
            path = entry.get("path", "")
            if not re.fullmatch(r"[\w./*\-]+", path):
                problems.append(f"configs[{i}]: data file pattern {path!r} is malformed")
            elif folder is not None and not list(Path(folder).glob(path)):
                problems.append(f"configs[{i}]: no file in {folder} matches {path!r}")
    _raise("dataset", problems)
