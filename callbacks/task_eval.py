"""Score the model on the task itself, not just its loss, every time the Trainer evaluates."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..evaluation import FEW_SHOT, ZERO_SHOT, TaskScore, gold_rows, score_baseline, score_model
from ..metrics import metric_name
from ..quantization import trainable_4bit_layout
from ..task import Example, Task
from ..errors import ConfigError

logger = logging.getLogger(__name__)

BASELINE_PREFIX = "base"
# The baseline's answers, kept in each checkpoint: a run resumed from it shows them in its card without scoring again.
BASELINE_FILE = "task_eval_baseline.json"


def baseline_key(prompt: str, metric: str) -> str:
    return f"{BASELINE_PREFIX}_{prompt.replace('-', '')}_{metric}"


class TaskEvalCallback(TrainerCallback):
    """Greedy generation on the task's gold rows, scored with the task metric, at each evaluation.

    The score is added to the evaluation's metrics as `eval_<metric>` (`eval_exact_match` for
    classification, `eval_rougeL` for generation), so `metric_for_best_model: exact_match` with
    `load_best_model_at_end` picks checkpoints by it. With `baseline=True` the base model is also scored
    once when training starts, with the few-shot prompt and the zero-shot one, under
    `base_fewshot_<metric>` and `base_zeroshot_<metric>`: the 'before' of the model card's table. Each
    score is logged as its own entry: with `log_with(trainer)` through `trainer.log`, so it reaches
    `state.log_history` (and `trainer_state.json`) and every logger `report_to` names (TensorBoard,
    trackio, wandb); without it, into `state.log_history` only. A run resumed from a checkpoint keeps
    the baseline it restores with the log history, and its answers (`BASELINE_FILE` in the checkpoint).
    The finetuned model is scored with `prompt`, which should be the one it is trained with, and with `chat`
    in the tokenizer's chat template when it is trained on conversational rows.
    Under several processes each one decodes a share of the rows. A 4-bit model is evaluated in its
    trainable layout (`selfguide.quantization.trainable_4bit_layout`); with QLoRA on a CPU, also call
    `keep_4bit_trainable(model)` before training if the Trainer computes an evaluation loss, as the
    recipe does.
    """

    def __init__(
        self,
        task,
        rows: Optional[Sequence[Example]] = None,
        *,
        baseline: bool = True,
        batch_size: int = 16,
        max_new_tokens: Optional[int] = None,
        prompt: str = ZERO_SHOT,
        chat: bool = False,
    ):
        self.task = Task.load(task)
        self.rows = list(rows) if rows is not None else gold_rows(self.task)
        if not self.rows:
            raise ConfigError(f"TaskEvalCallback: no rows to evaluate task '{self.task.name}' on. Fix: pass rows or give the task a 'test' list")
        self.metric = metric_name(self.task.type)
        self.baseline = baseline
        self.prompt = prompt  # the finetuned model's: the one it is trained with
        # chat: prompts in the tokenizer's chat template, for a model trained on conversational rows
        self.score_kwargs = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "chat": chat}
        self.base_scores: list[TaskScore] = []  # the baseline with its answers (from the checkpoint when resumed)
        self.last_score: Optional[TaskScore] = None
        self._log: Optional[Callable[[dict], None]] = None

    def log_with(self, trainer) -> "TaskEvalCallback":
        """Log the scores with `trainer.log`, as the trainer logs its own metrics (and to the same loggers)."""
        self._log = trainer.log
        return self

    @property
    def metric_key(self) -> str:
        return f"eval_{self.metric}"

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        keys = {baseline_key(p, self.metric) for p in (FEW_SHOT, ZERO_SHOT)}
        if any(keys & entry.keys() for entry in state.log_history):
            # Resumed: the baseline came back with the log history, its answers with the checkpoint.
            resumed = Path(args.resume_from_checkpoint or Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            saved = resumed / BASELINE_FILE
            self.base_scores = [TaskScore(**s) for s in json.loads(saved.read_text())] if saved.is_file() else []
            return
        if not self.baseline:
            return
        with trainable_4bit_layout(model):
            scores = score_baseline(model, processing_class, self.task, self.rows, **self.score_kwargs)
        self.base_scores = scores
        entry = {baseline_key(s.prompt, s.metric): s.value for s in scores}
        logger.info("task baseline: %s", entry)
        self._record(entry, state)

    def on_evaluate(self, args, state, control, model=None, processing_class=None, metrics=None, **kwargs):
        score = self._score(model, processing_class, state)
        # `metrics` is the dict Trainer.evaluate returns and best-model selection reads; the trainer has logged
        # it just before this hook, so the score is logged as an entry of its own.
        if metrics is not None:
            metrics[self.metric_key] = score.value
        self._record({self.metric_key: score.value}, state)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.base_scores:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            (checkpoint / BASELINE_FILE).write_text(json.dumps([asdict(s) for s in self.base_scores]))

    def evaluate(self, model, processing_class, state) -> dict:
        """Score outside a Trainer evaluation (after training, say) and record it in the log history."""
        score = self._score(model, processing_class, state)
        self._record({self.metric_key: score.value}, state)
        return {self.metric_key: score.value}

    def scores(self, log_history: list[dict]) -> list[TaskScore]:
        """The before/after table of `log_history`, each score with the answers behind it where this
        process kept them (a resumed run's baseline exists only as numbers in the restored history)."""
        scores = scores_from_log_history(log_history, self.task, len(self.rows), self.prompt)
        answered = {(s.model, s.prompt): s for s in [*self.base_scores, self.last_score] if s is not None}
        return [answered.get((s.model, s.prompt), s) for s in scores]

    def _record(self, entry: dict, state) -> None:
        if self._log is not None:
            self._log(dict(entry))  # the trainer adds the step and epoch, keeps it in log_history and calls every logger
        else:
            state.log_history.append({**entry, "step": state.global_step})

    def _score(self, model, processing_class, state) -> TaskScore:
        with trainable_4bit_layout(model):
            score = score_model(model, processing_class, self.task, self.rows, prompt=self.prompt, **self.score_kwargs)
        self.last_score = score
        logger.info("step %d: %s = %.2f on %d rows", state.global_step, self.metric_key, score.value, score.num_rows)
        return score


def scores_from_log_history(log_history: list[dict], task: Task, num_rows: int, prompt: str = ZERO_SHOT) -> list[TaskScore]:
    """The before/after table recorded by TaskEvalCallback: baselines, then the latest evaluation (with `prompt`)."""
    metric = metric_name(task.type)
    scores = []
    for base_prompt in (FEW_SHOT, ZERO_SHOT):
        key = baseline_key(base_prompt, metric)
        value = next((e[key] for e in log_history if key in e), None)
        if value is not None:
            scores.append(TaskScore("base", base_prompt, metric, value, num_rows))
    evaluated = [e for e in log_history if f"eval_{metric}" in e]
    if evaluated:
        scores.append(TaskScore("finetuned", prompt, metric, evaluated[-1][f"eval_{metric}"], num_rows))
    return scores
