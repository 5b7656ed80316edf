"""Finetune the student on its own synthetic data for one task: SFT with 4-bit QLoRA by default.

Shaped like TRL's `trl/scripts/sft.py`: dataclass arguments parsed by `TrlParser` (flags and
`--config FILE.yaml`), then model, data, trainer, save, push. The same config runs on one CPU
process, on several, and on one or more GPUs:

    accelerate launch recipes/sft.py --config recipes/configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/sft.py --config recipes/configs/demo.yaml
    python -m selfguide.recipes.sft --task my_task.yaml --output_dir outputs/my_task --max_steps 40

Several processes on a machine without GPUs: `--multi_gpu` starts torch.distributed workers, which
this recipe puts on the CPU (gloo); `accelerate launch --cpu --num_processes 2` runs one process.

Data: `load_dataset("selfguide", task=...)` built from the arguments here, or `--dataset_name`, a
folder saved with `save_to_disk` or a Hub dataset id. Bad input (a missing dataset, an unknown
config key or synthesis knob, 4-bit without bitsandbytes, an empty training split) stops before any training.
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from trl import SFTConfig, SFTTrainer, TrlParser

from selfguide.builders.base import NoRowsError
from selfguide.builders.rebase import ReBaseConfig
from selfguide.builders.selfguide import SelfGuideConfig
from selfguide.callbacks import ModelCardCallback, TaskEvalCallback
from selfguide.evaluation import FEW_SHOT, PREDICTIONS_FILE, ZERO_SHOT, TaskScore, format_table, gold_rows, write_predictions
from selfguide.hub import HubPushError, push_adapter, push_dataset, require_token, save_dataset_for_hub
from selfguide.hub_cards import EMBEDDED_BASE_MODEL_ID, EMBEDDED_LICENSE, DataSummary, ModelCardInfo
from selfguide.metrics import metric_name
from selfguide.prompts import prompt_completion, row_fewshot_prompt
from selfguide.quantization import (
    MissingBitsandbytesError,
    keep_4bit_trainable,
    nf4_config,
    quantization_summary,
    require_bitsandbytes,
)
from selfguide.student import DEFAULT_STUDENT, DTYPES, resolve_dtype, resolve_student
from selfguide.task import TASK_TYPES, Task, TaskSpecError
from selfguide.errors import ConfigError

logger = logging.getLogger(__name__)

FINETUNING = ("qlora", "lora", "full")
_PROMPT_FORMATS = (("prompt", "completion"), ("messages",), ("text",))
SYNTHESIS_CONFIGS = {"selfguide": SelfGuideConfig, "rebase": ReBaseConfig}
# Builder arguments the recipe fills from its own flags: the same key in --synthesis_kwargs would silently win.
_SYNTHESIS_FLAGS = {"task": "--task", "model": "--synthesis_model", "num_examples": "--num_examples", "seed": "--synthesis_seed"}


class RecipeError(ConfigError):
    """Input the recipe cannot train on; raised before the model is loaded."""


# Errors whose message already says what to fix: the script prints them without a traceback.
INPUT_ERRORS = (RecipeError, TaskSpecError, MissingBitsandbytesError, HubPushError, NoRowsError)


@dataclass
class DataArguments:
    task: Optional[str] = field(
        default=None,
        metadata={"help": "Task spec (YAML/JSON, or a Natural Instructions task file). Gives the data to synthesize, "
                  "the gold rows to evaluate on and the model card's task. Required."},
    )
    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "Train on this dataset instead of synthesizing one: a folder saved with save_to_disk, "
                  "a folder of data files, or a Hub dataset id."},
    )
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Config name of --dataset_name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split of gold rows for the evaluation loss."})
    synthesis_method: str = field(
        default="selfguide",
        metadata={"help": "Builder that makes the data when --dataset_name is not given.", "choices": ["selfguide", "rebase"]},
    )
    num_examples: int = field(default=64, metadata={"help": "Synthetic rows to ask the builder for."})
    synthesis_seed: int = field(default=0, metadata={"help": "Seed of the synthesis run."})
    synthesis_model: Optional[str] = field(
        default=None, metadata={"help": "Model that writes the data; defaults to --model_name_or_path (the student)."}
    )
    synthesis_kwargs: Optional[dict | str] = field(
        default=None, metadata={"help": "Extra builder knobs, a mapping in YAML or a JSON string on the command line."}
    )
    max_eval_rows: Optional[int] = field(
        default=None, metadata={"help": "Score the task metric on at most this many gold rows (all by default)."}
    )
    train_prompt: str = field(
        default=ZERO_SHOT,
        metadata={"help": "Prompt the student is finetuned and then scored with: zero-shot (instruction and input; short "
                  "rows, cheap steps) or few-shot (every demonstration first, shuffled per row, as the SELF-GUIDE "
                  "paper's code trains; rows several times longer).", "choices": [ZERO_SHOT, FEW_SHOT]},
    )
    eval_baseline: bool = field(
        default=True, metadata={"help": "Score the base model (few-shot and zero-shot prompts) before training."}
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch in task evaluation."})
    push_dataset: bool = field(
        default=False, metadata={"help": "With --push_to_hub, also push the synthetic dataset with its card."}
    )
    push_gold_rows: bool = field(
        default=False,
        metadata={"help": "With --push_dataset, also publish the task's gold rows as the dataset's test split. Off by "
                  "default: a published test set ends up in the next crawl, and in other models' training data."},
    )
    dataset_repo_id: Optional[str] = field(
        default=None, metadata={"help": "Hub repo for --push_dataset; defaults to '<hub_model_id>-data'."}
    )
    card_license: Optional[str] = field(
        default=None, metadata={"help": "License for the cards; the embedded Gemma student's is 'gemma'."}
    )


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": f"Student to finetune: Hub id, folder or .gguf file; defaults to the embedded student ({DEFAULT_STUDENT})."},
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    dtype: str = field(
        default="auto",
        metadata={"help": "dtype of the unquantised weights and of QLoRA's 4-bit matmuls; 'auto' is float32 on a CPU, and "
                  "bf16 (fp16 where bf16 is missing) on a GPU for QLoRA's matmuls and the frozen base under LoRA.",
                  "choices": list(DTYPES)},
    )
    attn_implementation: Optional[str] = field(default=None, metadata={"help": "e.g. sdpa, eager, flash_attention_2."})
    finetuning: str = field(
        default="qlora",
        metadata={"help": "qlora: LoRA on a 4-bit nf4 base; lora: LoRA on the full-precision base; full: every weight.",
                  "choices": list(FINETUNING)},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules that get adapters; 'all-linear' as in QLoRA."}
    )
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit data type.", "choices": ["nf4", "fp4"]})
    use_bnb_nested_quant: bool = field(default=True, metadata={"help": "Double quantisation of the 4-bit constants."})


@dataclass
class RecipeConfig(SFTConfig):
    """TRL's SFTConfig, with precision chosen for the machine so one config file runs on CPU and GPU alike.

    Without an accelerator the run goes to the CPU, in float32 unless bf16 is asked for: CPU bf16
    autocast is emulated on most CPUs, and a QLoRA step of the embedded student took several times
    longer with it on the 2-core development machine.
    """

    def __post_init__(self):
        if not torch.accelerator.is_available():
            self.use_cpu = True
            if self.bf16 is None:
                self.bf16 = False
        super().__post_init__()


@dataclass
class RecipeResult:
    output_dir: Path
    scores: list[TaskScore]
    metrics: dict
    pushed: dict[str, str] = field(default_factory=dict)


def make_parser() -> TrlParser:
    return TrlParser((DataArguments, RecipeConfig, ModelArguments))


def parse_args(argv: Optional[list[str]] = None) -> tuple[DataArguments, RecipeConfig, ModelArguments]:
    """Parse flags and `--config`, rejecting unknown keys with the nearest known name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv) or not Path(argv[i + 1]).is_file():
            missing = argv[i + 1] if i + 1 < len(argv) else "(none given)"
            raise RecipeError(f"--config: file {missing} does not exist. Fix: pass a YAML file such as recipes/configs/demo.yaml")
    parser = make_parser()
    *parsed, from_config, from_flags = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    # Leftovers come back as argv-style strings: config keys as "--key value" pairs, flags as typed.
    names = [(s[2:], "config key") for s in from_config[::2]]
    for i, s in enumerate(from_flags):
        if s.startswith("-"):
            names.append((s.lstrip("-").split("=")[0], "flag"))
        elif i == 0 or not from_flags[i - 1].startswith("-"):  # not the value of an unknown flag
            names.append((s, "argument"))
    if names:
        known = sorted({a.dest for a in parser._actions})
        problems = [_no_such(kind, name, known) for name, kind in names]
        raise RecipeError("; ".join(problems) + ". Fix: correct or remove it; `--help` lists every argument")
    data_args, training_args, model_args = parsed
    if isinstance(data_args.synthesis_kwargs, str):
        try:
            data_args.synthesis_kwargs = json.loads(data_args.synthesis_kwargs)
        except json.JSONDecodeError as e:
            raise RecipeError(
                f"synthesis_kwargs: {data_args.synthesis_kwargs!r} is not JSON ({e.msg}). Fix: write an object, "
                """e.g. --synthesis_kwargs '{"temperature": 0.7}'"""
            ) from None
    if data_args.synthesis_kwargs is not None and not isinstance(data_args.synthesis_kwargs, dict):
        raise RecipeError(
            f"synthesis_kwargs: must be a mapping of builder knobs, got {data_args.synthesis_kwargs!r}. "
            """Fix: write an object, e.g. --synthesis_kwargs '{"temperature": 0.7}'"""
        )
    return data_args, training_args, model_args


