"""Score a model on a task's gold rows: the one evaluation behind the training callback, `selfguide evaluate` and the demo.

The prompting baseline is the base model with every demonstration in the prompt; the finetuned model
gets the prompt it was trained on (zero-shot by default, few-shot with the recipe's --train_prompt few-shot). Both are decoded greedily, cut at the same stop
strings and scored with the task's metric, so the numbers compare.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence


from .engines import SamplingParams, TransformersEngine
from .metrics import metric_name, most_frequent_answer, task_score
from .prompts import DOCUMENT, OUTPUT_STOP, PromptStyle, fewshot_prompt, format_completion, tokenizer_style, training_prompt
from .task import Example, Task
from .errors import ConfigError, InputNotFoundError

FEW_SHOT = "few-shot"
ZERO_SHOT = "zero-shot"


@dataclass
class TaskScore:
    model: str  # "base" or "finetuned"
    prompt: str  # FEW_SHOT or ZERO_SHOT
    metric: str
    value: float
    num_rows: int
    predictions: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.model} model, {self.prompt} prompt"


def gold_rows(task: Task, limit: Optional[int] = None) -> list[Example]:
    if not task.gold:
        raise ConfigError(
            f"task '{task.name}': no gold rows to evaluate on. Fix: add a 'test' list of {{input, output}} rows to the task spec"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit: the number of gold rows to score must be a positive integer, got {limit!r}. Fix: pass 1 or more, or none for every row")
    return list(task.gold if limit is None else task.gold[:limit])


def build_prompts(task: Task, inputs: Sequence[str], prompt: str, seed: int = 0, style: PromptStyle = DOCUMENT) -> list[str]:
    if prompt == ZERO_SHOT:
        return [style.wrap(training_prompt(task, x)) for x in inputs]
    if prompt == FEW_SHOT:
        rng = random.Random(seed)
        return [style.wrap(fewshot_prompt(task, x, rng)) for x in inputs]
    raise ConfigError(f"prompt: {prompt!r} is not one of {(FEW_SHOT, ZERO_SHOT)}")


def default_max_new_tokens(task: Task, tokenizer, references: Sequence[str]) -> int:
    """Room for the longest reference and some slack, since a small model may say a few words before its label."""
    longest = max(len(ids) for ids in tokenizer([format_completion(r) for r in references], add_special_tokens=False)["input_ids"])
    if task.is_classification:
        return longest + 8
    return min(256, int(longest * 1.5) + 8)


def _text_tokenizer(processing_class):
    return getattr(processing_class, "tokenizer", processing_class)


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16, progress: Optional[str] = None
) -> list[str]:
    """Greedy completions, leaving the model's train/eval mode and the tokenizer's padding side as they were.

    `progress` names a progress bar over the batches (a few minutes per model on a CPU); None shows none.
    """
    tokenizer = _text_tokenizer(tokenizer)
    padding_side, was_training = tokenizer.padding_side, model.training
    model.eval()
    try:
        engine = TransformersEngine(model, tokenizer, batch_size=batch_size, progress=progress)
        outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=OUTPUT_STOP))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return [o[0].strip() for o in outputs]


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _across_processes(fn: Callable[[list], list], items: list) -> list:
    """Run `fn` on this process's share of `items` and return every process's results in the original order.

    Under torch.distributed (a multi-process Trainer) each rank decodes a strided shard, which also
    balances prompt lengths; every rank gets the full list back so they agree on the metric.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn(items)
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, fn(items[rank::world]))
    out: list = [None] * len(items)
    for r, part in enumerate(gathered):
        out[r::world] = part
    return out


@contextmanager
def base_weights(model):
    """The model without its adapter, when it has one: the 'before' of a LoRA run."""
    from peft import PeftModel

    with model.disable_adapter() if isinstance(model, PeftModel) else nullcontext():
        yield model


def score_model(
    model,
    tokenizer,
    task: Task,
    rows: Optional[Sequence[Example]] = None,
    *,
    prompt: str = ZERO_SHOT,
    model_label: str = "finetuned",
    batch_size: int = 16,
    max_new_tokens: Optional[int] = None,
    seed: int = 0,
    chat: bool = False,
) -> TaskScore:
    """The task metric of greedy answers on `rows` (the gold rows by default); `chat` puts each prompt in the
    tokenizer's chat template, as the model was trained on conversational rows."""
    rows = list(rows) if rows is not None else gold_rows(task)
    references = [r.answers for r in rows]
    tokenizer = _text_tokenizer(tokenizer)
    budget = max_new_tokens or default_max_new_tokens(task, tokenizer, [a for answers in references for a in answers])
    prompts = build_prompts(task, [r.input for r in rows], prompt, seed=seed, style=tokenizer_style(tokenizer) if chat else DOCUMENT)
    bar = f"scoring {model_label}, {prompt} prompt" if _is_main_process() else None
    predictions = _across_processes(lambda ps: generate(model, tokenizer, ps, budget, batch_size, bar), prompts)
    value = task_score(task.type, predictions, references, task.labels)
    return TaskScore(model_label, prompt, metric_name(task.type), value, len(rows), predictions)


