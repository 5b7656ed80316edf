"""The SFT recipe's arguments: TRL's `ScriptArguments`, `SFTConfig` and `ModelConfig`, with selfguide's knobs
added and defaults for adapters, and the checks that stop bad input before any model loads or data is made.

TRL's flags and YAML keys mean what they mean in TRL's `sft.py` (`use_peft`, `load_in_4bit`, `lora_r`,
`lora_target_modules`, `hub_model_id`, ...); the defaults differ where noted: QLoRA (`use_peft` and
`load_in_4bit` on, double quantisation, adapters on every linear layer), a learning rate for adapters, and
enough epochs for a small dataset to get a useful number of steps.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from trl import ModelConfig as TrlModelConfig
from trl import ScriptArguments as TrlScriptArguments
from trl import SFTConfig, TrlParser

from ..builders.data import check_synthesis, is_local, resolve_task
from ..commands import check_output_dir
from ..errors import ConfigError
from ..evaluation import FEW_SHOT, ZERO_SHOT
from ..metrics import metric_name
from ..hub_cards import EMBEDDED_BASE_MODEL_ID, EMBEDDED_LICENSE, ModelCardInfo
from ..modeling import adapter_summary, check_model_args, finetuning_method
from ..quantization import quantization_summary
from ..student import DEFAULT_STUDENT, DTYPES, dtype_choice
from ..task import TASK_TYPES, Task

logger = logging.getLogger(__name__)

# Learning rates when none is given: LoRA's adapters start at zero and need a larger step than full finetuning.
# Without max_steps or num_train_epochs: at least 3 epochs, and as many more as it takes to reach MIN_STEPS
# optimizer steps, so a small dataset is not done after a handful of steps. On issue 19's 16-row task
# (benchmarks/results/recipe_defaults.md) 2e-5 for 8 steps left the adapter echoing its input, 2e-4 for 8 steps
# answered one label on every row, and 2e-4 for 60 steps answered every gold row correctly (two seeds).
ADAPTER_LEARNING_RATE = 2e-4
FULL_LEARNING_RATE = 2e-5
MIN_EPOCHS = 3
MIN_STEPS = 60
DEPRECATED_FINETUNING = {"qlora": (True, True), "lora": (True, False), "full": (False, False)}


class RecipeError(ConfigError):
    """Input the recipe cannot train on; raised before the model is loaded."""


@dataclass
class ScriptArguments(TrlScriptArguments):
    task: Optional[str] = field(
        default=None,
        metadata={"help": "Task spec (YAML/JSON, or a Natural Instructions task file): the data to synthesize, the gold "
                  "rows to evaluate on and the model card's task. Optional with a --dataset_name folder that "
                  "`selfguide generate` wrote, which keeps its task; given, it overrides that one."},
    )
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
class ModelConfig(TrlModelConfig):
    """TRL's ModelConfig with QLoRA as the default: `use_peft`, `load_in_4bit`, double quantisation, all-linear."""

    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": f"Student to finetune: Hub id, folder or .gguf file; defaults to the embedded student ({DEFAULT_STUDENT})."},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "dtype of QLoRA's 4-bit matmuls and of a frozen LoRA base; 'auto' is bf16 on a GPU or a CPU with "
                  "native bf16 and float32 on other CPUs (trained weights stay float32).", "choices": list(DTYPES)},
    )
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (on by default); false trains every weight."})
    load_in_4bit: bool = field(default=True, metadata={"help": "Quantise the frozen base to 4 bits: QLoRA (on by default)."})
    use_bnb_nested_quant: bool = field(default=True, metadata={"help": "Double quantisation of the 4-bit constants (QLoRA's)."})
    lora_target_modules: Optional[list[str]] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules that get adapters; 'all-linear' as in QLoRA."}
    )
    finetuning: Optional[str] = field(
        default=None,
        metadata={"help": "Deprecated: qlora is --use_peft --load_in_4bit, lora is --load_in_4bit false, full is "
                  "--use_peft false --load_in_4bit false.", "choices": list(DEPRECATED_FINETUNING)},
    )

    def __post_init__(self):
        if self.finetuning is not None:
            if self.finetuning not in DEPRECATED_FINETUNING:
                raise RecipeError(f"finetuning: {self.finetuning!r} is not one of {tuple(DEPRECATED_FINETUNING)}")
            self.use_peft, self.load_in_4bit = DEPRECATED_FINETUNING[self.finetuning]
            logger.warning("finetuning: deprecated; --finetuning %s is --use_peft %s --load_in_4bit %s, TRL's flags",
                           self.finetuning, str(self.use_peft).lower(), str(self.load_in_4bit).lower())
        super().__post_init__()


