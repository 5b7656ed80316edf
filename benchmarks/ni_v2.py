"""The SELF-GUIDE paper's protocol on Natural Instructions V2: the student prompted vs finetuned on its own data.

For every task it scores, on a seeded sample of the paper's own split (the same rows every run):
  baseline    the student prompted with the instruction and every demonstration (greedy)
  self_guide  load_dataset("selfguide", ...) then recipes/sft.py (QLoRA), the adapter scored with the prompt it was
              trained with (--train-prompt: zero-shot by default; few-shot puts every demonstration first)
  in_context  the same synthetic rows used as extra demonstrations instead of finetuning
  rebase      load_dataset("rebase", ...) on the shared datastore pool, finetuned the same way
and beside them the no-model references on the same rows: the majority label (classification) and
the input copied as the answer (generation), and, for classification, each model's share of the rows
given its most frequent answer (a model that answers one label everywhere scores like the reference).
Each finished (task, method) is appended to a JSONL file, so a stopped run continues where it stopped.

    python benchmarks/ni_v2.py                 # the 11 tasks of ../shared/data/ni/tasks, default settings
    python benchmarks/ni_v2.py --quick         # two tasks, small settings
    python benchmarks/ni_v2.py --jobs 1        # one process with every thread, instead of one per core
    python benchmarks/ni_v2.py path/to/taskNNN_x.json --methods baseline,self_guide
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from common import SHARED_DATA, append_record, machine, markdown_table, read_records, write_results

import selfguide  # noqa: F401  (registers the builders)
from selfguide import Task
from selfguide.task import task_name
from selfguide.builders.base import NoRowsError
from selfguide.evaluation import FEW_SHOT, generate, load_for_evaluation, score_model
from selfguide.metrics import metric_name, most_frequent_answer, task_score
from selfguide.prompts import format_prompt

METHODS = ("baseline", "self_guide", "in_context", "rebase")
HERE = Path(__file__).resolve().parent
# --quick: the generation and the classification task that cost least in the full runs of results/ni_v2.json
# with rows for every method (ReBase kept none on task738 or task190): 865 s and 729 s of the latest run's
# 192 method-minutes. task199 cost less (620 s), but its majority label alone scores 77.5, which leaves a
# quick check little room to show anything.
QUICK_TASKS = ("task036_", "task937_")
# Pool rows derived from the evaluation tasks' own sources (see the pool's SOURCE.md).
CONTAMINATED = ("ni/task20*", "ni/task1554*")
# Label meanings a NI task file states only in prose: task190's Definition asks for "the letters E, C, and N"
# for entailment, contradiction and neutral, the words its source datasets use.
NI_LABEL_ALIASES = {"task190_snli_classification": {"E": ["entailment"], "C": ["contradiction"], "N": ["neutral"]}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", nargs="*", help="extra NI task files, scored beside the shared ones")
    p.add_argument("--quick", action="store_true", help="two cheap tasks (QUICK_TASKS) and small settings, under 20 minutes")
    p.add_argument("--tasks-dir", default=str(SHARED_DATA / "ni" / "tasks"))
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--eval-rows", type=int, default=40)
    p.add_argument("--num-examples", type=int, default=24,
                   help="synthetic rows per task and method (24: 32 took 130.7 min for 11 tasks, over the 2-hour budget; "
                        "synthesis and ReBase's rewriting, which scale with it, were about half the method time)")
    p.add_argument("--max-steps", type=int, default=8,
                   help="QLoRA steps at batch 8 (8: as good as 16 on validation, results/ni_v2_tuning.md, at half the time)")
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--train-prompt", default="zero-shot", choices=["zero-shot", "few-shot"],
                   help="the recipe's --train_prompt: the finetuned model is trained and scored with this prompt "
                        "(few-shot won on validation, results/ni_v2_tuning.md, but its steps take about twice as long "
                        "on ANLI, and 11 tasks zero-shot already take 98 of the 120 budgeted minutes; see the README)")
    p.add_argument("--in-context-rows", type=int, default=4)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--synthesis-kwargs", default="{}", help="JSON of extra SELF-GUIDE knobs")
    p.add_argument("--model", default=None,
                   help="the student (Hub id, folder or .gguf; default the embedded one): prompted, finetuned and scored here")
    p.add_argument("--base-url", default=None,
                   help="OpenAI-compatible server serving the same student: every synthesis call (SELF-GUIDE's and ReBase's "
                        "rewrites) goes there; training and scoring stay in this process")
    p.add_argument("--served-model", default=None, help="with --base-url: the served model's name (default: the first it lists)")
    p.add_argument("--datastore-rows", type=int, default=300, help="pool rows kept per source dataset")
    p.add_argument("--label-aliases", default=json.dumps(NI_LABEL_ALIASES),
                   help="JSON {task name: {label: [aliases]}} written into those tasks' specs; '{}' for none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file stem (default ni_v2, or ni_v2_quick)")
    p.add_argument("--work-dir", default=str(HERE / ".ni_v2_work"))
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results/NAME.* from the finished records and run nothing; keeps the wall time and note recorded there")
    p.add_argument("--note", default="", help="a paragraph for the Markdown: how this run was made, when it took several calls")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes, one CPU thread each, each taking the next task nobody has taken (default: "
                        "up to 2, as ni_v2.md and ni_v2_quick.md were timed); 1 runs in this process")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only every N-th task starting at I, one CPU thread: a fixed split for processes started "
                        "by hand; they share the partial file, and a last run without --shard writes the table")
    p.add_argument("--queue", default=None, help=argparse.SUPPRESS)  # a --jobs worker: the folder of claimed tasks
    args = p.parse_args(argv)
    if args.quick:
        args.eval_rows, args.num_examples, args.max_steps = 30, 16, 6
    args.name = args.name or ("ni_v2_quick" if args.quick else "ni_v2")
    args.methods = [m.strip() for m in args.methods.split(",")]
    if args.shard:
        try:
            index, count = map(int, args.shard.split("/"))
            assert 0 <= index < count
        except (ValueError, AssertionError):
            p.error(f"--shard: expected I/N with 0 <= I < N, got {args.shard!r}")
        args.shard = (index, count)
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")
    if args.jobs < 1:
        p.error(f"--jobs: must be at least 1, got {args.jobs}")
    try:
        assert isinstance(json.loads(args.label_aliases), dict)
    except (ValueError, AssertionError):
        p.error(f"--label-aliases: expected a JSON object like {json.dumps(NI_LABEL_ALIASES)}, got {args.label_aliases!r}")
    return args


def task_files(args) -> list[Path]:
    files = sorted(Path(args.tasks_dir).glob("task*.json")) + [Path(t) for t in args.tasks]
    if args.quick:
        quick = [f for f in files if f.parent == Path(args.tasks_dir) and f.name.startswith(QUICK_TASKS)]
        files = quick + [Path(t) for t in args.tasks]
    if args.shard:
        index, count = args.shard
        files = files[index::count]
    return files


def split_rows(task: Task, split: str) -> list[dict]:
    """The task's rows in the paper's `split`, or its own instances for an extra task without one."""
    split_file = SHARED_DATA / "ni" / "splits" / split / f"{task.name.split('_')[0]}.jsonl"
    if not split_file.exists():
        return [{"input": g.input, "output": g.output} for g in task.gold]
    # The split names one answer per row; NI's instance of that row may accept several, and NI scores the best.
    answers = {(g.input, g.output): g.answers for g in task.gold}
    rows = [json.loads(line) for line in split_file.read_text().splitlines()]
    return [{"input": r["input_col"], "output": r["output_col"]}
            | ({"references": list(a)} if len(a := answers.get((r["input_col"], r["output_col"]), ())) > 1 else {})
            for r in rows]


def eval_task(path: Path, args, work: Path) -> tuple[Task, Path]:
    """The NI task with its gold rows replaced by a seeded sample of the paper's split, written as a spec."""
    task = Task.load(path)
    rows = split_rows(task, args.split)
    rows = random.Random(f"{args.seed}:{task.name}").sample(rows, min(args.eval_rows, len(rows)))
    spec = task.to_dict() | {"test": rows}
    if task_aliases(args, task.name):
        spec["label_aliases"] = task_aliases(args, task.name)
    if task.is_classification:
        spec["labels"] = sorted(set(task.labels) | {r["output"] for r in rows})
    spec_path = work / "tasks" / args.split / f"{task.name}.json"  # a tuning run beside a test run keeps its own rows
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    return Task.load(spec_path), spec_path