def score_baseline(model, tokenizer, task: Task, rows=None, **kwargs) -> list[TaskScore]:
    """The base model with the few-shot prompt (the prompting baseline) and with the zero-shot training prompt."""
    with base_weights(model):
        return [score_model(model, tokenizer, task, rows, prompt=p, model_label="base", **kwargs) for p in (FEW_SHOT, ZERO_SHOT)]


PREDICTIONS_FILE = "eval_predictions.jsonl"


def write_predictions(path: Path, rows: Sequence[Example], score: TaskScore) -> None:
    """One JSON line per scored row, in order: its input, the gold output and what the model answered."""
    if len(rows) != len(score.predictions):
        raise ConfigError(f"rows: {len(rows)} rows for {len(score.predictions)} predictions. Fix: pass the rows the score was made on")
    with Path(path).open("w") as f:
        for row, prediction in zip(rows, score.predictions):
            f.write(json.dumps({"input": row.input, "reference": row.output, "prediction": prediction}) + "\n")


def format_table(scores: Sequence[TaskScore], labels: Optional[Sequence[str]] = None) -> str:
    """Markdown table: one row per (model, prompt), the metric on a 0-100 scale.

    With a classification task's `labels`, a column gives each model's most frequent answer and its share
    of the rows, for the scores that carry their predictions.
    """
    if not scores:
        return "(no evaluation)"
    metric = scores[0].metric

    def top(s: TaskScore) -> str:
        if not s.predictions:
            return "-"
        answer, share = most_frequent_answer(s.predictions, labels)
        return f"{answer} ({share:.0f}%)"

    lines = [f"| model | prompt | {metric} | rows |" + (" most frequent answer |" if labels else ""),
             "|---|---|---:|---:|" + ("---|" if labels else "")]
    lines += [f"| {s.model} | {s.prompt} | {s.value:.1f} | {s.num_rows} |" + (f" {top(s)} |" if labels else "") for s in scores]
    return "\n".join(lines)


def load_for_evaluation(
    model_name_or_path: Optional[str] = None,
    adapter: Optional[str] = None,
    *,
    load_in_4bit: bool = False,
    dtype: str = "auto",
):
    """Base model (and tokenizer), 4-bit when asked; with `adapter`, a PeftModel around it."""
    from .student import load_student, offline_load_kwargs, resolve_student

    if load_in_4bit:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .quantization import nf4_config

        path = resolve_student(model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=nf4_config(), **offline_load_kwargs())
    else:
        model, tokenizer = load_student(model_name_or_path, dtype=dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tokenizer


def adapter_base_model(adapter: str) -> Optional[str]:
    """The base model an adapter was trained on, as PEFT recorded it.

    PEFT records a local base as its path on the training machine (the embedded student's converted
    folder, say): elsewhere that path names nothing, and loading it as a Hub id fails far from the cause.
    """
    from peft import PeftConfig

    base = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    if base and Path(base).is_absolute() and not Path(base).exists():
        raise InputNotFoundError(
            f"adapter: its adapter_config.json names the base model {base}, a folder of the machine it was trained on "
            "that does not exist here. Fix: pass the base model (--model / model_name_or_path): its Hub id or folder, "
            "or embedded:gemma-3-270m for an adapter trained on the embedded student"
        )
    return base


def adapter_trained_in_4bit(adapter: str) -> bool:
    """Whether the adapter's model card (the recipe writes one) tags it `qlora`: trained on a 4-bit base.

    Such an adapter scored on a full-precision base is not the model that was trained: on NI V2 task937
    the same adapter scored 70.0 on its 4-bit base and 52.5 in full precision.
    """
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import EntryNotFoundError

    folder = Path(adapter)
    if folder.is_dir():
        if not (folder / "README.md").exists():
            return False
        card = ModelCard.load(folder / "README.md")
    else:
        try:
            card = ModelCard.load(adapter)
        except EntryNotFoundError:  # a Hub adapter without a card
            return False
    return "qlora" in (card.data.tags or [])


def evaluate_task(
    task,
    model_name_or_path: Optional[str] = None,
    adapter: Optional[str] = None,
    *,
    load_in_4bit: Optional[bool] = None,
    limit: Optional[int] = None,
    batch_size: int = 16,
    dtype: str = "auto",
    adapter_prompt: str = ZERO_SHOT,
) -> list[TaskScore]:
    """The prompting baseline, and the adapter (with the prompt it was trained with) when given, on the task's gold rows.

    `load_in_4bit=None` loads the base as the adapter was trained: in 4-bit nf4 for a QLoRA adapter.
    """
    task = Task.load(task)
    rows = gold_rows(task, limit)
    if adapter and model_name_or_path is None:
        model_name_or_path = adapter_base_model(adapter)
    if load_in_4bit is None:
        load_in_4bit = bool(adapter) and adapter_trained_in_4bit(adapter)
    model, tokenizer = load_for_evaluation(model_name_or_path, adapter, load_in_4bit=load_in_4bit, dtype=dtype)
    scores = score_baseline(model, tokenizer, task, rows, batch_size=batch_size)
    if adapter:
        scores.append(score_model(model, tokenizer, task, rows, prompt=adapter_prompt, batch_size=batch_size))
    return scores
