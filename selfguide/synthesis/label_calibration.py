"""Classification labelling by likelihood: score every label instead of sampling text.

A small base model sampled for labels mostly echoes the first demonstration's answer. Comparing the
log-likelihood of each label, corrected by the same label's likelihood after a content-free input
(contextual calibration, Zhao et al. 2021), removes that prior and always yields a valid label.

The channel direction (Min et al. 2022) asks the other way round: under which label does stage (a)'s
prompt make the input most likely. It uses what the student does when it writes inputs for a label,
which can know a class where its answers do not: on NI V2's stance task, 60% right where every answering
labeller was at or below the majority's 52.5% (`benchmarks/results/label_accuracy_channel.md`), though the
adapter finetuned on those labels scored no better (`ni_v2_channel.md`).
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from ..engines import Engine
from ..prompts import DOCUMENT, PromptStyle, format_prompt
from ..task import Task
from .input_generation import build_input_prompt
from .output_annotation import Annotation

CONTENT_FREE_INPUT = "N/A"


def _log_softmax(xs: Sequence[float]) -> list[float]:
    # In log space, so a label far less likely than the best keeps a finite score for balance="rank".
    m = max(xs)
    log_total = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - log_total for x in xs]


def label_by_likelihood(
    engine: Engine,
    task: Task,
    inputs: Sequence[str],
    seed: int,
    calibrate: bool = True,
    num_orders: int = 4,
    style: PromptStyle = DOCUMENT,
) -> list[Annotation]:
    """One annotation per input: the calibrated most likely label and its probability as agreement.

    Demonstrations are shuffled into `num_orders` fixed orders, spread over the inputs, so the
    content-free correction is computed once per order rather than once per input.
    """
    labels = list(task.labels)
    orders = []
    for k in range(num_orders):
        shots = list(task.examples)
        random.Random(f"{seed}:order{k}").shuffle(shots)
        orders.append(shots)

    def prompt(text: str, k: int) -> str:
        return style.wrap(format_prompt(task, text, orders[k]))

    continuations = [style.completion(label) for label in labels]
    baseline = [[0.0] * len(labels) for _ in orders]
    if calibrate:
        flat = engine.score(
            [prompt(CONTENT_FREE_INPUT, k) for k in range(num_orders) for _ in labels], continuations * num_orders
        )
        baseline = [flat[k * len(labels) : (k + 1) * len(labels)] for k in range(num_orders)]
    prompts = [prompt(text, i % num_orders) for i, text in enumerate(inputs) for _ in labels]
    flat = engine.score(prompts, continuations * len(inputs))
    return [
        _annotation(labels, [s - b for s, b in zip(flat[i * len(labels) : (i + 1) * len(labels)], baseline[i % num_orders])])
        for i in range(len(inputs))
    ]


def label_by_channel(
    engine: Engine, task: Task, inputs: Sequence[str], seed: int, num_orders: int = 4, style: PromptStyle = DOCUMENT
) -> list[Annotation]:
    """One annotation per input: the label whose input-generation prompt gives the input the highest
    log-likelihood. The same `num_orders` demonstration orders are shared across inputs, so each
    (order, label) prompt is encoded once for all the inputs that use it."""
    labels = list(task.labels)
    prompts = [
        build_input_prompt(task, [], label, random.Random(f"{seed}:order{i % num_orders}"), style)
        for i in range(len(inputs))
        for label in labels
    ]
    flat = engine.score(prompts, [text.strip() for text in inputs for _ in labels])
    return [_annotation(labels, flat[i * len(labels) : (i + 1) * len(labels)]) for i in range(len(inputs))]


def _annotation(labels: list[str], scores: Sequence[float]) -> Annotation:
    logprobs = _log_softmax(scores)
    best = max(range(len(labels)), key=logprobs.__getitem__)
    return Annotation(labels[best], 1, math.exp(logprobs[best]), label_scores=logprobs)