def references(task: Task) -> dict:
    if task.is_classification:
        refs = [g.output for g in task.gold]
        majority = Counter(refs).most_common(1)[0][0]
        return {"majority_label": task_score(task.type, [majority] * len(refs), refs, task.labels)}
    return {"copy_input": task_score(task.type, [g.input for g in task.gold], [g.answers for g in task.gold])}


def training_argv(spec: Path, out: Path, args) -> list[str]:
    """The recipe's arguments for one finetuning run, the data aside: every benchmark trains alike."""
    # max_length: task121's zero-shot prompts are 319 tokens, ANLI's few-shot ones up to about 560.
    return [
        "--task", str(spec), "--eval_baseline", "false",
        "--output_dir", str(out), "--max_steps", str(args.max_steps), "--learning_rate", str(args.learning_rate),
        "--per_device_train_batch_size", "8", "--max_length", "1024", "--warmup_steps", "2",
        "--logging_steps", "4", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
        "--gradient_checkpointing", "false", "--seed", str(args.seed), "--train_prompt", args.train_prompt,
    ]


def finetune(spec: Path, method: str, args, work: Path, extra: dict) -> tuple[float, list[str]]:
    from selfguide.recipes.sft import run

    argv = training_argv(spec, work / method / spec.stem, args) + (["--model_name_or_path", args.model] if args.model else []) + [
        "--synthesis_method", "selfguide" if method == "self_guide" else "rebase",
        "--num_examples", str(args.num_examples), "--synthesis_seed", str(args.seed),
        "--synthesis_kwargs", json.dumps(extra),
    ]
    score = next(s for s in run(argv).scores if s.model == "finetuned")
    return score.value, score.predictions


