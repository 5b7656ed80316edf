"""SELF-GUIDE end to end: rounds of (a) input generation, (b) input filters, (c) output annotation and
(d) class balancing or output filters, until `num_examples` rows survive or `max_rounds` is spent.

Only model calls are journaled. Everything between them (prompt building, filters, votes) is cheap
and deterministic given the journal, so a resumed run replays it and lands in exactly the state the
interrupted run had: no batch is lost or counted twice.
"""

from __future__ import annotations

import math
import random

from datasets.utils import tqdm

from ..engines import Engine, SamplingParams
from ..journal import Journal
from ..metrics import extract_label
from ..prompts import DOCUMENT, OUTPUT_STOP, PromptStyle
from ..report import FilterReport
from ..task import Example, Task
from .class_balance import assign_by_rank, class_cap, class_counts, downsample_to_smallest
from .input_filters import InputFilter
from .input_generation import INPUT_STOP, build_input_prompt, draw_target_label, input_max_new_tokens
from .label_calibration import label_by_channel, label_by_likelihood
from .output_annotation import Annotation, sample_outputs, vote
from .output_filters import OutputFilter


def _seed(*parts) -> int:
    return random.Random(":".join(map(str, parts))).randrange(2**31)


class SelfGuidePipeline:
    """`config` carries the knobs: a `SelfGuideConfig` (see builders/selfguide.py) or anything alike."""

    def __init__(
        self, task: Task, engine: Engine, config, journal: Journal, report: FilterReport, progress: bool = True, chat: bool = False
    ):
        self.task, self.engine, self.cfg, self.journal, self.report = task, engine, config, journal, report
        self.progress = progress
        # A chat student gets every prompt as a user turn in its template (render_chat raises if it has none).
        self.style = PromptStyle(engine.render_chat) if chat else DOCUMENT
        cfg = config
        self.labels = task.labels if task.is_classification else None
        # "rank" labels the pool only once it is complete, so no class can be full before then.
        self.cap = class_cap(cfg.num_examples, self.labels) if self.labels and cfg.balance in ("cap", "downsample") else None
        self.input_filter = InputFilter(
            gold_inputs=[e.input for e in task.examples],
            instruction=task.instruction,
            std_factor=cfg.length_std_factor,
            length_floor=cfg.length_window_floor,
            extra_noise_patterns=cfg.extra_noise_patterns,
            check_format=cfg.format_check,
            near_duplicate_threshold=cfg.near_duplicate_threshold,
        )
        self.output_filter = (
            None
            if self.labels
            else OutputFilter(
                task.examples,
                std_factor=cfg.length_std_factor,
                length_floor=cfg.length_window_floor,
                check_length=cfg.output_length_filter,
                copy_threshold=cfg.copy_threshold,
            )
        )
        temperature = cfg.temperature if cfg.temperature is not None else (0.7 if self.labels else 0.9)
        self.input_params = SamplingParams(
            temperature=temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            n=cfg.inputs_per_prompt,
            max_new_tokens=cfg.input_max_new_tokens or input_max_new_tokens(engine, task),
            stop=INPUT_STOP,
        )
        longest_output = max(engine.count_tokens([e.output]) for e in task.examples)
        self.output_params = SamplingParams(
            temperature=cfg.annotation_temperature,
            top_k=cfg.top_k,
            n=cfg.annotation_samples,
            max_new_tokens=cfg.output_max_new_tokens or int(longest_output * 1.5) + 8,
            stop=OUTPUT_STOP,
        )

    # -- one batch ---------------------------------------------------------------------------------

    def _prompts(self, rng: random.Random, size: int, rows: list[dict]) -> list[str]:
        cfg = self.cfg
        counts = class_counts(rows) if self.labels else {}
        prompts = []
        for _ in range(size):
            k = min(len(rows), rng.randint(cfg.min_low_quality, cfg.max_low_quality))
            low = [Example(r["input"], r["output"]) for r in rng.sample(rows, k)]
            # The target label only steers what the student writes: stage (c) labels every input itself.
            target = draw_target_label(self.labels, counts, self.cap or cfg.num_examples, rng) if self.labels else None
            prompts.append(build_input_prompt(self.task, low, target, rng, self.style))
        return prompts

    def _annotate(self, inputs: list[str], seed: int) -> list[Annotation]:
        if self.labels and self.cfg.label_strategy == "likelihood":
            return label_by_likelihood(self.engine, self.task, inputs, seed, calibrate=self.cfg.calibrate, style=self.style)
        if self.labels and self.cfg.label_strategy == "channel":
            return label_by_channel(self.engine, self.task, inputs, seed, style=self.style)
        params = SamplingParams(**{**vars(self.output_params), "seed": seed})
        samples = sample_outputs(self.engine, self.task, inputs, params, self.style)
        to_answer = (lambda s: extract_label(s, self.labels)) if self.labels else (lambda s: s.strip() or None)
        return [vote(s, self.cfg.min_majority, to_answer) for s in samples]

    def _batch(self, key: str, rng: random.Random, size: int, rows: list[dict], round_index: int) -> list[dict]:
        kept, annotated = self.annotated_batch(key, rng, size, rows, round_index)
        return self.post_filter(annotated, rows) if kept else []

    def annotated_batch(self, key: str, rng: random.Random, size: int, rows: list[dict], round_index: int) -> tuple[list[str], list[dict]]:
        """Stages (a)-(c) for one batch of prompts built from the pool `rows`: the inputs that passed the filters,
        and the labelled rows among them, before (d)."""
        prompts = self._prompts(rng, size, rows)
        params = SamplingParams(**{**vars(self.input_params), "seed": _seed(self.cfg.seed, key, "inputs")})
        texts = self.journal.run(f"inputs/{key}", lambda: self.engine.generate(prompts, params))
        candidates = [t for samples in texts for t in samples]
        self.report.add("input_generation", len(prompts), len(candidates))

        kept, drops = [], {}
        for text in candidates:
            reason = self.input_filter.accept(text)
            if reason:
                drops[reason] = drops.get(reason, 0) + 1
            else:
                kept.append(text.strip())
        self.report.add("input_filters", len(candidates), len(kept), drops)
        if not kept:
            return [], []

        seed = _seed(self.cfg.seed, key, "outputs")
        raw = self.journal.run(f"outputs/{key}", lambda: [vars(a) for a in self._annotate(kept, seed)])
        annotations = [Annotation(**a) for a in raw]
        annotated, drops = [], {}
        for text, a in zip(kept, annotations):
            if a.output is None:
                drops[a.reason] = drops.get(a.reason, 0) + 1
            else:
                row = {"input": text, "output": a.output, "round": round_index, "votes": a.votes, "agreement": a.agreement}
                if self.labels and self.cfg.balance == "rank":
                    row["label_scores"] = a.label_scores
                annotated.append(row)
        self.report.add("output_annotation", len(kept), len(annotated), drops)
        return kept, annotated

    def post_filter(self, annotated: list[dict], rows: list[dict]) -> list[dict]:
        """Stage (d) for one batch's labelled rows given the pool `rows`: class balance or the output filters."""
        accepted, drops = [], {}
        counts = class_counts(rows) if self.labels else None
        for row in annotated:
            if self.labels:
                reason = "class_full" if self.cap and counts[row["output"]] >= self.cap else None
            else:
                reason = self.output_filter.reason_to_drop(row["input"], row["output"])
            if reason:
                drops[reason] = drops.get(reason, 0) + 1
                continue
            accepted.append(row)
            if counts is not None:
                counts[row["output"]] += 1
        self.report.add("class_balance" if self.labels else "output_filters", len(annotated), len(accepted), drops)
        return accepted

    # -- the rounds --------------------------------------------------------------------------------

    def batch_sizes(self, have: int) -> list[int]:
        """The prompts in each batch of a round that starts with `have` rows: enough for the missing rows, oversampled."""
        cfg = self.cfg
        n_prompts = math.ceil((cfg.num_examples - have) * cfg.oversample / cfg.inputs_per_prompt)
        return [min(cfg.prompts_per_batch, n_prompts - start) for start in range(0, n_prompts, cfg.prompts_per_batch)]

    def run(self) -> list[dict]:
        cfg = self.cfg
        rows: list[dict] = []
        bar = tqdm(total=cfg.num_examples, desc="SELF-GUIDE rows", unit="row", disable=not self.progress)
        try:  # closed on Ctrl-C too, so no stale bar prints after the command's last line
            for r in range(cfg.max_rounds):
                if len(rows) >= cfg.num_examples:
                    break
                sizes = self.batch_sizes(len(rows))
                for b in tqdm(range(len(sizes)), desc=f"round {r + 1}/{cfg.max_rounds}", leave=False, disable=not self.progress):
                    if len(rows) >= cfg.num_examples:
                        break
                    size = sizes[b]
                    rng = random.Random(_seed(cfg.seed, r, b, "prompts"))
                    new = self._batch(f"r{r}/b{b}", rng, size, rows, r)
                    rows.extend(new)
                    bar.update(min(len(new), max(0, cfg.num_examples - bar.n)))
        finally:
            bar.close()
        return self.finish(rows)

    def finish(self, rows: list[dict]) -> list[dict]:
        """The whole pool's last steps: rank or downsample balance, then the cut to `num_examples`."""
        cfg = self.cfg
        if self.labels and cfg.balance == "rank" and rows:
            ranked = assign_by_rank(rows, self.labels, cfg.num_examples)
            self.report.add("rank_balance", len(rows), len(ranked), {"class_balance": len(rows) - len(ranked)})
            rows = ranked
        if self.labels and cfg.balance == "downsample" and rows:
            balanced = downsample_to_smallest(rows, cfg.seed)
            self.report.add("downsample", len(rows), len(balanced), {"class_balance": len(rows) - len(balanced)})
            rows = balanced
        return self.report.cut(rows, cfg.num_examples)
