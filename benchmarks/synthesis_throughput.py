"""Generated tokens per second: the whole SELF-GUIDE pipeline against the bare engine, in one run.

The pipeline runs once with its engine recording every `generate` call; the bare engine then replays
exactly those calls (same prompts, same sampling settings, same seeds). The ratio is the share of
engine speed the pipeline keeps after prompt building, filters, votes and journaling.

    python benchmarks/synthesis_throughput.py [--task FILE] [--model M] [--num-examples N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import machine, markdown_table, write_results

from selfguide import Task
from selfguide.builders.selfguide import SelfGuideConfig
from selfguide.engines import SamplingParams, TransformersEngine
from selfguide.journal import Journal
from selfguide.report import FilterReport
from selfguide.student import load_student
from selfguide.synthesis.pipeline import SelfGuidePipeline

DEFAULT_TASK = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rewrite_task.json"


class RecordingEngine(TransformersEngine):
    """The real engine, keeping each call and the tokens it produced."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self.tokens = 0

    def generate(self, prompts, params):
        out = super().generate(prompts, params)
        self.calls.append((list(prompts), params))
        self.tokens += self.count_tokens([t for samples in out for t in samples])
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=str(DEFAULT_TASK))
    parser.add_argument("--model", default=None, help="default: the embedded Gemma 3 270M")
    parser.add_argument("--num-examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", help="auto: bf16 where the CPU has native bf16, else float32")
    parser.add_argument("--name", default="synthesis_throughput", help="results file stem")
    args = parser.parse_args()

    task = Task.load(args.task)
    model, tokenizer = load_student(args.model, dtype=args.dtype)
    engine = RecordingEngine(model, tokenizer, batch_size=args.batch_size)
    engine.generate(["warm-up"], SamplingParams(max_new_tokens=8))
    engine.calls, engine.tokens = [], 0
    config = SelfGuideConfig(name="bench", task=args.task, num_examples=args.num_examples, seed=args.seed, label_strategy="vote")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        rows = SelfGuidePipeline(task, engine, config, Journal(Path(tmp) / "j.jsonl"), FilterReport(), progress=False).run()
        pipeline_s = time.perf_counter() - start
    pipeline_tokens = engine.tokens

    bare = TransformersEngine(model, tokenizer, batch_size=args.batch_size)
    start, bare_tokens = time.perf_counter(), 0
    for prompts, params in engine.calls:
        out = bare.generate(prompts, params)
        bare_tokens += bare.count_tokens([t for samples in out for t in samples])
    bare_s = time.perf_counter() - start

    pipeline_tps, bare_tps = pipeline_tokens / pipeline_s, bare_tokens / bare_s
    payload = {
        "task": task.name,
        "task_type": task.type,
        "model": args.model or "embedded gemma-3-270m (GGUF Q4_K_M, dequantized)",
        "dtype": str(model.dtype),
        "num_examples": args.num_examples,
        "rows_kept": len(rows),
        "engine_calls": len(engine.calls),
        "pipeline": {"seconds": pipeline_s, "generated_tokens": pipeline_tokens, "tokens_per_s": pipeline_tps},
        "bare_engine": {"seconds": bare_s, "generated_tokens": bare_tokens, "tokens_per_s": bare_tps},
        "ratio_pipeline_over_bare": pipeline_tps / bare_tps,
        "target": ">= 0.9",
        "machine": machine(),
    }
    md = "\n".join(
        [
            "# SELF-GUIDE synthesis throughput",
            "",
            f"Task `{task.name}` ({task.type}), {args.num_examples} rows requested, {len(rows)} kept, "
            f"{len(engine.calls)} engine calls replayed, weights in {model.dtype}; "
            f"`python benchmarks/synthesis_throughput.py --dtype {args.dtype}`.",
            "",
            markdown_table(
                ["", "seconds", "generated tokens", "tokens/s"],
                [
                    ["pipeline", f"{pipeline_s:.1f}", pipeline_tokens, f"{pipeline_tps:.1f}"],
                    ["bare engine (same calls)", f"{bare_s:.1f}", bare_tokens, f"{bare_tps:.1f}"],
                ],
            ),
            "",
            f"**Ratio pipeline / bare: {pipeline_tps / bare_tps:.3f}** (target ≥ 0.9). Machine: {machine()}",
        ]
    )
    write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