@dataclass
class RecipeConfig(SFTConfig):
    """TRL's SFTConfig, with precision chosen for the machine so one config file runs on CPU and GPU alike, and
    defaults for a small task's adapter.

    Without an accelerator the run goes to the CPU, in float32 unless bf16 is asked for: CPU bf16 autocast is
    emulated on most CPUs, and a QLoRA step of the embedded student took several times longer with it on the
    2-core development machine.
    """

    learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": f"Peak learning rate; default {ADAPTER_LEARNING_RATE} with --use_peft, {FULL_LEARNING_RATE} (TRL's) without."},
    )
    num_train_epochs: Optional[float] = field(
        default=None,
        metadata={"help": f"Epochs when max_steps is not given; default at least {MIN_EPOCHS}, and enough for {MIN_STEPS} "
                  "optimizer steps on a small dataset."},
    )
    hub_strategy: str = field(
        default="end",
        metadata={"help": "selfguide pushes once, at the end of the run, with retries: 'end' only."},
    )

    def __post_init__(self):
        if not torch.accelerator.is_available():
            self.use_cpu = True
            if self.bf16 is None:
                self.bf16 = False
        super().__post_init__()


def make_parser(prog: Optional[str] = None) -> TrlParser:
    return TrlParser((ScriptArguments, RecipeConfig, ModelConfig), prog=prog)


