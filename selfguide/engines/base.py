"""The seam between the data methods and whatever runs the language model."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import ConfigError


@dataclass
class SamplingParams:
    """One generation request's knobs; `temperature=0` means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    max_new_tokens: int = 64
    stop: Sequence[str] = field(default_factory=tuple)
    seed: Optional[int] = None


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut `text` at the earliest stop string (engines may overshoot by a few tokens)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class Engine(ABC):
    """Generates text for a batch of prompts.

    `generate` returns, for each prompt, `params.n` completions (prompt excluded, cut at stop strings).
    `score` returns the summed log-probability of each continuation given its prompt; engines that
    cannot compute it raise NotImplementedError, whose message points to label_strategy='vote' (sampling).
    """

    @abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]: ...

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]:
        raise NotImplementedError(f"{type(self).__name__} cannot score continuations; use label_strategy='vote'")

    def check_scoring(self) -> None:
        """Raise, before any sampling work, if `score` cannot work; engines that score locally always can."""

    def close(self) -> None:
        """Release what the engine holds (connections, a loaded model); a no-op for most engines."""

    @property
    def has_chat_template(self) -> bool:
        """Whether the student is a chat model whose template `render_chat` applies."""
        return False

    def render_chat(self, messages: Sequence[dict]) -> str:
        """`messages` ({"role", "content"} dicts) in the student's chat template, ending with the opening of the
        assistant's turn, as plain text that `generate` and `score` then continue. A leading BOS token is left
        out: engines add it when they tokenize, as they do for document prompts."""
        raise ConfigError(
            f"prompt_format: 'chat' needs a chat template, and {type(self).__name__}'s student has none. "
            "Fix: use prompt_format='document' (or 'auto'), or an instruct model"
        )

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens in `texts`, which size generation budgets. Without a tokenizer at hand (a remote server),
        about four characters a token for English: counting words would undershoot the budgets."""
        return sum(math.ceil(len(t) / 4) for t in texts)
