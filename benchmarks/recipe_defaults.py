"""The recipe's defaults on a new user's small task: does the adapter beat its prompted self?

Issue 19's case: a question-vs-statement task with 4 demonstrations and 20 gold rows, trained on 16 correct
rows (tests/fixtures/question_statement_*) with the embedded Gemma 3 270M student and QLoRA. Each variant is
one recipe run (`selfguide.recipes.sft.run`) that differs only in the learning rate and the number of steps:
TRL's defaults as the recipe left them before (2e-5, the user's --max_steps 8), 2e-4 at 8 steps, and the
recipe's defaults (no --learning_rate, no --max_steps). Records go to recipe_defaults.partial.jsonl, so a
stopped call resumes and another --seed adds its rows; the table shows every record there.

    python benchmarks/recipe_defaults.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, append_record, command_line, machine, read_records, write_results  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
TASK = FIXTURES / "question_statement_task.yaml"
ROWS = FIXTURES / "question_statement_rows.jsonl"
# name -> the recipe flags that differ
VARIANTS = {
    "trl_2e-5_8_steps": ["--learning_rate", "2e-5", "--max_steps", "8"],
    "2e-4_8_steps": ["--learning_rate", "2e-4", "--max_steps", "8"],
    "recipe_defaults": [],
}
PARTIAL = RESULTS / "recipe_defaults.partial.jsonl"


def one_run(name: str, data: Path, work: Path, seed: int) -> dict:
    from selfguide.metrics import most_frequent_answer
    from selfguide.recipes.sft import run
    from selfguide.task import Task

    task = Task.load(TASK)
    out = work / name
    argv = ["--task", str(TASK), "--dataset_name", str(data), "--output_dir", str(out), "--logging_steps", "2",
            "--gradient_checkpointing", "false", "--save_strategy", "no", "--report_to", "none", "--seed", str(seed),
            *VARIANTS[name]]
    load, start = os.getloadavg()[0], time.perf_counter()
    result = run(argv)
    seconds = time.perf_counter() - start
    card = card_values(out, ("steps", "epochs", "learning_rate", "final_train_loss"))
    finetuned = next(s for s in result.scores if s.model == "finetuned")
    answer, share = most_frequent_answer(finetuned.predictions, task.labels)
    return {
        "variant": name, "flags": VARIANTS[name], "seed": seed, **card,
        "scores": {f"{s.model}_{s.prompt}": s.value for s in result.scores}, "top_answer": answer, "top_share": share,
        "warnings": (out / "README.md").read_text().count("> **Warning:**"),
        "seconds": round(seconds, 1), "load_average_1m_before": load, "command": command_line(),
    }


def card_values(out: Path, keys) -> dict:
    """Rows of the model card's hyperparameter table: what the run trained with, as the card states it."""
    card = (out / "README.md").read_text()
    return {key: float(card.split(f"| {key} | ")[1].split(" |")[0]) for key in keys}


def markdown(records: list[dict], settings: dict) -> str:
    lines = [
        "# The recipe's defaults on a new user's small task",
        "",
        "Question vs statement (tests/fixtures/question_statement_task.yaml): 4 demonstrations, 20 gold rows (10 of each "
        "label), 16 correct training rows, the embedded Gemma 3 270M student, QLoRA (nf4), batch 8, zero-shot training "
        "prompt. Exact match on the 20 gold rows; the base model's rows are the prompting baseline.",
        "",
        "| variant | seed | learning rate | steps | epochs | final train loss | base few-shot | base zero-shot | finetuned | most frequent answer | card warnings | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in records:
        s = r["scores"]
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['learning_rate']:g} | {r['steps']:g} | {r['epochs']:g} | {r['final_train_loss']:.3f} | "
            f"{s.get('base_few-shot', float('nan')):.1f} | {s.get('base_zero-shot', float('nan')):.1f} | "
            f"{s['finetuned_zero-shot']:.1f} | {r['top_answer']} ({r['top_share']:.0f}%) | {r['warnings']} | {r['seconds']:.0f} |"
        )
    commands = sorted({r.get("command", settings["command"]) for r in records})
    lines += ["", "The final train loss is the card's, rounded to 4 places. Seconds are each run's wall time, evaluations included, "
              "with other work sharing the 2 cores (see the load averages in the JSON): no speed measurement."]
    if settings.get("note"):
        lines += ["", settings["note"]]
    lines += ["", "Commands (each adds its records to recipe_defaults.partial.jsonl): " + "; ".join(f"`{c}`" for c in commands) + ".",
              f"Machine at the last call: {json.dumps(settings['machine'])}; each record keeps the 1-minute load average before its run."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--note", default=None, help="a sentence printed with the table (how the records were made)")
    args = parser.parse_args()
    from tests.sft_helpers import save_task_dataset

    from selfguide.task import Example, Task

    done = {r["variant"] for r in read_records(PARTIAL) if r["seed"] == args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        rows = [json.loads(line) for line in ROWS.read_text().splitlines()]
        data = save_task_dataset(Task.load(TASK), Path(tmp) / "data", [Example(r["input"], r["output"]) for r in rows])
        for name in args.variants:
            if name not in done:
                append_record(PARTIAL, one_run(name, data, Path(tmp), args.seed))
    records = sorted(read_records(PARTIAL), key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))  # every call's
    settings = {"command": command_line(), "machine": machine(), "note": args.note}
    write_results("recipe_defaults", {"settings": settings, "records": records}, markdown(records, settings))


if __name__ == "__main__":
    main()