def parse_args(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> tuple[ScriptArguments, RecipeConfig, ModelConfig]:
    """Parse flags and `--config`, rejecting unknown keys with the nearest known name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv) or not Path(argv[i + 1]).is_file():
            missing = argv[i + 1] if i + 1 < len(argv) else "(none given)"
            raise RecipeError(f"--config: file {missing} does not exist. Fix: pass a YAML file such as recipes/configs/demo.yaml")
    parser = make_parser(prog)
    *parsed, from_config, from_flags = parser.parse_args_and_config(argv, return_remaining_strings=True, separate_remaining_strings=True)
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
    script_args, training_args, model_args = parsed
    if isinstance(script_args.synthesis_kwargs, str):
        try:
            script_args.synthesis_kwargs = json.loads(script_args.synthesis_kwargs)
        except json.JSONDecodeError as e:
            raise RecipeError(
                f"synthesis_kwargs: {script_args.synthesis_kwargs!r} is not JSON ({e.msg}). Fix: write an object, "
                """e.g. --synthesis_kwargs '{"temperature": 0.7}'"""
            ) from None
    if script_args.synthesis_kwargs is not None and not isinstance(script_args.synthesis_kwargs, dict):
        raise RecipeError(
            f"synthesis_kwargs: must be a mapping of builder knobs, got {script_args.synthesis_kwargs!r}. "
            """Fix: write an object, e.g. --synthesis_kwargs '{"temperature": 0.7}'"""
        )
    return script_args, training_args, model_args


def _no_such(kind: str, name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=1)
    return f"{kind} '{name}' does not exist" + (f" (did you mean '{near[0]}'?)" if near else "")


def check_inputs(script_args: ScriptArguments, training_args: RecipeConfig, model_args: ModelConfig, push: bool) -> Task:
    """Every check that needs no model and no data: the run stops here, in the recipe's terms, or not for bad input."""
    _check_training_numbers(training_args)
    check_output_dir(Path(training_args.output_dir).expanduser(), "output_dir")
    if training_args.hub_token:
        raise RecipeError("hub_token: tokens are not taken as arguments, so none lands in a saved file. Fix: set HF_TOKEN or run `hf auth login`")
    if push and training_args.hub_revision:
        raise RecipeError(
            f"hub_revision: selfguide pushes to the repo's main branch, not {training_args.hub_revision!r}. Fix: drop "
            f"hub_revision, or push the output folder yourself: hf upload REPO {training_args.output_dir} --revision {training_args.hub_revision}"
        )
    if getattr(training_args.hub_strategy, "value", training_args.hub_strategy) != "end":
        raise RecipeError("hub_strategy: selfguide pushes once, at the end of the run, with retries. Fix: drop hub_strategy or set it to 'end'")
    if script_args.dataset_streaming:
        raise RecipeError("dataset_streaming: the recipe counts, checks and cards its rows, which a stream does not allow. Fix: drop it")
    if script_args.dataset_name and is_local(script_args.dataset_name) and not Path(script_args.dataset_name).expanduser().exists():
        raise RecipeError(
            f"dataset_name: folder {script_args.dataset_name} does not exist. Fix: pass a folder saved with "
            "save_to_disk or by `selfguide generate`, a Hub dataset id, or leave it out to synthesize the data from --task"
        )
    task = resolve_task(script_args.task, script_args.dataset_name)
    check_model_args(model_args)
    if script_args.train_prompt not in (ZERO_SHOT, FEW_SHOT):
        raise RecipeError(f"train_prompt: {script_args.train_prompt!r} is not one of {(ZERO_SHOT, FEW_SHOT)}")
    if script_args.num_examples < 1:
        raise RecipeError(f"num_examples: must be at least 1, got {script_args.num_examples}")
    if script_args.max_eval_rows is not None and script_args.max_eval_rows < 1:
        raise RecipeError(f"max_eval_rows: must be at least 1, got {script_args.max_eval_rows}. Fix: leave it out to score every gold row")
    if not script_args.dataset_name:
        check_synthesis(script_args, task, model_args.model_name_or_path)
    if script_args.push_dataset and script_args.dataset_name:
        raise RecipeError(
            f"push_dataset: the training data is {script_args.dataset_name}, not synthesized by this run, so there is "
            "nothing new to push. Fix: drop --push_dataset, or leave out --dataset_name"
        )
    if training_args.eval_strategy != "no" and not task.gold:
        raise RecipeError(
            f"eval_strategy={training_args.eval_strategy!r} but task '{task.name}' has no gold rows. "
            "Fix: add a 'test' list to the task spec, or set eval_strategy: 'no'"
        )
    _match_best_model_metric(training_args, task)
    return task


def _check_training_numbers(training_args: RecipeConfig) -> None:
    lr = training_args.learning_rate
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise RecipeError(f"learning_rate: must be a positive number, got {lr}. Fix: pass e.g. 2e-4, or leave it out for the default")
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise RecipeError(
            f"max_steps: {training_args.max_steps} trains nothing (TRL would train one step). Fix: pass 1 or more, or "
            "leave it out to train for num_train_epochs"
        )
    epochs = training_args.num_train_epochs
    if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise RecipeError(f"num_train_epochs: must be a positive number, got {epochs}. Fix: pass e.g. 3, or leave it out for the default")


def _match_best_model_metric(training_args: RecipeConfig, task: Task) -> None:
    """A shared config names one task metric for best-model selection; a task of the other type logs the other
    one, and the Trainer would fail at the first evaluation looking for it. Use the task's own."""
    named = (training_args.metric_for_best_model or "").removeprefix("eval_")
    own = metric_name(task.type)
    if named in {metric_name(t) for t in TASK_TYPES} and named != own:
        logger.warning("metric_for_best_model: %s is not logged for %s task '%s'; selecting by %s", named, task.type, task.name, own)
        training_args.metric_for_best_model = own


def fill_defaults(training_args: RecipeConfig, model_args: ModelConfig, num_rows: int) -> None:
    """The learning rate and the epochs left unset, for this run's method and its `num_rows` training rows: at least
    MIN_EPOCHS, and enough for MIN_STEPS optimizer steps when max_steps is not given either."""
    if training_args.learning_rate is None:
        training_args.learning_rate = ADAPTER_LEARNING_RATE if model_args.use_peft else FULL_LEARNING_RATE
    if training_args.num_train_epochs is None:
        batches = math.ceil(num_rows / (training_args.per_device_train_batch_size * training_args.world_size))
        steps_per_epoch = max(1, batches // training_args.gradient_accumulation_steps)
        needed = MIN_STEPS if training_args.max_steps == -1 else 0
        training_args.num_train_epochs = float(max(MIN_EPOCHS, math.ceil(needed / steps_per_epoch)))


def card_info(script_args, training_args, model_args, task: Task, student_path: str, data_summary, quant, chat: bool = False) -> ModelCardInfo:
    """What the model card says about this run, other than its scores and hyperparameters."""
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
    return ModelCardInfo(
        model_name=(training_args.hub_model_id or Path(training_args.output_dir).name).split("/")[-1],
        task=task,
        base_model=model_args.model_name_or_path or student_path,
        base_model_id=base_id,
        finetuning=finetuning_method(model_args),
        data=data_summary,
        adapter=adapter_summary(model_args),
        quantization=quantization_summary(quant) if quant is not None else None,
        license=script_args.card_license or (EMBEDDED_LICENSE if embedded else None),
        repo_id=training_args.hub_model_id,
        base_model_note=note,
        train_prompt=script_args.train_prompt,
        prompt_format="chat" if chat else "document",
        dtype=dtype_choice(model_args.dtype),
    )
