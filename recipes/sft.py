"""Finetune the student on data for one task and score it on the task's gold rows: SFT with 4-bit QLoRA by default.

Shaped like TRL's `trl/scripts/sft.py`, on TRL's argument classes (`ScriptArguments`, `SFTConfig`, `ModelConfig`,
with selfguide's knobs and QLoRA defaults: `selfguide.recipes.arguments`), so TRL's flags and YAML keys work:
model, data, trainer, train, save, push. The same config runs on one CPU process, on several, and on GPUs:

    accelerate launch --quiet recipes/sft.py --config recipes/configs/demo.yaml
    accelerate launch --quiet --multi_gpu --num_processes 2 recipes/sft.py --config recipes/configs/qlora.yaml --task my_task.yaml
    selfguide sft --task my_task.yaml --output_dir outputs/my_task --load_in_4bit false   # LoRA on a full-precision base

Without GPUs, `--multi_gpu` starts CPU workers (gloo). Bad input stops before any model loads or data is made, with
one `error:` line naming the field and the fix (accelerate's `--quiet` keeps its launcher's traceback off it).
Data: `load_dataset("selfguide" | "rebase", task=...)` from the arguments here, or `--dataset_name`: a folder saved
with `save_to_disk` or by `selfguide generate`, or a Hub dataset (either keeps its task: the default `--task`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # the heavy imports wait for a run: `selfguide --help` imports this module for its `sft` command
    from datasets import DatasetDict
    from trl import SFTTrainer

    from selfguide.callbacks import ModelCardCallback, TaskEvalCallback
    from selfguide.evaluation import TaskScore
    from selfguide.task import Task


@dataclass
class RecipeResult:
    output_dir: Path
    scores: list[TaskScore]  # the before/after table
    metrics: dict
    pushed: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    """A recipe run set up and ready to train: the trainer and what the end of the run needs."""
    trainer: SFTTrainer
    task: Task
    dataset: DatasetDict
    card_callback: ModelCardCallback
    task_callback: Optional[TaskEvalCallback]
    eval_rows: int
    push: bool


def build(script_args, training_args, model_args) -> Run:
    """Everything before `train()`: checks, data, model, callbacks, trainer."""
    from trl import SFTTrainer, get_peft_config
    from trl.data_utils import is_conversational

    from selfguide.builders.data import load_training_data, training_splits, with_training_prompts
    from selfguide.callbacks import ModelCardCallback, TaskEvalCallback
    from selfguide.evaluation import gold_rows
    from selfguide.hub_cards import DataSummary
    from selfguide.modeling import load_model
    from selfguide.patches import project_completion_tokens_only
    from selfguide.recipes.arguments import RecipeError, card_info, check_inputs, fill_defaults
    from selfguide.student import DEFAULT_STUDENT, resolve_student

    # The Trainer would push on every save and pickle the token into training_args.bin; we push once, at the
    # end, with retries, and leave the token to huggingface_hub's own lookup.
    push, training_args.push_to_hub = training_args.push_to_hub, False
    task = check_inputs(script_args, training_args, model_args, push)
    student = resolve_student(model_args.model_name_or_path)

    with training_args.main_process_first(desc="building the dataset"):
        dataset, source, settings = load_training_data(
            script_args, task, model_args.model_name_or_path or DEFAULT_STUDENT, model_args.model_name_or_path
        )
    train, test = training_splits(dataset, script_args, task)
    data_summary = DataSummary.from_dataset(dataset, source, train, test, settings)
    # The evaluation loss is only worth its cost when the Trainer evaluates during training.
    test = test if training_args.eval_strategy != "no" else None
    train, test = with_training_prompts(train, test, task, script_args.train_prompt, training_args.seed)

    fill_defaults(training_args, model_args, train.num_rows)
    model, tokenizer, quant = load_model(model_args, student, training_args)
    project_completion_tokens_only()  # TRL's fused LM head projects only the completion positions on a CPU too
    eval_rows = gold_rows(task, script_args.max_eval_rows) if task.gold else []
    chat = is_conversational(train[0])
    task_callback = TaskEvalCallback(
        task, eval_rows, baseline=script_args.eval_baseline, batch_size=script_args.eval_batch_size, prompt=script_args.train_prompt, chat=chat,
    ) if eval_rows else None
    card_callback = ModelCardCallback(
        card_info(script_args, training_args, model_args, task, student, data_summary, quant, chat=chat), task_eval=task_callback
    )
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[c for c in (task_callback, card_callback) if c is not None],
    )
    if task_callback is not None:
        task_callback.log_with(trainer)  # the scores reach the trackers `report_to` names, as the loss does
    if len(trainer.train_dataset) == 0:
        # SFTTrainer drops rows whose completion lies wholly beyond max_length; with none left, torch's
        # sampler would fail later with a message that names neither.
        raise RecipeError(
            f"max_length: every one of the {train.num_rows} training rows is longer than {training_args.max_length} tokens "
            "before its completion starts, so no row is left to learn from. Fix: raise max_length (or shorten the instruction)"
        )
    return Run(trainer, task, dataset, card_callback, task_callback, len(eval_rows), push)


def main(script_args, training_args, model_args) -> RecipeResult:
    from selfguide.diagnosis import finetuning_warnings
    from selfguide.evaluation import PREDICTIONS_FILE, format_table, write_predictions
    from selfguide.hub import save_dataset_for_hub

    run = build(script_args, training_args, model_args)
    trainer, evaluator = run.trainer, run.task_callback
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    # The 'after' of the card's table: the final (or, with load_best_model_at_end, the best) weights.
    metrics = evaluator.evaluate(trainer.model, trainer.processing_class, trainer.state) if evaluator else {}
    scores = evaluator.scores(trainer.state.log_history) if evaluator else []

    output_dir = Path(training_args.output_dir)
    info = run.card_callback.info
    if trainer.is_world_process_zero():
        if evaluator:
            write_predictions(output_dir / PREDICTIONS_FILE, evaluator.rows, evaluator.last_score)
        if not script_args.dataset_name:
            save_dataset_for_hub(
                run.dataset, output_dir / "dataset", run.task, info.data, license=info.license, gold_rows=script_args.push_gold_rows
            )
        # Card and table before any push: a failed push must not lose the final evaluation.
        run.card_callback.write(output_dir, training_args, trainer.state)
    trainer.accelerator.print(f"\nTask metric on {run.eval_rows} gold rows, before and after finetuning:\n{format_table(scores, run.task.labels)}")
    for warning in finetuning_warnings(scores, run.task):
        trainer.accelerator.print(f"\nWARNING: {warning}")
    pushed = push(run, script_args, training_args) if run.push and trainer.is_world_process_zero() else {}
    # Free the DDP wrapper while its process group is alive: freed after trainer.end(), gloo's teardown
    # can wait forever on a worker thread.
    trainer.model_wrapped = trainer.model
    trainer.accelerator.free_memory()
    trainer.end()
    return RecipeResult(output_dir, scores, metrics, pushed)


def push(run: Run, script_args, training_args) -> dict[str, str]:
    """The adapter with its card, and with --push_dataset the synthetic dataset first, so the card links it."""
    from selfguide.hub import push_adapter, push_dataset

    output_dir, info, pushed = Path(training_args.output_dir), run.card_callback.info, {}
    repo_id = training_args.hub_model_id or output_dir.name
    if script_args.push_dataset:
        result = push_dataset(output_dir / "dataset", script_args.dataset_repo_id or f"{repo_id}-data", private=training_args.hub_private_repo)
        pushed["dataset"] = result.commit_url
        info.data.hub_id, info.data.hub_has_gold = result.repo_id, script_args.push_gold_rows
        run.card_callback.write(output_dir, training_args, run.trainer.state)  # again: it now links the dataset
    pushed["model"] = push_adapter(output_dir, repo_id, private=training_args.hub_private_repo).commit_url
    return pushed


def run(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> RecipeResult:
    from selfguide.recipes.arguments import parse_args

    return main(*parse_args(argv, prog))


def cli(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> int:
    """`python recipes/sft.py` and `selfguide sft`: selfguide's errors end as one `error:` line and exit status 2."""
    from selfguide.errors import SelfGuideError

    try:
        run(argv, prog)
    except SelfGuideError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # once, not once per process under accelerate launch
            print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def make_parser(subparsers=None):
    """The recipe's TrlParser; given a command line's subparsers (`selfguide sft`), the `sft` command, which hands
    the arguments after it to that parser, as `trl sft` does."""
    if subparsers is None:
        from selfguide.recipes.arguments import make_parser as recipe_parser

        return recipe_parser()
    parser = subparsers.add_parser("sft", help="finetune on a task's data and score it (recipes/sft.py; --help lists its flags)", add_help=False)
    parser.set_defaults(func=lambda args: cli(args.recipe_argv, prog="selfguide sft"))
    return parser


if __name__ == "__main__":
    sys.exit(cli())