def _no_such(kind: str, name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=1)
    return f"{kind} '{name}' does not exist" + (f" (did you mean '{near[0]}'?)" if near else "")


# -- checks that run before anything heavy --------------------------------------------------------


def check_inputs(data_args: DataArguments, training_args: RecipeConfig, model_args: ModelArguments, push: bool) -> Task:
    if not data_args.task:
        raise RecipeError(
            "task: missing. Fix: pass --task path/to/task.yaml; it gives the data to synthesize (or, with "
            "--dataset_name, the gold rows to evaluate on) and the model card's task"
        )
    task = Task.load(data_args.task)
    if model_args.finetuning not in FINETUNING:
        raise RecipeError(f"finetuning: {model_args.finetuning!r} is not one of {FINETUNING}")
    if model_args.finetuning == "qlora":
        require_bitsandbytes()
    if data_args.dataset_name and _is_local(data_args.dataset_name) and not Path(data_args.dataset_name).expanduser().exists():
        raise RecipeError(
            f"dataset_name: folder {data_args.dataset_name} does not exist. Fix: pass a folder saved with "
            "save_to_disk, a Hub dataset id, or leave it out to synthesize the data from --task"
        )
    if data_args.train_prompt not in (ZERO_SHOT, FEW_SHOT):
        raise RecipeError(f"train_prompt: {data_args.train_prompt!r} is not one of {(ZERO_SHOT, FEW_SHOT)}")
    if data_args.num_examples < 1:
        raise RecipeError(f"num_examples: must be at least 1, got {data_args.num_examples}")
    if data_args.max_eval_rows is not None and data_args.max_eval_rows < 1:
        raise RecipeError(f"max_eval_rows: must be at least 1, got {data_args.max_eval_rows}. Fix: leave it out to score every gold row")
    if not data_args.dataset_name:
        check_synthesis(data_args, task, model_args.model_name_or_path)
    if data_args.push_dataset and data_args.dataset_name:
        raise RecipeError(
            f"push_dataset: the training data is {data_args.dataset_name}, not synthesized by this run, so there is "
            "nothing new to push. Fix: drop --push_dataset, or leave out --dataset_name"
        )
    if training_args.eval_strategy != "no" and not task.gold:
        raise RecipeError(
            f"eval_strategy={training_args.eval_strategy!r} but task '{task.name}' has no gold rows. "
            "Fix: add a 'test' list to the task spec, or set eval_strategy: 'no'"
        )
    _match_best_model_metric(training_args, task)
    if push:
        require_token()
    return task