def in_context(task: Task, spec: Path, args, model, tokenizer) -> tuple[float, list[str]]:
    from datasets import load_dataset

    # The same arguments as the recipe's synthesis call, so this is a cache hit on the self_guide data.
    knobs = {"num_examples": args.num_examples, "seed": args.seed, **synthesis_knobs(args)}
    synthetic = load_dataset("selfguide", task=str(spec), **knobs)["train"]
    rng = random.Random(args.seed)
    picked = rng.sample(range(len(synthetic)), min(args.in_context_rows, len(synthetic)))
    extra = [selfguide.Example(synthetic[i]["input"], synthetic[i]["output"]) for i in picked]
    prompts = []
    for g in task.gold:
        shots = list(task.examples) + extra
        rng.shuffle(shots)
        prompts.append(format_prompt(task, g.input, shots))
    budget = 16 if task.is_classification else 96
    predictions = generate(model, tokenizer, prompts, budget)
    return task_score(task.type, predictions, [g.answers for g in task.gold], task.labels), predictions


def synthesis_knobs(args) -> dict:
    """--synthesis-kwargs, plus the server that runs the student's synthesis calls with --base-url."""
    knobs = json.loads(args.synthesis_kwargs)
    if args.base_url:
        knobs["base_url"] = args.base_url
        if args.served_model:
            knobs["model"] = args.served_model
    return knobs


def datastore_path(args, work: Path) -> str:
    from selfguide.rebase.datastore import build_datastore

    pool = SHARED_DATA / "datastore" / "pool.jsonl"
    target = work / f"datastore-{args.datastore_rows}"
    build_datastore(str(pool), target, max_rows_per_config=args.datastore_rows)
    return str(target)


