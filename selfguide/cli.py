"""`selfguide` on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from .commands import add_datastore_parser, add_demo_parser, add_evaluate_parser, check_output_dir
from .errors import ConfigError, SelfGuideError
from .recipes.sft import make_parser as add_sft_parser


def _knob(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


# Knobs that have their own flag: a --set of one would clash with, or silently override, the flag.
_FLAGGED_KNOBS = {"task": "the TASK argument", "num_examples": "--num-examples", "seed": "--seed", "model": "--model",
                  "datastore": "--datastore", "base_url": "--base-url", "cache_dir": "--cache-dir",
                  "engine": "--engine", "prompt_format": "--prompt-format", "tokenizer": "--tokenizer",
                  "num_shards": "--num-shards", "ray_address": "--ray"}


def task_files(given: list[str]) -> list[Path]:
    """The task files named: each file as it is, each folder as the task files (.json, .yaml, .yml) in it."""
    from .task import TASK_FILE

    files: list[Path] = []
    for path in map(Path, given):
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".json", ".yaml", ".yml") and f.name != TASK_FILE)
        if not found:
            saved = path / TASK_FILE
            fix = (f"pass {saved}, the task spec `selfguide generate` saved there" if saved.is_file()
                   else "pass task files, or a folder that holds them")
            raise ConfigError(f"task: {path} is a folder with no task file (.json, .yaml, .yml) in it. Fix: {fix}")
        files += found
    return files


def generate_one(method: str, kwargs: dict, out: Path) -> tuple[int, str]:
    """One task's data: load_dataset's own build (so a later load_dataset with these arguments finds it in the
    cache), then the files of `out`. Returns the training rows and the filter report's summary."""
    from datasets import load_dataset_builder

    import selfguide  # noqa: F401  (registers the builders)

    from .report import filter_report
    from .task import Task, save_task

    builder = load_dataset_builder(method, **kwargs)
    try:
        builder.download_and_prepare()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the finished batches are kept in {builder.work_dir}; the same command continues from them") from None
    dataset = builder.as_dataset()
    dataset.save_to_disk(str(out / "dataset"))
    save_task(Task.load(kwargs["task"]), out)  # beside the dataset: what it was made for
    for split, ds in dataset.items():
        ds.to_json(str(out / f"{split}.jsonl"), lines=True, force_ascii=False)
    report = filter_report(dataset)
    (out / "filter_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return len(dataset["train"]), report.summary()


def generate(args: argparse.Namespace) -> int:
    from .student import check_model
    from .task import Task

    out = Path(args.output_dir)
    check_output_dir(out)
    files = task_files(args.task)
    tasks = [Task.load(f) for f in files]  # every spec checked before any model work
    names = [t.name for t in tasks]
    if len(set(names)) < len(names):
        raise ConfigError(f"task: two task files make the task {max(names, key=names.count)!r}. Fix: give each task its own name")

    knobs = dict(args.set)
    clash = sorted(knobs.keys() & _FLAGGED_KNOBS.keys())
    if clash:
        raise ConfigError("; ".join(f"--set {key}: has its own flag, {_FLAGGED_KNOBS[key]}" for key in clash) + ". Fix: use the flag instead")
    kwargs = dict(num_examples=args.num_examples, seed=args.seed, num_shards=args.num_shards, **knobs)
    if args.model:
        kwargs["model"] = args.model
    for knob in ("base_url", "engine", "prompt_format", "tokenizer"):
        if getattr(args, knob) is not None:
            kwargs[knob] = getattr(args, knob)
    if args.method == "rebase":
        if not args.datastore:
            raise ConfigError("--datastore: required with --method rebase. Fix: pass a folder made by `selfguide datastore` (or selfguide.rebase.build_datastore)")
        if args.num_shards > 1:
            raise ConfigError("--num-shards: shards SELF-GUIDE's synthesis; ReBase is not sharded. Fix: leave it out with --method rebase")
        kwargs.pop("num_shards")
        kwargs["datastore"] = str(Path(args.datastore).resolve())
    elif args.datastore:
        raise ConfigError("--datastore: only used by --method rebase. Fix: add --method rebase or drop it")
    if args.ray and args.num_shards > 1:
        kwargs["ray_address"] = args.ray  # the shards go to Ray too
    if args.ray and len(files) == 1 and args.num_shards == 1:
        raise ConfigError("--ray: one task in one shard leaves Ray nothing to spread. Fix: add --num-shards 2 (or more), or give several tasks")
    if args.cache_dir:
        kwargs["cache_dir"] = args.cache_dir
    if args.model and not args.base_url:  # a server's model is checked by the engine, on its first call
        check_model(args.model)

    # One task writes into --output-dir, as always; several write a folder each, named after the task.
    jobs = [(dict(kwargs, task=str(f.resolve())), out if len(files) == 1 and not Path(args.task[0]).is_dir() else out / t.name)
            for f, t in zip(files, tasks)]
    if args.ray and len(jobs) > 1:
        from .synthesis.shards import connect

        ray = connect(args.ray)
        remote = ray.remote(num_cpus=1)(generate_one).options(name="selfguide_generate")
        results = ray.get([remote.remote(args.method, job, folder) for job, folder in jobs])
    else:
        results = [generate_one(args.method, job, folder) for job, folder in jobs]
    for (job, folder), (rows, summary) in zip(jobs, results):
        print(f"\n{rows} training rows written to {folder}\n{summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfguide", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="synthesize a training set for a task")
    gen.add_argument("task", nargs="+", help="NI V2 task file, or a YAML/JSON spec {instruction, examples, labels?, type?}; "
                     "several, or a folder of them, make one dataset each, in a folder per task under --output-dir")
    gen.add_argument("--model", help="Hub id, local folder or .gguf file (default: the embedded Gemma 3 270M)")
    gen.add_argument("--num-examples", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--output-dir", required=True)
    gen.add_argument("--method", choices=["selfguide", "rebase"], default="selfguide", help="SELF-GUIDE (the student invents inputs) or ReBase (rewrite retrieved rows)")
    gen.add_argument("--datastore", help="ReBase: datastore folder made by `selfguide datastore`")
    gen.add_argument("--base-url", help="OpenAI-compatible server (vLLM, llama.cpp, TGI) that runs every model call; --model then names the served model")
    gen.add_argument("--engine", choices=["transformers", "llama.cpp"], help="in-process engine (default transformers; llama.cpp runs a .gguf through llama-cpp-python)")
    gen.add_argument("--prompt-format", choices=["auto", "chat", "document"], help="chat template or plain documents (default auto: chat when the student has a template)")
    gen.add_argument("--tokenizer", help="with --base-url: Hub id, folder or .gguf whose chat template the served model uses")
    gen.add_argument("--cache-dir", help="datasets cache directory (default: HF_DATASETS_CACHE; on a Ray cluster, one every node reaches)")
    gen.add_argument("--num-shards", type=int, default=1, help="SELF-GUIDE: deal each round's batches to this many shards, each with its own engine and journal")
    gen.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run the tasks (several) and shards (--num-shards) as Ray tasks: alone, Ray starts here (or joins $RAY_ADDRESS); "
                          "or the cluster at ADDRESS ('auto', 'host:6379', 'ray://host:10001')")
    gen.add_argument("--set", type=_knob, action="append", default=[], metavar="KEY=VALUE", help="any builder config knob, e.g. --set max_rounds=5")
    gen.set_defaults(func=generate)
    add_evaluate_parser(sub)
    add_datastore_parser(sub)
    add_demo_parser(sub)
    add_sft_parser(sub)
    return parser


def main(argv=None) -> int:
    """Every command; selfguide's own errors (bad input, each naming its field and fix) end as one `error:`
    line and exit 2, Ctrl-C as one `interrupted` line saying what is kept and exit 130."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "sft":  # the recipe's own parser reads its arguments
        args.recipe_argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except SelfGuideError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