def check_synthesis(data_args: DataArguments, task: Task, model_name_or_path: Optional[str]) -> None:
    """Make the builder config load_dataset will make, so a bad knob or datastore stops the run before the
    student is loaded, in the recipe's terms."""
    method = data_args.synthesis_method
    config_class = SYNTHESIS_CONFIGS[method]
    given = data_args.synthesis_kwargs or {}
    duplicates = [k for k in given if k in _SYNTHESIS_FLAGS]
    if duplicates:
        flags = ", ".join(_SYNTHESIS_FLAGS[k] for k in duplicates)
        raise RecipeError(
            f"synthesis_kwargs: {', '.join(map(repr, duplicates))} would override {flags}. Fix: pass {flags} instead, "
            "and keep synthesis_kwargs for the builder's own knobs"
        )
    try:
        config_class.check_knobs(given)
        # cache_kwargs reads a ReBase datastore's fingerprint, so a wrong path fails here rather than after the model loads.
        config_class(**synthesis_arguments(data_args, task, model_name_or_path)).cache_kwargs()
    except ValueError as e:  # DatastoreError among them; the builder's message names the knob and the fix
        raise RecipeError(f"synthesis_kwargs ({method} builder): {e}") from None


def _match_best_model_metric(training_args: RecipeConfig, task: Task) -> None:
    """A shared config names one task metric for best-model selection; a task of the other type logs the other
    one, and the Trainer would fail at the first evaluation looking for it. Use the task's own."""
    named = (training_args.metric_for_best_model or "").removeprefix("eval_")
    own = metric_name(task.type)
    if named in {metric_name(t) for t in TASK_TYPES} and named != own:
        logger.warning("metric_for_best_model: %s is not logged for %s task '%s'; selecting by %s", named, task.type, task.name, own)
        training_args.metric_for_best_model = own