def run_method(method, task, spec, args, work, base) -> tuple[float, list[str]]:
    """The method's score on the task's scored rows, and its answers to them."""
    if method == "baseline":
        score = score_model(*base, task, prompt=FEW_SHOT, model_label="base", seed=args.seed)
        return score.value, score.predictions
    if method == "in_context":
        return in_context(task, spec, args, *base)
    if method == "self_guide":
        return finetune(spec, method, args, work, synthesis_knobs(args))
    served = {k: v for k, v in synthesis_knobs(args).items() if k in ("base_url", "model")}
    return finetune(spec, method, args, work, {"datastore": datastore_path(args, work), "exclude_datasets": list(CONTAMINATED), **served})


def summarize(results: list[dict], args, wall_s: float, ran_on: dict) -> None:
    by_task: dict[str, dict] = {}
    no_rows = set()
    shares = {}
    for r in sorted(results, key=lambda r: r["task"]):
        t = by_task.setdefault(r["task"], {"type": r["type"], "metric": r["metric"], **r["references"]})
        if "answer_share" in r:
            shares[(r["task"], r["method"])] = r["answer_share"]
        if r["score"] is None:
            no_rows.add((r["task"], r["method"]))
        else:
            t[r["method"]] = r["score"]
    header = ["task", "type", "metric", "reference", *args.methods, "gain (best method - max(baseline, reference))"]
    rows, gains = [], {"classification": [], "generation": []}

    def cell(name, t, m):
        return f"{t[m]:.1f}" if m in t else "no rows" if (name, m) in no_rows else "-"

    for name, t in by_task.items():
        ref = t.get("majority_label", t.get("copy_input"))
        trained = [t[m] for m in ("self_guide", "rebase") if m in t]
        gain = (max(trained) - max(t.get("baseline", 0.0), ref)) if trained else None
        if gain is not None:
            gains[t["type"]].append(gain)
        rows.append([name, t["type"], t["metric"], f"{ref:.1f}", *[cell(name, t, m) for m in args.methods],
                     f"{gain:+.1f}" if gain is not None else "-"])
    means = []
    for kind in ("classification", "generation"):
        tasks = [t for t in by_task.values() if t["type"] == kind]
        if not tasks:
            continue
        ref_key = "majority_label" if kind == "classification" else "copy_input"
        cells = []
        for m in args.methods:
            have = [t[m] for t in tasks if m in t]
            # A mean over fewer tasks than the row's is not comparable with the others; say so.
            cells.append("-" if not have else f"{statistics.fmean(have):.1f}" + ("" if len(have) == len(tasks) else f" ({len(have)} of {len(tasks)})"))
        means.append([f"**mean {kind}** ({len(tasks)})", kind, metric_name(kind), f"{statistics.fmean(t[ref_key] for t in tasks):.1f}",
                      *cells, f"{statistics.fmean(gains[kind]):+.1f}" if gains[kind] else "-"])
    share_rows = [[name, *(f"{shares[(name, m)]:.0f}" if (name, m) in shares else "-" for m in args.methods)]
                  for name, t in by_task.items() if t["type"] == "classification"]
    settings = {k: v for k, v in vars(args).items()
                if k not in ("tasks_dir", "work_dir", "note", "report_only", "shard", "queue", "command")}
    defaults = vars(parse_args(["--quick"] if args.quick else []))
    changed = [k for k, v in settings.items() if k not in ("name", "jobs") and v != defaults[k]]
    md = "\n".join([
        f"# Natural Instructions V2: SELF-GUIDE protocol ({'quick' if args.quick else 'default'} settings"
        + (f", except {', '.join(changed)})" if changed else ")"),
        "",
        f"Student: embedded Gemma 3 270M base. {args.eval_rows} seeded rows of the paper's `{args.split}` split per task; "
        f"{args.num_examples} synthetic rows; QLoRA {args.max_steps} steps at lr {args.learning_rate}, trained and scored "
        f"with the {args.train_prompt} prompt. "
        "Reference: the majority label of the scored rows (classification, exact match) or the input copied as the "
        "answer (generation, ROUGE-L). A gain counts only over the better of the prompting baseline and the reference.",
        "",
        markdown_table(header, rows + means),
        "",
        *(["Share (%) of the scored rows given each model's most frequent answer (100: one answer for every input, "
           "which scores that label's share of the rows, as the majority-label reference does):", "",
           markdown_table(["task", *args.methods], share_rows), ""] if shares else []),
        f"Command: `{args.command}`. Wall time of the last call that ran "
        f"methods: {wall_s / 60:.1f} min ({args.jobs} worker process(es)). Time spent in the methods: "
        f"{sum(r['seconds'] for r in results) / 60:.1f} min in all (per record in the JSON, summed over workers and "
        "resumed calls). Settings: `" + json.dumps(settings) + "`",
        "",
        *([f"\"no rows\": the method kept no synthetic row to train on, so there is no model to score ({len(no_rows)} "
            "case(s); the filter report is in the JSON record's `no_rows`).", ""] if no_rows else []),
        *([args.note, ""] if args.note else []),
        f"![scores]({args.name}.png)",
    ])
    write_results(args.name, {"settings": settings, "command": args.command, "results": results, "wall_s": wall_s,
                              "note": args.note, "machine": ran_on}, md)
    plot(by_task, no_rows, args)


