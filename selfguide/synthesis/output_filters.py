"""Generation post-processing: drop answers that are off-length or merely copy their input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..metrics import normalize, rouge_l
from ..task import Example
from .input_filters import length_window


@dataclass
class OutputFilter:
    gold: Sequence[Example]
    std_factor: float = 2.0
    length_floor: float = 0.5
    check_length: bool = True
    copy_threshold: float = 0.9

    def __post_init__(self):
        self.window = length_window([len(e.output) for e in self.gold], self.std_factor, self.length_floor)
        # Rewriting tasks legitimately overlap their input a lot; never call "copy" what the demos do.
        self.copy_limit = max(self.copy_threshold, max(rouge_l(e.output, e.input) for e in self.gold))
        self.gold_copies = any(normalize(e.output) == normalize(e.input) for e in self.gold)

    def reason_to_drop(self, input_text: str, output: str) -> Optional[str]:
        if not output.strip():
            return "empty_output"
        low, high = self.window
        if self.check_length and not low <= len(output.strip()) <= high:
            return "output_length"
        if not self.gold_copies and normalize(output) == normalize(input_text):
            return "copies_input"
        if rouge_l(output, input_text) > self.copy_limit:
            return "copies_input"
        return None