def _is_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


# -- data ---------------------------------------------------------------------------------------


def load_data(data_args: DataArguments, task: Task, student_name: str, model_name_or_path: Optional[str]):
    """A DatasetDict, where it came from, and the synthesis settings (both for the cards)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if data_args.dataset_name:
        name = data_args.dataset_name
        path = Path(name).expanduser()
        split_state = path / data_args.dataset_train_split / "state.json"
        # datasets saves an empty split as a folder with no data file, then cannot load it back.
        if split_state.exists() and not json.loads(split_state.read_text()).get("_data_files"):
            raise RecipeError(_empty_split_message(data_args.dataset_train_split))
        try:
            if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                dataset = load_from_disk(str(path))
            else:
                dataset = load_dataset(name, name=data_args.dataset_config)
        except Exception as e:  # datasets raises many types for "not there"; all mean the same to the user
            raise RecipeError(
                f"dataset_name: cannot load {name!r} ({type(e).__name__}: {e}). Fix: pass a folder saved with "
                "save_to_disk, a Hub dataset id you can reach, or leave it out to synthesize from --task"
            ) from None
        if not isinstance(dataset, DatasetDict):
            dataset = DatasetDict({data_args.dataset_train_split: dataset})
        return dataset, name, {}

    import selfguide  # noqa: F401  (registers the builders with datasets)

    arguments = synthesis_arguments(data_args, task, model_name_or_path)
    dataset = load_dataset(data_args.synthesis_method, **arguments)
    knobs = {k: v for k, v in arguments.items() if k not in ("task", "model")}
    call = f"load_dataset({data_args.synthesis_method!r}, task={Path(data_args.task).name!r}, " + ", ".join(
        f"{k}={v!r}" for k, v in knobs.items()
    ) + ")"
    return dataset, call, {"synthesis model": data_args.synthesis_model or student_name, **knobs}


def synthesis_arguments(data_args: DataArguments, task: Task, model_name_or_path: Optional[str]) -> dict:
    """The builder's arguments. The model goes as the user named it (None: the embedded default), so the
    cache is the one `selfguide generate` and a plain load_dataset use, not keyed on this machine's
    converted-model path."""
    knobs = {"num_examples": data_args.num_examples, "seed": data_args.synthesis_seed, **(data_args.synthesis_kwargs or {})}
    return {"task": task, "model": data_args.synthesis_model or model_name_or_path, **knobs}


def _empty_split_message(split: str) -> str:
    return f"the training split {split!r} is empty. Fix: synthesize more rows (num_examples, max_rounds) or pick another split"


def training_splits(dataset, data_args: DataArguments, task: Task):
    split = data_args.dataset_train_split
    if split not in dataset:
        raise RecipeError(f"dataset_train_split: the dataset has no split {split!r}, only {list(dataset)}. Fix: name one of them")
    train = dataset[split]
    if train.num_rows == 0:
        raise RecipeError(_empty_split_message(split))
    if not any(all(c in train.column_names for c in cols) for cols in _PROMPT_FORMATS):
        raise RecipeError(
            f"the training split has columns {train.column_names}, none of TRL's formats "
            "(prompt+completion, messages, text). Fix: build it with load_dataset('selfguide', ...)"
        )
    test = dataset.get(data_args.dataset_test_split)
    if (test is None or not test.num_rows) and task.gold:
        # A dataset saved or pushed without its gold rows (the default: they stay off the Hub): the task has them.
        from datasets import Dataset

        test = Dataset.from_list([{"input": g.input, "output": g.output, **prompt_completion(task, g.input, g.output)} for g in task.gold])
    return train, test if test is not None and test.num_rows else None


def with_fewshot_prompts(split, task: Task, seed: int):
    """The split with every demonstration before each row's input, in a seeded order of its own."""
    if "input" not in split.column_names:
        raise RecipeError(
            f"train_prompt=few-shot rebuilds each prompt from the row's 'input', and the dataset has only "
            f"{split.column_names}. Fix: build it with load_dataset('selfguide', ...), or use train_prompt zero-shot"
        )
    return split.map(
        lambda row, i: {"prompt": row_fewshot_prompt(task, row["input"], seed, i)},
        with_indices=True, desc="few-shot prompts",
    )


