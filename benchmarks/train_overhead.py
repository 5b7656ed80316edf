"""What the recipe costs on top of a bare SFTTrainer: step time and peak memory, evaluation apart.

Both variants train the same model (loaded the recipe's way: 4-bit nf4 + LoRA by default), on the
same rows, with the same SFTConfig; the recipe variant is built by `recipes/sft.py`'s `build()`, so
it carries the task-evaluation and model-card callbacks. Each run is a fresh subprocess (peak memory
is per process), and the variants alternate so that load from other processes on a shared machine
falls on both. Step time is on_step_begin to on_step_end; peak memory is the resident high-water
mark within steps (CUDA: max allocated). Evaluation (the baseline, task evaluations, the Trainer's
own evaluation loss) is timed separately and left out of the ratio.

    python benchmarks/train_overhead.py                      # embedded student, QLoRA, 12 steps x 2 runs
    python benchmarks/train_overhead.py --model tiny/folder --steps 20

Writes benchmarks/results/train_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = ("bare", "recipe")


# -- inside a worker process ----------------------------------------------------------------------


def _read_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Linux lets a process reset its resident high-water mark, so each step's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(variant: str, recipe_argv: list[str], out: Path) -> None:
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from trl import get_peft_config

    from selfguide.builders.data import load_training_data, training_splits, with_training_prompts
    from selfguide.modeling import load_model
    from selfguide.recipes.arguments import fill_defaults, parse_args
    from selfguide.recipes.sft import build
    from selfguide.student import resolve_student
    from selfguide.task import Task

    data_args, training_args, model_args = parse_args(recipe_argv)
    cuda = torch.cuda.is_available()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.steps, self.peaks, self._t = [], [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            else:
                _reset_hwm()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.steps.append(time.perf_counter() - self._t)
            self.peaks.append(torch.cuda.max_memory_allocated() / 2**20 if cuda else (_read_hwm_kib() or 0) / 1024)

    class EvalClock(TrainerCallback):
        """Brackets the other callbacks' evaluation hooks: one instance first in the list, one last."""

        def __init__(self, shared: dict, start: bool):
            self.shared, self.start = shared, start

        def _tick(self):
            if self.start:
                self.shared["t"] = time.perf_counter()
            else:
                self.shared["total"] = self.shared.get("total", 0.0) + time.perf_counter() - self.shared["t"]

        def on_train_begin(self, *args, **kwargs):
            self._tick()

        def on_evaluate(self, *args, **kwargs):
            self._tick()

    if variant == "recipe":
        trainer = build(data_args, training_args, model_args).trainer
    else:
        student = resolve_student(model_args.model_name_or_path)
        task = Task.load(data_args.task)
        dataset, _, _ = load_training_data(data_args, task, student, model_args.model_name_or_path)
        train, test = with_training_prompts(*training_splits(dataset, data_args, task), task, data_args.train_prompt, training_args.seed)
        fill_defaults(training_args, model_args, train.num_rows)
        model, tokenizer, _ = load_model(model_args, student, training_args)
        trainer = SFTTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=test,
                             processing_class=tokenizer, peft_config=get_peft_config(model_args))

    clock, shared = StepClock(), {}
    handler = trainer.callback_handler
    handler.callbacks.insert(0, EvalClock(shared, start=True))
    handler.callbacks.append(EvalClock(shared, start=False))
    handler.callbacks.append(clock)
    start = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - start
    eval_loss_time = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history)
    out.write_text(json.dumps({
        "variant": variant,
        "step_s": clock.steps,
        "peak_mib": clock.peaks,
        "callback_eval_s": shared.get("total", 0.0),
        "eval_loss_s": eval_loss_time,
        "train_wall_s": train_wall,
        "device": "cuda" if cuda else "cpu",
    }))


# -- the driver ------------------------------------------------------------------------------------


