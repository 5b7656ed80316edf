"""The one prompt format shared by synthesis annotation, training and evaluation.

Prompts are plain documents for a base model to continue ("Input: ... / Output: ..."), so the same
text works for base and chat students and the finetuned model sees at evaluation what it saw in training.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from .task import Example, Task

OUTPUT_STOP = ("\n\n", "\nInput:")


def format_prompt(task: Task, input_text: str, shots: Sequence[Example] = ()) -> str:
    parts = [task.instruction.strip()]
    for ex in shots:
        parts.append(f"Input: {ex.input.strip()}\nOutput: {ex.output.strip()}")
    parts.append(f"Input: {input_text.strip()}\nOutput:")
    return "\n\n".join(parts)


def format_completion(output: str) -> str:
    return " " + output.strip()


def fewshot_prompt(task: Task, input_text: str, rng: Optional[random.Random] = None) -> str:
    """The prompting baseline: instruction plus every demonstration, order shuffled when `rng` is given.

    Shuffling matters for a small base model, which tends to repeat the label of the first example.
    """
    shots = list(task.examples)
    if rng is not None:
        rng.shuffle(shots)
    return format_prompt(task, input_text, shots)


def row_fewshot_prompt(task: Task, input_text: str, seed: int, index: int) -> str:
    """`fewshot_prompt` in an order seeded by the row's index, so a row's prompt does not depend on how the
    rows are batched, sharded or resumed."""
    return fewshot_prompt(task, input_text, random.Random(f"{seed}:{index}"))


def prompt_completion(task: Task, input_text: str, output: str) -> dict:
    """A row in TRL's prompt-completion format, with the zero-shot training prompt."""
    return {"prompt": training_prompt(task, input_text), "completion": format_completion(output)}


def training_prompt(task: Task, input_text: str) -> str:
    """Zero-shot prompt, the default for finetuning and scoring the finetuned model: short keeps steps cheap
    (`row_fewshot_prompt` is the few-shot alternative)."""
    return format_prompt(task, input_text)