def plot(by_task: dict, no_rows: set, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_task)
    series = ["reference", *args.methods]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        # A method that did not run on a task gets no bar (NaN), never a bar of height 0 that reads as a score.
        values = [t.get("majority_label", t.get("copy_input")) if s == "reference" else t.get(s, float("nan")) for t in by_task.values()]
        xs = [x + i * width for x in range(len(names))]
        ax.bar(xs, values, width, label=s, color="lightgray" if s == "reference" else None)
        for x, name, v in zip(xs, names, values):
            if v != v:  # NaN: say why there is no bar, so it does not read as a score of 0
                ax.text(x, 1, "no rows" if (name, s) in no_rows else "not run", rotation=90, fontsize=6, ha="center", va="bottom")
            elif v == 0:  # a real score of 0 has no visible bar either
                ax.text(x, 1, "0", fontsize=6, ha="center", va="bottom")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], [n.split("_")[0] for n in names], rotation=45)
    ax.set_ylabel("exact match / ROUGE-L")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "results" / f"{args.name}.png", dpi=120)


# What a record's score depends on; a record made with other values is not reused.
RESULT_SETTINGS = ("split", "eval_rows", "num_examples", "max_steps", "learning_rate", "train_prompt", "in_context_rows",
                   "synthesis_kwargs", "datastore_rows", "seed")


def task_aliases(args, task_name: str) -> dict:
    return json.loads(args.label_aliases).get(task_name, {})


def result_settings(args, task_name: str) -> dict:
    """A task's aliases count only for its own records: adding them for one task reruns that task alone."""
    aliases = task_aliases(args, task_name)
    # The student and its server count only when given, so the records of earlier runs (the embedded student,
    # in process) still match their settings.
    student = {k: getattr(args, k) for k in ("model", "base_url", "served_model") if getattr(args, k)}
    return {k: getattr(args, k) for k in RESULT_SETTINGS} | student | ({"label_aliases": aliases} if aliases else {})


def partial_records(args) -> list[dict]:
    """The run's finished records of these tasks and methods, made with these settings; others stay in the file, unused."""
    progress = Path(args.work_dir) / f"{args.name}.partial.jsonl"
    records = read_records(progress)
    tasks = {task_name(path) for path in task_files(args)}  # the name Task.load gives each file, as its records carry
    mine = [r for r in records
            if r["task"] in tasks and r["method"] in args.methods and r.get("settings") == result_settings(args, r["task"])]
    if len(mine) < len(records):
        print(f"{progress}: {len(records) - len(mine)} record(s) made with other settings, or of tasks or methods not "
              "asked for, are left out; pass --name to keep each run apart", flush=True)
    return mine


