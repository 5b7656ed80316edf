"""What finetuning the student can make of perfect data: the recipe trained on the task's own gold rows.

SELF-GUIDE and ReBase hand the recipe synthetic rows, so their finetuned score is bounded by what the
same training makes of flawless ones. This trains the recipe as `ni_v2.py` does (QLoRA, batch 8, the
zero-shot prompt) on gold rows of the task itself, in equal classes (as SELF-GUIDE balances its own),
and scores the adapter on `ni_v2.py`'s seeded test rows, beside their majority label and the share of
the rows given the most frequent prediction (100: one answer for every input). The paper's test and
validation splits cover every instance of a task, so the gold rows are instances of neither the
scored rows nor the validation split: the test split's unscored rest.

    python benchmarks/gold_ceiling.py --tasks task937 task199 --settings 24:8 192:48
    OMP_NUM_THREADS=1 python benchmarks/gold_ceiling.py --tasks task937 &   # tasks split over processes:
    OMP_NUM_THREADS=1 python benchmarks/gold_ceiling.py --tasks task199 &   # they share the records file,
    python benchmarks/gold_ceiling.py --tasks task937 task199               # and a last call writes the table
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

import ni_v2
from common import RESULTS, SHARED_DATA, append_record, command_line, machine, markdown_table, read_records, write_results

from selfguide import Task
from selfguide.metrics import answer_counts, most_frequent_answer
from selfguide.prompts import format_completion, training_prompt


def gold_training_rows(task: Task, scored: Task, size: int, seed: int) -> list[dict]:
    """`size` gold rows of `task` in equal classes: no input of the `scored` rows or the validation split."""
    held_out = {g.input for g in scored.gold} | {r["input"] for r in ni_v2.split_rows(task, "validation")}
    by_label: dict[str, list] = {}
    for g in task.gold:
        if g.input not in held_out:
            by_label.setdefault(g.output, []).append(g)
    rng = random.Random(f"{seed}:{task.name}:gold")
    share = -(-size // len(by_label))
    picked = [g for label in sorted(by_label) for g in rng.sample(by_label[label], min(share, len(by_label[label])))]
    rng.shuffle(picked)
    return [{"input": g.input, "output": g.output} for g in picked[:size]]


def train_and_score(path: Path, rows: int, steps: int, args, work: Path) -> dict:
    from datasets import Dataset, DatasetDict

    from selfguide.recipes.sft import run

    run_args = argparse.Namespace(**vars(args), max_steps=steps)
    task, spec = ni_v2.eval_task(path, run_args, work)
    source = Task.load(path)
    train = gold_training_rows(source, task, rows, args.seed)
    data = work / "data" / f"{task.name}-{rows}"
    DatasetDict({"train": Dataset.from_list([
        {**r, "prompt": training_prompt(task, r["input"]), "completion": format_completion(r["output"])} for r in train
    ])}).save_to_disk(str(data))
    start = time.perf_counter()
    adapter = work / "adapters" / f"{task.name}-{rows}-{steps}"
    result = run(ni_v2.training_argv(spec, adapter, run_args) + ["--dataset_name", str(data)])
    score = next(s for s in result.scores if s.model == "finetuned")
    return {
        "task": task.name, "rows": rows, "steps": steps, "settings": record_settings(args), "score": score.value,
        "majority": ni_v2.references(task)["majority_label"],
        "train_labels": dict(Counter(r["output"] for r in train)),
        "predicted": dict(answer_counts(score.predictions, task.labels)),
        "top_predicted_share": most_frequent_answer(score.predictions, task.labels)[1],
        "seconds": time.perf_counter() - start,
    }


# What a record's score depends on besides (task, rows, steps); a record made with other values is not reused.
RECORD_SETTINGS = ("split", "eval_rows", "learning_rate", "train_prompt", "seed")


def record_settings(args) -> dict:
    return {k: getattr(args, k) for k in RECORD_SETTINGS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["task937", "task199", "task738"], help="task numbers in ../shared/data/ni/tasks")
    p.add_argument("--settings", nargs="+", default=["24:8", "192:48"], help="ROWS:STEPS, gold training rows and QLoRA steps")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--eval-rows", type=int, default=40)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--train-prompt", default="zero-shot", choices=["zero-shot", "few-shot"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="gold_ceiling")
    p.add_argument("--note", default="", help="a paragraph for the Markdown: how the records were made")
    p.add_argument("--work-dir", default=str(Path(__file__).resolve().parent / ".ni_v2_work" / "gold_ceiling"))
    args = p.parse_args()
    settings = [tuple(map(int, s.split(":"))) for s in args.settings]
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    records_file = work / f"{args.name}.partial.jsonl"

    def done() -> dict:
        mine = record_settings(args)
        return {(r["task"], r["rows"], r["steps"]): r for r in read_records(records_file) if r["settings"] == mine}

    start, trained = time.perf_counter(), False
    paths = [next((SHARED_DATA / "ni" / "tasks").glob(f"{n}_*.json")) for n in args.tasks]
    for path in paths:
        for rows, steps in settings:
            if (path.stem, rows, steps) in done():
                continue
            record = train_and_score(path, rows, steps, args, work)
            append_record(records_file, record)
            print(json.dumps(record), flush=True)
            trained = True
    previous = RESULTS / f"{args.name}.json"
    if not trained and previous.exists():
        # Only rewriting the table from finished records: keep how they were made, not this call's moment.
        recorded = json.loads(previous.read_text())
        args.note = args.note or recorded["settings"].get("note", "")
        start_wall, ran_on = recorded["wall_s"], recorded["machine"]
    else:
        start_wall, ran_on = None, machine()

    records = done()
    table = []
    for path in paths:
        cells = [records[(path.stem, r, s)] for r, s in settings]
        table.append([path.stem, f"{cells[0]['majority']:.1f}",
                      *(f"{c['score']:.1f} ({c['top_predicted_share']:.0f}%)" for c in cells)])
    header = ["task", "majority label", *(f"{r} rows, {s} steps" for r, s in settings)]
    method_s = sum(records[(p.stem, r, s)]["seconds"] for p in paths for r, s in settings)
    command = command_line()
    md = (
        "# The finetuning ceiling: the embedded student trained on gold rows of the task itself\n\n"
        f"QLoRA at batch 8 as `ni_v2.py` trains, here at lr {args.learning_rate:g} with the {args.train_prompt} prompt "
        "(`ni_v2.py`: 0.0002, zero-shot); gold rows "
        "from the NI task file in equal classes, none from the validation split; scored on "
        f"`ni_v2.py`'s {args.eval_rows} seeded `{args.split}` rows, whose inputs no training row shares. Cells: exact match (share of the rows given the "
        "most frequent prediction).\n\n"
        + markdown_table(header, table)
        + f"\n\nCommand: `{command}`; time in training and scoring {method_s / 60:.1f} min (records kept in "
        f"`{records_file.name}`, so split or resumed calls add up).\n"
        + (f"\n{args.note}\n" if args.note else "")
    )
    wall_s = start_wall if start_wall is not None else time.perf_counter() - start
    write_results(args.name, {"settings": vars(args), "command": command, "results": list(records.values()),
                              "wall_s": wall_s, "machine": ran_on}, md)


if __name__ == "__main__":
    main()
