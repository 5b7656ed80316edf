"""Re-score the committed NI V2 tables' generation rows with the current ROUGE-L: rouge_score as Natural Instructions
computes it (Porter stemmer), each row scored against every answer its NI instance lists, keeping the best.

The tables were made with the earlier hand-written ROUGE-L (no stemmer, the split's first answer only). Their records
keep each method's score but not its answers, so only the no-model reference (the input copied as the answer) can be
re-scored from the data alone; the methods' columns need the methods rerun. The tables stay as they were made; this
writes results/ni_v2_rescored.{json,md} beside them.

    python benchmarks/rescore_rouge.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import RESULTS, markdown_table, write_results

import ni_v2
from selfguide import Task
from selfguide.metrics import task_score


OLD_METRIC = "185e346^"  # the last commit with the hand-written ROUGE-L


def tables(with_answers: bool) -> list[tuple[str, dict]]:
    """The NI V2 tables with generation records, by name: those made with the old metric (records without the
    methods' answers) or, `with_answers`, those whose records keep every method's answers."""
    found = [(path.stem, json.loads(path.read_text())) for path in sorted(RESULTS.glob("ni_v2*.json"))]
    gen = [(name, t) for name, t in found if any(r["type"] == "generation" for r in t.get("results", []))]
    return [(name, t) for name, t in gen if all("predictions" in r for r in t["results"]) == with_answers]


def old_rouge_l():
    """The hand-written ROUGE-L the old tables were scored with, read from git history rather than kept as a copy."""
    source = subprocess.run(["git", "show", f"{OLD_METRIC}:selfguide/metrics.py"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent).stdout
    namespace: dict = {"__name__": "old_metrics"}
    exec(source.replace("from .errors import ConfigError", "ConfigError = ValueError"), namespace)
    return namespace["rouge_l"]


def scored_rows(task_name: str, settings: dict, work: Path) -> tuple[list[str], list[str], list[tuple[str, ...]]]:
    """The inputs, first answers and every answer of the rows the table scored: ni_v2's seeded sample of the split,
    matched to the task file's instances by input and first answer."""
    args = ni_v2.parse_args(["--quick"] if settings["quick"] else [])
    args.split, args.eval_rows, args.seed = settings["split"], settings["eval_rows"], settings["seed"]
    path = Path(args.tasks_dir) / f"{task_name}.json"
    sample, _ = ni_v2.eval_task(path, args, work)
    answers = {(g.input, g.output): g.answers for g in Task.load(path).gold}
    missing = [g.input for g in sample.gold if (g.input, g.output) not in answers]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} scored row(s) match no instance, e.g. {missing[0][:80]!r}")
    return [g.input for g in sample.gold], [g.output for g in sample.gold], [answers[(g.input, g.output)] for g in sample.gold]


def methods_rows(work: Path) -> list[dict]:
    """Each method's recorded answers on a new table's generation rows, under the old metric and the new one."""
    old = old_rouge_l()
    rows = []
    for name, table in tables(with_answers=True):
        for r in table["results"]:
            if r["type"] != "generation":
                continue
            inputs, first, every = scored_rows(r["task"], table["settings"], work)
            answers = r["predictions"]
            rows.append({
                "table": name, "task": r["task"], "method": r["method"], "recorded": r["score"],
                "old": 100 * statistics.fmean(old(a, f) for a, f in zip(answers, first)),
                "first_answer": task_score("generation", answers, first), "every_answer": task_score("generation", answers, every),
            })
            assert abs(rows[-1]["every_answer"] - r["score"]) < 1e-6, (name, r["task"], r["method"])  # the table's own score
    return rows


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        methods = methods_rows(Path(work))
        for name, table in tables(with_answers=False):
            recorded = {r["task"]: r["references"]["copy_input"] for r in table["results"] if r["type"] == "generation"}
            for task_name, old in sorted(recorded.items()):
                inputs, first, every = scored_rows(task_name, table["settings"], Path(work))
                rows.append({
                    "table": name, "task": task_name, "rows": len(inputs), "rows_with_several_answers": sum(len(a) > 1 for a in every),
                    "recorded": old, "first_answer": task_score("generation", inputs, first), "every_answer": task_score("generation", inputs, every),
                })
    header = ["table", "task", "rows", "rows with several answers", "recorded (old ROUGE-L)", "new, first answer", "new, every answer"]
    cells = [[r["table"], r["task"], r["rows"], r["rows_with_several_answers"], *(f"{r[k]:.1f}" for k in ("recorded", "first_answer", "every_answer"))]
             for r in rows]
    for name in dict.fromkeys(r["table"] for r in rows):
        mine = [r for r in rows if r["table"] == name]
        if len(mine) > 1:
            cells.append([f"**{name} mean**", f"{len(mine)} tasks", "", "",
                          *(f"{statistics.fmean(r[k] for r in mine):.1f}" for k in ("recorded", "first_answer", "every_answer"))])
    md = "\n".join([
        "# NI V2 generation rows re-scored with rouge_score",
        "",
        "The reference column of the NI V2 tables (the input copied as the answer, ROUGE-L on the rows each table scored), "
        "as recorded with the earlier hand-written ROUGE-L (lowercase [a-z0-9] tokens, no stemmer, the split's first answer), "
        "and with the current one: rouge_score's rougeL F-measure with the Porter stemmer, as Natural Instructions' evaluation "
        "calls it, against the first answer only and against every answer the NI instance lists (the best of them, as NI scores). "
        "The old metric (selfguide/metrics.py before 185e346), run once by hand on these rows, gives every recorded value "
        "exactly, so they are the rows the tables scored.",
        "",
        markdown_table(header, cells),
        "",
        "The methods' columns (prompted, SELF-GUIDE, in context, ReBase) of these tables cannot be re-scored: their records "
        "keep the score, not the answers. `ni_v2_generation` reran the methods on the 4 generation tasks, its records "
        "keeping their answers: the table below scores those answers with both metrics.",
        "",
        "Command: `python benchmarks/rescore_rouge.py`.",
    ])
    if methods:
        by = {}
        for r in methods:
            by.setdefault((r["table"], r["method"]), []).append(r)
        cells = [[r["table"], r["task"], r["method"], *(f"{r[k]:.1f}" for k in ("old", "first_answer", "every_answer"))] for r in methods]
        cells += [[f"**{t} mean**", f"{len(rs)} tasks", m, *(f"{statistics.fmean(r[k] for r in rs):.1f}" for k in ("old", "first_answer", "every_answer"))]
                  for (t, m), rs in by.items() if len(rs) > 1]
        md += "\n\n" + "\n".join([
            "## The methods' answers, old metric and new, on the same answers",
            "",
            "Tables whose records keep every method's answers (made after 185e346): the same answers scored with the old "
            f"hand-written ROUGE-L (read from git at `{OLD_METRIC}`), and with rouge_score against the first answer and against "
            "every answer (the tables' own score). Only the metric differs between the columns.",
            "",
            markdown_table(["table", "task", "method", "old ROUGE-L", "new, first answer", "new, every answer"], cells),
        ])
    write_results("ni_v2_rescored", {"command": "python benchmarks/rescore_rouge.py", "rows": rows, "methods": methods}, md)


if __name__ == "__main__":
    main()