# -- model --------------------------------------------------------------------------------------


def load_model(model_args: ModelArguments, path: str, training_args: RecipeConfig):
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation}
    quant = None
    if model_args.finetuning == "qlora":
        # On a CPU, float32 matmuls: without native bf16 a 4-bit step was 22x slower in bf16 (nf4_config).
        on_cpu = model_args.dtype == "auto" and training_args.device.type == "cpu"
        compute_dtype = torch.float32 if on_cpu else resolve_dtype(model_args.dtype)
        quant = nf4_config(model_args.bnb_4bit_quant_type, model_args.use_bnb_nested_quant, compute_dtype)
        # Each process holds its own quantised copy on its own device.
        kwargs.update(quantization_config=quant, device_map={"": training_args.device}, dtype=torch.float32)
    elif model_args.finetuning == "lora" and model_args.dtype == "auto" and training_args.device.type != "cpu":
        kwargs["dtype"] = resolve_dtype("auto")  # the base is frozen: half precision costs the updates nothing
    else:
        kwargs["dtype"] = torch.float32 if model_args.dtype == "auto" else resolve_dtype(model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quant is not None:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
        keep_4bit_trainable(model)
    peft_config = None
    if model_args.finetuning != "full":
        targets = model_args.lora_target_modules
        peft_config = LoraConfig(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            # PEFT reads the single string "all-linear" as a keyword, a list as module names.
            target_modules=targets[0] if len(targets) == 1 else targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
    return model, tokenizer, peft_config, quant


def card_info(data_args, training_args, model_args, task, student_path, data_summary, quant) -> ModelCardInfo:
    embedded = model_args.model_name_or_path in (None, "", DEFAULT_STUDENT)
    if embedded:
        base_id, note = EMBEDDED_BASE_MODEL_ID, (
            "The base weights were dequantised from the Q4_K_M GGUF of Gemma 3 270M that selfguide embeds, not "
            f"loaded from `{EMBEDDED_BASE_MODEL_ID}` itself. The adapter loads on the original weights too; the scores "
            "there may differ by a little."
        )
    else:
        local = Path(model_args.model_name_or_path).expanduser().exists()
        base_id, note = (None if local else model_args.model_name_or_path), None
    adapter = None
    if model_args.finetuning != "full":
        adapter = {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout,
                   "target_modules": ", ".join(model_args.lora_target_modules)}
    name = (training_args.hub_model_id or Path(training_args.output_dir).name).split("/")[-1]
    return ModelCardInfo(
        model_name=name,
        task=task,
        base_model=model_args.model_name_or_path or student_path,
        base_model_id=base_id,
        finetuning=model_args.finetuning,
        data=data_summary,
        adapter=adapter,
        quantization=quantization_summary(quant) if quant is not None else None,
        license=data_args.card_license or (EMBEDDED_LICENSE if embedded else None),
        repo_id=training_args.hub_model_id,
        base_model_note=note,
        train_prompt=data_args.train_prompt,
    )


def project_completion_tokens_only() -> None:
    """Make TRL's fused LM head project only the positions that carry a label on the CPU too.

    On Triton devices TRL projects just those; elsewhere it projects every position, so that compiled
    backends (Neuron) see fixed tile shapes. Nothing is compiled on the CPU, and with the embedded
    student's 262k-token vocabulary the prompt positions were most of a QLoRA step: 2.8x shorter steps
    on 214-token classification prompts, same loss. Process-wide and idempotent.
    """
    from trl.trainer import utils as trl_utils

    choose = getattr(trl_utils, "_use_triton", None)
    if choose is None or getattr(choose, "_selfguide", False):
        return  # a TRL without this switch, or already done

    def compact_on_cpu(device: torch.device) -> bool:
        return device.type == "cpu" or choose(device)

    compact_on_cpu._selfguide = True
    trl_utils._use_triton = compact_on_cpu


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """A recipe run set up and ready to train: the trainer and what the end of the run needs."""

    trainer: SFTTrainer
    task: Task
    dataset: Any
    card_callback: ModelCardCallback
    task_callback: Optional[TaskEvalCallback]
    eval_rows: int
    push: bool


def build(data_args: DataArguments, training_args: RecipeConfig, model_args: ModelArguments) -> Run:
    """Everything before `train()`: checks, data, model, callbacks, trainer."""
    # The Trainer would push on every save and pickle the token into training_args.bin; we push once, at
    # the end, with retries, and leave the token to huggingface_hub's own lookup.
    push = training_args.push_to_hub
    training_args.push_to_hub = False
    if training_args.hub_token:
        raise RecipeError("hub_token: tokens are not taken as arguments, so none lands in a saved file. Fix: set HF_TOKEN or run `hf auth login`")
    task = check_inputs(data_args, training_args, model_args, push)
    student = resolve_student(model_args.model_name_or_path)
    student_name = model_args.model_name_or_path or DEFAULT_STUDENT

    with training_args.main_process_first(desc="building the dataset"):
        dataset, source, settings = load_data(data_args, task, student_name, model_args.model_name_or_path)
    train, test = training_splits(dataset, data_args, task)
    data_summary = DataSummary.from_dataset(dataset, source, train, test, settings)
    if data_args.train_prompt == FEW_SHOT:
        train = with_fewshot_prompts(train, task, training_args.seed)
        test = with_fewshot_prompts(test, task, training_args.seed) if test is not None else None

    model, tokenizer, peft_config, quant = load_model(model_args, student, training_args)
    project_completion_tokens_only()
    eval_rows = gold_rows(task, data_args.max_eval_rows) if task.gold else []
    task_callback = None
    if eval_rows:
        task_callback = TaskEvalCallback(
            task, eval_rows, baseline=data_args.eval_baseline, batch_size=data_args.eval_batch_size, prompt=data_args.train_prompt
        )
    card_callback = ModelCardCallback(
        card_info(data_args, training_args, model_args, task, student, data_summary, quant), task_eval=task_callback
    )
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        # The evaluation loss is only worth its cost when the Trainer evaluates during training.
        eval_dataset=test if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[c for c in (task_callback, card_callback) if c is not None],
    )
    if len(trainer.train_dataset) == 0:
        # SFTTrainer drops rows whose completion lies wholly beyond max_length; with none left, torch's
        # sampler would fail later with a message that names neither.
        raise RecipeError(
            f"max_length: every one of the {train.num_rows} training rows is longer than {training_args.max_length} tokens "
            "before its completion starts, so no row is left to learn from. Fix: raise max_length (or shorten the instruction)"
        )
    return Run(trainer, task, dataset, card_callback, task_callback, len(eval_rows), push)


def main(data_args: DataArguments, training_args: RecipeConfig, model_args: ModelArguments) -> RecipeResult:
    run = build(data_args, training_args, model_args)
    trainer, info = run.trainer, run.card_callback.info
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    # The 'after' of the card's table: the final (or, with load_best_model_at_end, the best) weights.
    metrics = run.task_callback.evaluate(trainer.model, trainer.processing_class, trainer.state) if run.task_callback else {}

    output_dir = Path(training_args.output_dir)
    scores = run.task_callback.scores(trainer.state.log_history) if run.task_callback else []
    final = run.task_callback.last_score if run.task_callback else None
    pushed: dict[str, str] = {}
    if trainer.is_world_process_zero():
        if final is not None:
            write_predictions(output_dir / PREDICTIONS_FILE, run.task_callback.rows, final)
        if not data_args.dataset_name:
            save_dataset_for_hub(
                run.dataset, output_dir / "dataset", run.task, info.data, license=info.license, gold_rows=data_args.push_gold_rows
            )
        # Card and table before any push: a failed push must not lose the final evaluation.
        run.card_callback.write(output_dir, training_args, trainer.state)
    trainer.accelerator.print(f"\nTask metric on {run.eval_rows} gold rows, before and after finetuning:\n{format_table(scores, run.task.labels)}")
    if run.push and trainer.is_world_process_zero():
        repo_id = training_args.hub_model_id or output_dir.name
        if data_args.push_dataset:
            result = push_dataset(
                output_dir / "dataset", data_args.dataset_repo_id or f"{repo_id}-data", private=training_args.hub_private_repo
            )
            pushed["dataset"] = result.commit_url
            info.data.hub_id = result.repo_id
            info.data.hub_has_gold = data_args.push_gold_rows
            run.card_callback.write(output_dir, training_args, trainer.state)  # again: it now links the dataset it was trained on
        pushed["model"] = push_adapter(output_dir, repo_id, private=training_args.hub_private_repo).commit_url
    # Free the DDP wrapper while its process group is alive: freed after trainer.end(), gloo's teardown
    # can wait forever on a worker thread.
    trainer.model_wrapped = trainer.model
    trainer.accelerator.free_memory()
    trainer.end()
    return RecipeResult(output_dir, scores, metrics, pushed)


def run(argv: Optional[list[str]] = None) -> RecipeResult:
    return main(*parse_args(argv))


if __name__ == "__main__":
    try:
        run()
    except INPUT_ERRORS as e:
        sys.exit(f"error: {e}")