def run_all(args) -> tuple[list[dict], float]:
    """Every (task, method) not yet in the run's partial file; returns all records and this call's seconds."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    progress = work / f"{args.name}.partial.jsonl"
    done = partial_records(args)
    finished = {(r["task"], r["method"]) for r in done}
    start, base = time.perf_counter(), None
    for path in task_files(args):
        if args.queue and not claim(Path(args.queue), task_name(path)):
            continue
        task, spec = eval_task(path, args, work)
        for method in args.methods:
            if (task.name, method) in finished:
                continue
            if method in ("baseline", "in_context") and base is None:
                base = load_for_evaluation(args.model)
            t0 = time.perf_counter()
            try:
                (score, predictions), failure = run_method(method, task, spec, args, work, base), None
            except NoRowsError as e:
                # A method that leaves no row to train on is a result, not a crash: recorded, and the other tasks still run.
                (score, predictions), failure = (None, None), str(e)
            record = {"task": task.name, "type": task.type, "metric": metric_name(task.type), "method": method,
                      "score": score, "references": references(task), "seconds": time.perf_counter() - t0,
                      "settings": result_settings(args, task.name)}
            if predictions and task.is_classification:
                record["answer_share"] = most_frequent_answer(predictions, task.labels)[1]
            if predictions:
                record["predictions"] = predictions  # in the scored rows' order, so a metric change can re-score them
            if failure:
                record["no_rows"] = failure
            print(json.dumps(record), flush=True)
            append_record(progress, record)
            done.append(record)
    return done, time.perf_counter() - start


def claim(queue: Path, task: str) -> bool:
    """Whether this worker takes the task: the first to create its claim file does, so no two run it."""
    try:
        os.close(os.open(queue / task, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def run_jobs(args, argv: list[str]) -> tuple[list[dict], float]:
    """`run_all` over `args.jobs` worker processes that each take the next unclaimed task, then every record of the run.

    Taking tasks as workers free up, rather than every N-th task, keeps one slow task from holding a worker
    while the other idles: the tasks' costs differ by 4.3x (results/ni_v2.json).
    """
    start = time.perf_counter()
    work = Path(args.work_dir)
    queue = work / f"{args.name}.queue"
    shutil.rmtree(queue, ignore_errors=True)  # claims of a stopped call; its finished records are in the partial file
    queue.mkdir(parents=True)
    if "rebase" in args.methods:
        # Built here with every core: in a worker it gets one thread while the other workers wait on its lock.
        datastore_path(args, work)
    workers = []
    for i in range(args.jobs):
        log = work / f"{args.name}.worker{i}.log"
        print(f"worker {i + 1}/{args.jobs}: log in {log}", flush=True)
        with log.open("a") as f:
            cmd = [sys.executable, __file__, *argv, "--queue", str(queue)]
            workers.append((log, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)))
    failed = [log for log, proc in workers if proc.wait()]
    if failed:
        # What the others finished stays in the partial file; a rerun does only what is missing.
        sys.exit(f"{len(failed)} worker(s) failed; see {', '.join(map(str, failed))}. Rerun the same command to resume")
    return partial_records(args), time.perf_counter() - start


def recorded_run(name: str) -> dict:
    """For --report-only: the table's JSON, whose wall time, machine and note say how its records were made."""
    previous = HERE / "results" / f"{name}.json"
    if not previous.exists():
        sys.exit(f"--report-only: {previous} does not exist, so there is no run's wall time to report; run without it")
    return json.loads(previous.read_text())


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    worker = bool(args.shard or args.queue)  # runs its part of the tasks; the table is written by another call
    if worker:
        import torch

        torch.set_num_threads(1)
    if args.report_only:
        # Rewriting the table from the records must not erase how they were made.
        recorded = recorded_run(args.name)
        done, seconds, ran_on = partial_records(args), recorded["wall_s"], recorded["machine"]
        args.note = args.note or recorded.get("note", "")
        # Tables written before the command was recorded were made by the plain call.
        args.command = recorded.get("command", "python benchmarks/ni_v2.py" + (" --quick" if args.quick else ""))
    else:
        args.command = shlex.join(["python", "benchmarks/ni_v2.py", *argv])
        if args.jobs > 1 and not worker:
            (done, seconds), ran_on = run_jobs(args, argv), machine()
        else:
            (done, seconds), ran_on = run_all(args), machine()
    if worker:
        return
    if not done:
        sys.exit(f"no finished records with these settings under {args.work_dir}: nothing to report")
    summarize(done, args, seconds, ran_on)


if __name__ == "__main__":
    main()
