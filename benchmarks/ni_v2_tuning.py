"""Choose the training defaults on the tuning tasks' validation splits, as the SELF-GUIDE paper did.

Every (learning rate, steps, training prompt) setting finetunes on the same synthetic rows (the builder's cache makes that
one synthesis per task) and is scored on a seeded sample of the validation split; the prompting
baseline is scored once. The pick is the setting whose smallest gain over the baseline, across the
tasks, is largest. Resumable: each setting keeps its own partial file in the work dir.

    python benchmarks/ni_v2_tuning.py                                  # task036 and task1385
    python benchmarks/ni_v2_tuning.py --tasks task190 task1195 --settings 2e-4:8 5e-4:8 2e-4:16
    python benchmarks/ni_v2_tuning.py --settings 2e-4:16:zero-shot 2e-4:16:few-shot   # the recipe's --train_prompt
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile

import ni_v2
from common import SHARED_DATA, machine, markdown_table, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["task036", "task1385"], help="task numbers in ../shared/data/ni/tasks")
    p.add_argument("--settings", nargs="+", default=["2e-4:8", "2e-4:16", "5e-4:8"], metavar="LR:STEPS[:PROMPT]",
                   help="learning rate, QLoRA steps (batch 8) and training prompt (zero-shot, the default, or few-shot) "
                        "of each setting tried")
    p.add_argument("--eval-rows", type=int, default=40)
    p.add_argument("--num-examples", type=int, default=32)
    p.add_argument("--name", default="ni_v2_tuning", help="results file stem")
    args = p.parse_args()

    files = [str(next((SHARED_DATA / "ni" / "tasks").glob(f"{t}_*.json"))) for t in args.tasks]
    empty = tempfile.mkdtemp()  # only the named tasks, not the whole shared folder
    common = ["--split", "validation", "--eval-rows", str(args.eval_rows), "--num-examples", str(args.num_examples),
              "--tasks-dir", empty, *files]
    baseline, _ = ni_v2.run_all(ni_v2.parse_args(common + ["--methods", "baseline", "--name", "tuning_baseline"]))
    base = {r["task"]: r["score"] for r in baseline}
    settings, seconds = [], sum(r["seconds"] for r in baseline)
    for setting in args.settings:
        lr, steps, prompt = (setting.split(":") + ["zero-shot"])[:3]
        lr, steps = float(lr), int(steps)
        suffix = "" if prompt == "zero-shot" else f"_{prompt}"  # zero-shot runs keep the file names they had
        run_args = ni_v2.parse_args(common + ["--methods", "self_guide", "--learning-rate", str(lr), "--max-steps", str(steps),
                                              "--train-prompt", prompt, "--name", f"tuning_lr{lr}_steps{steps}{suffix}"])
        records, _ = ni_v2.run_all(run_args)
        seconds += sum(r["seconds"] for r in records)
        gains = {r["task"]: r["score"] - base[r["task"]] for r in records}
        settings.append({"learning_rate": lr, "max_steps": steps, "train_prompt": prompt, "scores": {r["task"]: r["score"] for r in records},
                         "gains": gains, "smallest_gain": min(gains.values()), "mean_gain": sum(gains.values()) / len(gains)})
    best = max(settings, key=lambda s: (s["smallest_gain"], s["mean_gain"]))
    tasks = list(base)
    rows = [[f"{s['learning_rate']:g}", s["max_steps"], s["train_prompt"], *[f"{s['scores'][t]:.1f} ({s['gains'][t]:+.1f})" for t in tasks],
             f"{s['smallest_gain']:+.1f}" + (" **pick**" if s is best else "")] for s in settings]
    rows.insert(0, ["prompted baseline", "-", "few-shot", *[f"{base[t]:.1f}" for t in tasks], "-"])
    md = "\n".join([
        "# Tuning the training defaults on NI V2 validation splits",
        "",
        f"Embedded student, {args.num_examples} SELF-GUIDE rows per task (one synthesis, reused by every setting), "
        f"QLoRA at batch 8, scored on {args.eval_rows} seeded rows of each task's `validation` split. "
        "Cells: score (gain over the prompted baseline). The pick maximises the smallest gain across tasks, "
        "then the mean gain.",
        "",
        markdown_table(["learning rate", "steps", "prompt", *[t.split("_")[0] for t in tasks], "smallest gain"], rows),
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/ni_v2_tuning.py', *sys.argv[1:]])}`; "
        f"time in the methods {seconds / 60:.1f} min (resumed parts included).",
    ])
    write_results(args.name, {"settings": vars(args), "baseline": base, "grid": settings, "pick": best,
                                   "machine": machine()}, md)


if __name__ == "__main__":
    main()
