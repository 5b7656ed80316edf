"""Stage (c): the student answers its own inputs; several samples and a self-consistency vote.

The annotation prompt is the prompting baseline's few-shot prompt with the demonstrations shuffled
per input, so a small model's habit of copying the first example's answer does not decide the vote.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..engines import Engine, SamplingParams
from ..metrics import normalize
from ..prompts import DOCUMENT, PromptStyle, row_fewshot_prompt
from ..task import Task


@dataclass(frozen=True)
class Annotation:
    output: Optional[str]
    votes: int
    agreement: float
    reason: Optional[str] = None  # why no output was chosen
    label_scores: Optional[list[float]] = None  # likelihood labelling: calibrated log-probability of each label


def annotation_prompts(task: Task, inputs: Sequence[str], seed: int, style: PromptStyle = DOCUMENT) -> list[str]:
    return [style.wrap(row_fewshot_prompt(task, text, seed, i)) for i, text in enumerate(inputs)]


def sample_outputs(
    engine: Engine, task: Task, inputs: Sequence[str], params: SamplingParams, style: PromptStyle = DOCUMENT
) -> list[list[str]]:
    return engine.generate(annotation_prompts(task, inputs, params.seed or 0, style), params)


def vote(
    samples: Sequence[str],
    min_majority: float,
    to_answer: Callable[[str], Optional[str]] = lambda s: s.strip() or None,
) -> Annotation:
    """Majority answer among the samples; ties go to the shortest answer.

    `to_answer` maps a raw sample to a candidate answer (the label, for classification) or None when
    it gives none; such samples count against the majority share but cannot win.
    """
    answers = [to_answer(s) for s in samples]
    valid = [a for a in answers if a]
    if not valid:
        return Annotation(None, 0, 0.0, "no_answer")
    by_norm: dict[str, list[str]] = {}
    for a in valid:
        by_norm.setdefault(normalize(a) or a, []).append(a)
    counts = Counter({k: len(v) for k, v in by_norm.items()})
    top = max(counts.values())
    winner_key = min((k for k, c in counts.items() if c == top), key=lambda k: (len(k), k))
    share = top / len(samples)
    if share < min_majority:
        return Annotation(None, top, share, "no_majority")
    # Report the most common surface form of the winning answer.
    surface = Counter(by_norm[winner_key]).most_common(1)[0][0]
    return Annotation(surface, top, share)
