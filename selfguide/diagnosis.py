"""What a before/after table says went wrong with a finetuning run, and what to try: printed at the end of the
recipe and written into the model card."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from .evaluation import FEW_SHOT, TaskScore
from .metrics import most_frequent_answer
from .task import Task

# A classifier giving one answer on at least this share of the rows (and more than the rows hold) answers a
# constant, not the task.
ONE_LABEL_SHARE = 90.0

ONE_LABEL_FIX = (
    "Fix: train on more, or better balanced, rows (the card's filter report shows what synthesis kept; --num_examples), "
    "or for more steps (--num_train_epochs, --max_steps)"
)
BELOW_PROMPTING_FIX = (
    "Fix: keep prompting the base model with the demonstrations for now, or try --train_prompt few-shot, more synthetic "
    "rows (--num_examples) or another --learning_rate"
)


def finetuning_warnings(scores: Sequence[TaskScore], task: Task) -> list[str]:
    """One sentence per problem, each ending with the fix to try; empty when the finetuned model looks sound."""
    finetuned = next((s for s in scores if s.model == "finetuned"), None)
    if finetuned is None:
        return []
    warnings = []
    if task.is_classification and finetuned.predictions:
        answer, share = most_frequent_answer(finetuned.predictions, task.labels)
        gold = Counter(g.output for g in task.gold[: finetuned.num_rows])
        gold_share = 100 * gold[answer] / max(1, finetuned.num_rows)
        if share >= ONE_LABEL_SHARE and share > gold_share:
            warnings.append(
                f"The finetuned model answers '{answer}' on {share:.0f}% of the {finetuned.num_rows} gold rows, which hold "
                f"{gold_share:.0f}% '{answer}': it learned one label, not the task. {ONE_LABEL_FIX}"
            )
    prompted = next((s for s in scores if s.model == "base" and s.prompt == FEW_SHOT), None)
    if prompted is not None and finetuned.value < prompted.value:
        warnings.append(
            f"The finetuned model scores {finetuned.value:.1f} {finetuned.metric}, below the base model prompted with the "
            f"demonstrations ({prompted.value:.1f}): finetuning made it worse. {BELOW_PROMPTING_FIX}"
        )
    return warnings