def _dataset(task_path: Path, folder: Path, eval_rows: int) -> Path:
    """Training rows from the task's demonstrations (as many as a 64-row synthetic set), gold rows as test."""
    from datasets import Dataset, DatasetDict

    from selfguide import Task
    from selfguide.prompts import format_completion, training_prompt

    task = Task.load(task_path)

    def rows(examples):
        return Dataset.from_list([{"prompt": training_prompt(task, e.input), "completion": format_completion(e.output)} for e in examples])

    train = (task.examples * (64 // len(task.examples) + 1))[:64]
    DatasetDict({"train": rows(train), "test": rows(task.gold[:eval_rows])}).save_to_disk(str(folder))
    return folder


def _summary(runs: list[dict]) -> dict:
    steps = [s for r in runs for s in r["step_s"][1:]]  # the first step pays one-off setup
    return {
        "runs": len(runs),
        "steps_timed": len(steps),
        "step_s_mean": statistics.fmean(steps),
        "step_s_median": statistics.median(steps),
        "peak_mib": max(max(r["peak_mib"]) for r in runs),
        "callback_eval_s": statistics.fmean(r["callback_eval_s"] for r in runs),
        "eval_loss_s": statistics.fmean(r["eval_loss_s"] for r in runs),
        "train_wall_s": statistics.fmean(r["train_wall_s"] for r in runs),
    }


def _markdown(result: dict) -> str:
    bare, recipe = result["bare"], result["recipe"]
    s = result["settings"]
    lines = [
        "# Training overhead: recipe (with callbacks) vs bare SFTTrainer",
        "",
        f"{s['model']}, {s['finetuning']}, batch {s['batch_size']}, {s['threads']} CPU thread(s), {s['steps']} steps per run, {s['repeats']} runs per variant "
        f"(alternating), evaluation every {s['eval_steps']} steps on {s['eval_rows']} gold rows (loss, and in the recipe the task metric). Device: {result['machine']['device']}, "
        f"{result['machine']['cpus']} CPUs; load average {result['machine']['load_before']} before, {result['machine']['load_after']} after.",
        "",
        "| | bare SFTTrainer | recipe | ratio |",
        "|---|---:|---:|---:|",
        f"| step time, mean (s) | {bare['step_s_mean']:.3f} | {recipe['step_s_mean']:.3f} | {result['ratio_step_mean']:.3f} |",
        f"| step time, median (s) | {bare['step_s_median']:.3f} | {recipe['step_s_median']:.3f} | {result['ratio_step_median']:.3f} |",
        f"| peak memory in steps (MiB) | {bare['peak_mib']:.0f} | {recipe['peak_mib']:.0f} | {result['ratio_peak_mib']:.3f} |",
        "",
        "Evaluation, apart from the steps (mean per run):",
        "",
        "| | bare SFTTrainer | recipe |",
        "|---|---:|---:|",
        f"| evaluation loss (Trainer) (s) | {bare['eval_loss_s']:.1f} | {recipe['eval_loss_s']:.1f} |",
        f"| task evaluation callbacks: baseline + generations (s) | {bare['callback_eval_s']:.1f} | {recipe['callback_eval_s']:.1f} |",
        f"| whole train() call (s) | {bare['train_wall_s']:.1f} | {recipe['train_wall_s']:.1f} |",
        "",
        f"Target: step-time ratio <= 1.05. Measured: {result['ratio_step_median']:.3f} (median), {result['ratio_step_mean']:.3f} (mean).",
        "",
        "The recipe's steps include one thing the bare trainer lacks on a CPU: TRL's fused LM head projects only the "
        "completion positions (`project_completion_tokens_only`), where the bare SFTTrainer projects every prompt "
        "position too. A ratio below 1 is that saving; it grows with the prompt's share of the row.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="student (default: the embedded Gemma 3 270M)")
    parser.add_argument("--task", default=str(REPO / "selfguide" / "tasks" / "demo_support_tickets.yaml"))
    parser.add_argument("--finetuning", default="qlora", choices=["qlora", "lora", "full"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval_steps", type=int, default=6)
    parser.add_argument("--eval_rows", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads per run (OMP_NUM_THREADS). One by default: on a shared machine, OpenMP threads spinning "
        "at barriers turn other processes' load into noise far larger than the overhead measured",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "train_overhead"))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--worker_out", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    # A worker gets the recipe's arguments after "--", away from this script's own --task and --model.
    split = argv.index("--") if "--" in argv else len(argv)
    args, recipe_argv = parser.parse_args(argv[:split]), argv[split + 1 :]
    if args.worker:
        return worker(args.worker, recipe_argv, Path(args.worker_out))

    with tempfile.TemporaryDirectory() as tmp:
        data = _dataset(Path(args.task), Path(tmp) / "data", args.eval_rows)
        recipe_argv = [
            "--task", args.task, "--dataset_name", str(data), "--finetuning", args.finetuning,
            "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
            "--learning_rate", "2e-4", "--gradient_checkpointing", "false", "--logging_steps", "1",
            "--eval_strategy", "steps", "--eval_steps", str(args.eval_steps), "--max_eval_rows", str(args.eval_rows),
            "--save_strategy", "no", "--report_to", "none", "--seed", "0",
        ]
        if args.model:
            recipe_argv += ["--model_name_or_path", args.model]
        load_before = os.getloadavg()[0]
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for i in range(args.repeats):
            for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                out = Path(tmp) / f"{variant}-{i}.json"
                cmd = [sys.executable, __file__, "--worker", variant, "--worker_out", str(out), "--", *recipe_argv,
                       "--output_dir", str(Path(tmp) / f"run-{variant}-{i}")]
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if proc.returncode:
                    sys.exit(f"{variant} run {i + 1} failed:\n{proc.stderr[-3000:]}")
                runs[variant].append(json.loads(out.read_text()))
                print(f"{variant} run {i + 1}: median step {statistics.median(runs[variant][-1]['step_s'][1:]):.3f}s", flush=True)

    bare, recipe = _summary(runs["bare"]), _summary(runs["recipe"])
    result = {
        "settings": {"model": args.model or "embedded Gemma 3 270M", "finetuning": args.finetuning, "steps": args.steps, "threads": args.threads,
                     "eval_steps": args.eval_steps, "eval_rows": args.eval_rows, "batch_size": args.batch_size, "repeats": args.repeats},
        "machine": {"device": runs["bare"][0]["device"], "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)},
        "bare": bare,
        "recipe": recipe,
        "ratio_step_mean": recipe["step_s_mean"] / bare["step_s_mean"],
        "ratio_step_median": recipe["step_s_median"] / bare["step_s_median"],
        "ratio_peak_mib": recipe["peak_mib"] / bare["peak_mib"],
        "raw": runs,
        "command": shlex.join(["python", "benchmarks/train_overhead.py", *argv]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
