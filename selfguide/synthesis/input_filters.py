"""Stage (b): drop generated inputs that are empty, off-length, noisy, malformed or repeated.

Every rule is learned from the gold inputs or is a knob; each returns the reason it dropped a row so
the filter report can say why data went missing.
"""

from __future__ import annotations

import logging
import re
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..metrics import normalize

logger = logging.getLogger(__name__)

DEFAULT_NOISE_PATTERNS = (
    r"^\s*(hi|hello|hey|dear|greetings|thanks|thank you|sure|okay|of course)\b",
    r"\b(input|output|answer|label|example)\s*\d*\s*:",
    r"###",
    r"\btask\s*:",
    r"\bhere (is|are) (an?|some|the) (new |another )?(example|input)s?\b",
)
_MARKER = re.compile(r"(?:^|(?<=\s))([A-Z][A-Za-z0-9]*(?: [A-Za-z0-9]+){0,2}):")


def length_window(lengths: Sequence[int], std_factor: float, floor: float) -> tuple[float, float]:
    """mean ± std_factor·σ, but never narrower than ± floor·mean.

    With three gold inputs the raw window can be a few characters wide; the floor keeps it usable.
    """
    mean = statistics.fmean(lengths)
    std = statistics.pstdev(lengths) if len(lengths) > 1 else 0.0
    half = max(std_factor * std, floor * mean)
    return max(0.0, mean - half), mean + half


def required_markers(gold_inputs: Sequence[str]) -> set[str]:
    """Field markers such as 'Sentence 1:' that every gold input carries."""
    sets = [set(_MARKER.findall(text)) for text in gold_inputs]
    return set.intersection(*sets) if sets else set()


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def _first_match(pattern: re.Pattern, texts: Sequence[str]) -> Optional[str]:
    return next((t for t in texts if pattern.search(t)), None)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


@dataclass
class InputFilter:
    """Stateful across rounds: it remembers what it accepted so later duplicates are caught.

    The built-in noise rules guess what a task's inputs never hold; a guess that a gold input
    contradicts (support messages opening "Hi,", a "Fact: ... Answer: ..." format) would drop every
    faithful input, so it is left out for that task. `extra_noise_patterns` are the user's and stay.
    """

    gold_inputs: Sequence[str]
    instruction: str
    std_factor: float = 2.0
    length_floor: float = 0.5
    noise_patterns: Sequence[str] = DEFAULT_NOISE_PATTERNS
    extra_noise_patterns: Sequence[str] = ()
    check_format: bool = True
    near_duplicate_threshold: float = 0.8
    instruction_overlap_words: int = 8
    _seen: set = field(default_factory=set, init=False)
    _shingle_sets: list = field(default_factory=list, init=False)

    def __post_init__(self):
        self.window = length_window([len(t) for t in self.gold_inputs], self.std_factor, self.length_floor)
        markers = required_markers(self.gold_inputs)
        self.markers = markers if self.check_format else set()
        self.single_line = self.check_format and all("\n" not in t.strip() for t in self.gold_inputs)
        # A field every gold input carries ("Answer:") is the task's format, not a leaked output marker.
        self._format_markers = re.compile(r"(?:^|(?<=\s))(?:%s):" % "|".join(map(re.escape, sorted(markers)))) if markers else None
        unmarked_gold = [self._unmarked(t) for t in self.gold_inputs]
        self._noise = []
        for compiled in (re.compile(p, re.IGNORECASE) for p in self.noise_patterns):
            hit = _first_match(compiled, unmarked_gold)
            if hit is None:
                self._noise.append(compiled)
            else:
                logger.info("input filters: noise pattern %r not applied, a demonstration input matches it: %.80r", compiled.pattern, hit)
        self._extra_noise = [re.compile(p, re.IGNORECASE) for p in self.extra_noise_patterns]
        for compiled in self._extra_noise:
            hit = _first_match(compiled, self.gold_inputs)
            if hit is not None:
                logger.warning("extra_noise_patterns: %r matches the demonstration input %.80r, so inputs like it are dropped. "
                               "Fix: narrow the pattern if that is not meant", compiled.pattern, hit)
        words = normalize(self.instruction).split()
        n = self.instruction_overlap_words
        ngrams = {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
        # Inputs that quote the instruction by design (a passage it names) are not leaks.
        gold_norm = [normalize(t) for t in self.gold_inputs]
        self._instruction_ngrams = {g for g in ngrams if not any(g in t for t in gold_norm)}
        if len(self._instruction_ngrams) < len(ngrams):
            logger.info("input filters: %d instruction n-grams not checked, demonstration inputs quote them", len(ngrams) - len(self._instruction_ngrams))
        for text in self.gold_inputs:
            self._remember(text)

    def _unmarked(self, text: str) -> str:
        return self._format_markers.sub(" ", text) if self._format_markers else text

    def _remember(self, text: str) -> None:
        self._seen.add(normalize(text))
        self._shingle_sets.append(_shingles(text))

    def reason_to_drop(self, text: str) -> Optional[str]:
        stripped = text.strip()
        if not stripped:
            return "empty"
        low, high = self.window
        if not low <= len(stripped) <= high:
            return "length"
        unmarked = self._unmarked(stripped)
        if any(p.search(unmarked) for p in self._noise) or any(p.search(stripped) for p in self._extra_noise):
            return "noise"
        norm = normalize(stripped)
        if self._instruction_ngrams and any(g in norm for g in self._instruction_ngrams):
            return "instruction_leak"
        if self.single_line and "\n" in stripped:
            return "format"
        if self.markers and not self.markers <= set(_MARKER.findall(stripped)):
            return "format"
        if norm in self._seen:
            return "duplicate"
        shingles = _shingles(stripped)
        if any(jaccard(shingles, other) >= self.near_duplicate_threshold for other in self._shingle_sets):
            return "near_duplicate"
        return None

    def remember_all(self, texts) -> None:
        """Treat `texts` as accepted before: what a shard's filter is told of the pool's earlier rounds."""
        for text in texts:
            self._remember(text.strip())

    def accept(self, text: str) -> Optional[str]:
        """Return the drop reason, or None after remembering the text as accepted."""
        reason = self.reason_to_drop(text)
        if reason is None:
            self._remember(text.strip())
        return reason
