"""The one prompt format shared by synthesis annotation, training and evaluation.

Prompts are documents ("Input: ... / Output: ..."): a base model continues them as they are, and a chat
model gets the same text as one user turn in its chat template (`PromptStyle`), answering in its own
turn. Training rows follow the same choice: strings for a base model, TRL's conversational
prompt-completion rows for a chat model, so SFTTrainer applies the same template in training and the
finetuned model sees at evaluation what it saw in training.
"""

from __future__ import annotations

import random
from typing import Callable, Optional, Sequence

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


class PromptStyle:
    """How a prompt's text reaches the student: as a document it continues, or, given `render` (an engine's
    or tokenizer's chat template), as one user turn it answers in an assistant turn."""

    def __init__(self, render: Optional[Callable[[list[dict]], str]] = None):
        self.render = render

    @property
    def chat(self) -> bool:
        return self.render is not None

    @property
    def name(self) -> str:
        return "chat" if self.chat else "document"

    def wrap(self, text: str) -> str:
        return self.render(user_turn(text)) if self.chat else text

    def completion(self, output: str) -> str:
        """What the student writes after the prompt: the answer opens the assistant's turn in chat."""
        return output.strip() if self.chat else format_completion(output)


DOCUMENT = PromptStyle()


def tokenizer_style(tokenizer) -> PromptStyle:
    """Chat prompts rendered with a transformers tokenizer's chat template. A leading BOS token is cut from the
    text, since the tokenizer adds it again when it encodes the prompt."""

    def render(messages: list[dict]) -> str:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        return text[len(bos) :] if bos and text.startswith(bos) else text

    return PromptStyle(render)


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


def prompt_completion(task: Task, input_text: str, output: str, chat: bool = False) -> dict:
    """A row in TRL's prompt-completion format, with the zero-shot training prompt; with `chat`, its
    conversational form (one user turn, one assistant turn), which SFTTrainer renders with the chat template."""
    if chat:
        return {"prompt": user_turn(training_prompt(task, input_text)), "completion": [{"role": "assistant", "content": output.strip()}]}
    return {"prompt": training_prompt(task, input_text), "completion": format_completion(output)}


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def training_prompt(task: Task, input_text: str) -> str:
    """Zero-shot prompt, the default for finetuning and scoring the finetuned model: short keeps steps cheap
    (`row_fewshot_prompt` is the few-shot alternative)."""
    return format_prompt(task, input_text)
