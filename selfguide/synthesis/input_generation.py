"""Stage (a): the student writes new task inputs, prompted with the gold inputs and its own earlier ones.

The prompt is a document for a base model to continue: a header naming the task, then numbered
examples (the gold inputs, called high-quality in the paper, mixed in shuffled order with up to
`max_low_quality` (3) earlier generations, the low-quality ones), and finally an open example slot. For classification
every example carries its answer and the open slot names a target label, so the student writes an
input for that label. Keeping the instruction in a header, away from the slot, stops it leaking
into the generated text. A chat student gets the same text as its user turn, the open slot replaced by
a request for that example's input, which it writes as its answer.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from ..engines import Engine
from ..prompts import DOCUMENT, PromptStyle
from ..task import Example, Task

SLOT_MARKER = "### Example"
INPUT_STOP = ("\n###", "\n\n\n")


def _slot(number: int, label: Optional[str]) -> str:
    return f"{SLOT_MARKER} {number}" + (f" (answer: {label})" if label is not None else "")


def build_input_prompt(
    task: Task,
    low_quality: Sequence[Example],
    target_label: Optional[str],
    rng: random.Random,
    style: PromptStyle = DOCUMENT,
) -> str:
    shots = list(task.examples) + list(low_quality)
    rng.shuffle(shots)
    with_label = task.is_classification
    if style.chat:  # a chat model reads "Task: <instruction>" as an order to do the task, so it is named as a quote
        parts = [f"You write new inputs for a task whose instruction is: \"{task.instruction.strip()}\"\n"
                 f"Below are example inputs for this task{', each with its answer' if with_label else ''}."]
    else:
        parts = [f"Task: {task.instruction.strip()}\nBelow are example inputs for this task."]
    for i, ex in enumerate(shots, start=1):
        parts.append(f"{_slot(i, ex.output if with_label else None)}\n{ex.input.strip()}")
    if not style.chat:
        parts.append(f"{_slot(len(shots) + 1, target_label)}\n")
        return "\n\n".join(parts)
    wanted = f" whose answer would be \"{target_label}\"" if target_label is not None else ""
    parts.append(f"Write example {len(shots) + 1}: one new input for this task, unlike the examples,{wanted}. "
                 "Reply with the text of the new input only, not its answer.")
    return style.wrap("\n\n".join(parts))


def draw_target_label(labels: Sequence[str], counts: dict[str, int], cap: int, rng: random.Random) -> str:
    """A label drawn at random, weighted towards classes still short of their share."""
    weights = [max(cap - counts.get(label, 0), 0) + 1e-3 for label in labels]
    return rng.choices(list(labels), weights=weights, k=1)[0]


def input_max_new_tokens(engine: Engine, task: Task, slack: float = 1.5, floor: int = 16) -> int:
    longest = max(engine.count_tokens([ex.input]) for ex in task.examples)
    return max(floor, int(longest * slack) + 8)
