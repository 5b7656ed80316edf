"""Keep a model card beside the weights: in every checkpoint and in the output folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..hub_cards import ModelCardInfo, render_model_card
from .task_eval import TaskEvalCallback, scores_from_log_history


def training_hyperparameters(args, state) -> dict:
    """The settings that decide what a run learns, as the card's table shows them."""
    world = getattr(args, "world_size", 1)
    hp = {
        "learning_rate": args.learning_rate,
        "lr_scheduler": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "warmup": args.warmup_steps or getattr(args, "warmup_ratio", 0) or 0,
        "optimizer": getattr(args.optim, "value", args.optim),
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "processes": world,
        "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 2),
        "max_length": getattr(args, "max_length", None),
        "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        "seed": args.seed,
    }
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    if losses:
        hp["final_train_loss"] = round(losses[-1], 4)
    return hp


class ModelCardCallback(TrainerCallback):
    """Writes README.md into each checkpoint when it is saved, and into the output folder (at the end of a
    run that loads its best model, the best checkpoint's card).

    The card's evaluation table comes from the log history that TaskEvalCallback fills in (the
    baseline once, then the latest evaluation), so a checkpoint's card shows its own scores. Given
    that callback as `task_eval`, a classification card also shows each model's most frequent answer,
    which tells a classifier from a constant answer that scores its label's share of the rows.
    Only the main process writes.
    """

    def __init__(self, info: ModelCardInfo, task_eval: Optional[TaskEvalCallback] = None):
        self.info = info
        self.task_eval = task_eval

    def write(self, folder, args, state) -> Path:
        if self.task_eval is not None:
            scores = self.task_eval.scores(state.log_history)
        else:
            scores = scores_from_log_history(state.log_history, self.info.task, len(self.info.task.gold), self.info.train_prompt)
        card = render_model_card(self.info, scores, training_hyperparameters(args, state))
        path = Path(folder) / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        card.save(path)
        return path

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        for folder in (checkpoint, Path(args.output_dir)):
            self.write(folder, args, state)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        best = Path(state.best_model_checkpoint or "") / "README.md"
        if args.load_best_model_at_end and best.is_file():
            # The trainer has loaded the best checkpoint's weights, and the card written when it was saved
            # describes them; the log's latest evaluation is of weights that are gone.
            shutil.copyfile(best, Path(args.output_dir) / "README.md")
        else:
            self.write(args.output_dir, args, state)
