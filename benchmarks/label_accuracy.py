"""How well can the student label its own classification data? Its labellers scored on gold rows.

SELF-GUIDE trains the student on labels the student gives its own inputs, so a finetuned classifier
can hardly beat the labels it learned from. Synthetic inputs have no gold label, but the paper's
`validation` split has: this scores every labelling strategy of stage (c) on a seeded sample of it,
beside the majority label of the same rows (a constant answer's score).

  greedy      one greedy answer to the annotation prompt (the prompting baseline with shuffled demos)
  vote        5 samples at temperature 0.2, top_k 40, majority share >= 0.3 (the paper's stage (c));
              an input without a majority counts as wrong, its coverage is reported beside it
  likelihood  the most likely label string
  calibrated  the same after contextual calibration (the builder's default for classification)
  ensemble    calibrated label log-probabilities averaged over 4 demonstration orders per input
  rank        calibrated scores assigned into equal classes by margin (`balance="rank"`, as the
              builder does on its pool)
  channel     the label under which stage (a)'s prompt makes the input most likely, log p(input | label)
              (`label_strategy="channel"`): whether the student writing inputs for a label knows the
              class better than the student answering

With `--verbalize`, a task with label aliases (`ni_v2.NI_LABEL_ALIASES`: task190's E, C, N) is labelled
with its labels' first alias in their place, in the demonstrations and as the scored strings
("entailment" for E), and the answers are read back as labels: whether a small student labels better
with words than with letters.

    python benchmarks/label_accuracy.py                      # the 7 classification tasks, 40 rows each
    python benchmarks/label_accuracy.py --tasks task190 --rows 40
    python benchmarks/label_accuracy.py --model qwen.gguf --engine llama.cpp --prompt-format chat   # any student

`--model` takes any student (Hub id, folder, .gguf; default the embedded one), `--engine` the in-process engine
that runs it, and `--prompt-format` whether its prompts are documents or user turns of its chat template
(auto: chat when the student has a template), as the builder's knobs of the same names.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from common import SHARED_DATA, command_line, machine, markdown_table, write_results
from ni_v2 import NI_LABEL_ALIASES, split_rows

from selfguide import Task
from selfguide.task import Example
from selfguide.engines import SamplingParams, TransformersEngine
from selfguide.engines.llamacpp_engine import LlamaCppEngine
from selfguide.prompt_format import resolve_prompt_format
from selfguide.prompts import DOCUMENT, PromptStyle
from selfguide.metrics import normalize_label
from selfguide.prompts import OUTPUT_STOP
from selfguide.metrics import extract_label
from selfguide.synthesis.class_balance import assign_by_rank
from selfguide.synthesis.label_calibration import label_by_channel, label_by_likelihood
from selfguide.synthesis.output_annotation import sample_outputs, vote


def seeded_rows(task: Task, split: str, rows: int, seed: int) -> list[dict]:
    pool = split_rows(task, split)
    return random.Random(f"{seed}:{task.name}:labels").sample(pool, min(rows, len(pool)))


def sampled_labels(engine, task: Task, inputs: list[str], seed: int, style: PromptStyle, n: int, temperature: float) -> list:
    params = SamplingParams(temperature=temperature, top_k=40 if temperature else 0, n=n, max_new_tokens=8,
                            stop=OUTPUT_STOP, seed=seed)
    samples = sample_outputs(engine, task, inputs, params, style)
    return [vote(s, 0.3, lambda text: extract_label(text, task.labels)).output for s in samples]


def likelihood_labels(engine, task: Task, inputs: list[str], seed: int, style: PromptStyle, calibrate: bool = True) -> list[str]:
    return [a.output for a in label_by_likelihood(engine, task, inputs, seed, calibrate=calibrate, style=style)]


def ensemble_labels(engine, task: Task, inputs: list[str], seed: int, style: PromptStyle) -> list[str]:
    # Each input under 4 orders: one single-order call per seed, so every input sees every order.
    orders = [label_by_likelihood(engine, task, inputs, seed + k, num_orders=1, style=style) for k in range(4)]
    k = len(task.labels)
    mean = [[sum(o[i].label_scores[c] for o in orders) for c in range(k)] for i in range(len(inputs))]
    return [task.labels[max(range(k), key=m.__getitem__)] for m in mean]


def rank_labels(engine, task: Task, inputs: list[str], seed: int, style: PromptStyle) -> list:
    calibrated = label_by_likelihood(engine, task, inputs, seed, style=style)
    rows = [{"index": i, "label_scores": a.label_scores} for i, a in enumerate(calibrated)]
    by_index = {r["index"]: r["output"] for r in assign_by_rank(rows, task.labels, len(inputs))}
    return [by_index.get(i) for i in range(len(inputs))]


def channel_labels(engine, task: Task, inputs: list[str], seed: int, style: PromptStyle) -> list[str]:
    return [a.output for a in label_by_channel(engine, task, inputs, seed, style=style)]


LABELLERS = {
    "greedy": lambda *a: sampled_labels(*a, n=1, temperature=0.0),
    "vote": lambda *a: sampled_labels(*a, n=5, temperature=0.2),
    "likelihood": lambda *a: likelihood_labels(*a, calibrate=False),
    "calibrated": likelihood_labels,
    "ensemble": ensemble_labels,
    "rank": rank_labels,
    "channel": channel_labels,
}


def verbalized(task: Task) -> Task:
    """The task with each label replaced by its first alias, in the label set and the demonstrations."""
    word = {label: names[0] for label, names in task.label_aliases.items()}
    return Task(name=task.name, instruction=task.instruction, type=task.type, labels=[word[label] for label in task.labels],
                examples=[Example(e.input, word[e.output]) for e in task.examples])


def accuracy(predicted: list, gold: list[str]) -> float:
    return 100 * sum(p is not None and normalize_label(p) == normalize_label(g) for p, g in zip(predicted, gold)) / len(gold)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["task1385", "task1386", "task190", "task199", "task200", "task738", "task937"],
                   help="task numbers in ../shared/data/ni/tasks")
    p.add_argument("--split", default="validation", choices=["validation", "test"])
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", nargs="+", default=list(LABELLERS), choices=list(LABELLERS))
    p.add_argument("--verbalize", action="store_true",
                   help="label tasks that have aliases (ni_v2.NI_LABEL_ALIASES) with the alias words, read back as labels")
    p.add_argument("--model", default=None, help="the student: Hub id, folder or .gguf (default: the embedded one)")
    p.add_argument("--engine", default="transformers", choices=["transformers", "llama.cpp"])
    p.add_argument("--prompt-format", default="auto", choices=["auto", "chat", "document"])
    p.add_argument("--name", default="label_accuracy")
    p.add_argument("--note", default="", help="a paragraph for the Markdown: how the records were made")
    args = p.parse_args()

    start = time.perf_counter()
    engine = (LlamaCppEngine.from_pretrained(args.model, seed=args.seed) if args.engine == "llama.cpp"
              else TransformersEngine.from_pretrained(args.model))
    prompt_format = resolve_prompt_format(args.prompt_format, args.model)
    style = PromptStyle(engine.render_chat) if prompt_format == "chat" else DOCUMENT
    results = []
    for number in args.tasks:
        task = Task.load(next((SHARED_DATA / "ni" / "tasks").glob(f"{number}_*.json")))
        rows = seeded_rows(task, args.split, args.rows, args.seed)
        gold = [r["output"] for r in rows]
        t0 = time.perf_counter()
        inputs = [r["input"] for r in rows]
        aliases = NI_LABEL_ALIASES.get(task.name) if args.verbalize else None
        if aliases:
            task.label_aliases = aliases
            task.validate()
            words = verbalized(task)
            predicted = {k: [a and task.label_of(a) for a in LABELLERS[k](engine, words, inputs, args.seed, style)] for k in args.strategies}
        else:
            predicted = {k: LABELLERS[k](engine, task, inputs, args.seed, style) for k in args.strategies}
        record = {
            "task": task.name, "rows": len(rows), "labels": list(task.labels), "verbalized": bool(aliases),
            "majority": 100 * Counter(gold).most_common(1)[0][1] / len(gold),
            "accuracy": {k: accuracy(v, gold) for k, v in predicted.items()},
            "vote_coverage": 100 * sum(v is not None for v in predicted["vote"]) / len(rows) if "vote" in predicted else None,
            "top_predicted_share": {k: 100 * Counter(v).most_common(1)[0][1] / len(rows) for k, v in predicted.items()},
            "seconds": time.perf_counter() - t0,
        }
        results.append(record)
        print(json.dumps(record), flush=True)

    header = ["task", "labels", "majority label", *args.strategies, "best - majority"]
    table = []
    for r in results:
        acc = r["accuracy"]
        best = max(acc.values())
        table.append([r["task"], len(r["labels"]), f"{r['majority']:.1f}",
                      *(f"{acc[k]:.1f}" + (f" ({r['vote_coverage']:.0f}% kept)" if k == "vote" else "") for k in args.strategies),
                      f"{best - r['majority']:+.1f}"])
    mean = {k: sum(r["accuracy"][k] for r in results) / len(results) for k in args.strategies}
    mean_majority = sum(r["majority"] for r in results) / len(results)
    table.append([f"**mean** ({len(results)})", "", f"{mean_majority:.1f}", *(f"{mean[k]:.1f}" for k in args.strategies),
                  f"{max(mean.values()) - mean_majority:+.1f}"])
    shares = [[r["task"], *(f"{r['top_predicted_share'][k]:.0f}" for k in args.strategies)] for r in results]
    wall = time.perf_counter() - start
    md = (
        f"# Label accuracy of {'the embedded student' if not args.model else Path(args.model).name}'s own labellers "
        f"({args.split} split, {prompt_format} prompts, {args.engine})\n\n"
        f"Exact match of each stage (c) labeller against the gold label on {args.rows} seeded rows per task "
        f"of the paper's `{args.split}` split, beside the majority label of the same rows. See the module "
        "docstring of `benchmarks/label_accuracy.py` for the strategies.\n\n"
        + markdown_table(header, table)
        + "\n\nShare (%) of the rows given the most frequent predicted label (100 = one label for every row):\n\n"
        + markdown_table(["task", *args.strategies], shares)
        + f"\n\nCommand: `{command_line()}`; wall time {wall / 60:.1f} min.\n"
        + (f"\n{args.note}\n" if args.note else "")
    )
    write_results(args.name, {"settings": vars(args), "prompt_format": prompt_format, "command": command_line(), "results": results, "wall_s": wall, "machine": machine()}, md)


if __name__ == "__main__":
    main()
