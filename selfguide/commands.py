"""The `selfguide evaluate`, `datastore` and `demo` subcommands; cli.py attaches them to its parser."""

from __future__ import annotations

import argparse
import time
from importlib.resources import files
from pathlib import Path

from .errors import ConfigError
from .student import DTYPES, check_model

DEMO_TASK = "demo_support_tickets.yaml"


def demo_task_path() -> Path:
    return Path(str(files("selfguide") / "tasks" / DEMO_TASK))


def demo_config_path() -> Path:
    return Path(str(files("selfguide.recipes") / "configs" / "demo.yaml"))


# -- evaluate -------------------------------------------------------------------------------------


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score the prompting baseline, and an adapter, on a task's gold rows",
        description="Scores the base model with the few-shot prompt (the prompting baseline) and the zero-shot "
        "prompt, and with --adapter the finetuned model with its training prompt (--adapter-prompt): greedy decoding, "
        "the task's metric, the same code as the training callback.",
    )
    p.add_argument("--task", required=True, help="task spec: YAML/JSON, or a Natural Instructions task file")
    p.add_argument("--model", default=None, help="base model: Hub id, folder or .gguf (default: the adapter's base, else the embedded student)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder or Hub id to score as the finetuned model")
    p.add_argument("--adapter-prompt", default="zero-shot", choices=["zero-shot", "few-shot"],
                   help="prompt the adapter was trained with (the recipe's --train_prompt)")
    p.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                   help="load the base in 4-bit nf4 (default: as the adapter was trained, 4-bit when its model card says QLoRA)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N gold rows")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="weights of a full-precision base (auto: bf16/fp16 on a GPU, float32 on a CPU)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the scores, with each model's answers, to this JSON file")
    p.set_defaults(func=run_evaluate)
    return p


def check_output_dir(folder: Path, flag: str = "--output-dir") -> None:
    """Fail before any work when `folder` cannot be made a folder: it, or the nearest path above it that exists, is a file."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag}: {existing} is a file, not a folder. Fix: pass a folder (it is made if missing), or move the file")


def run_evaluate(args) -> int:
    import json

    from .evaluation import adapter_trained_in_4bit, evaluate_task, format_table
    from .task import Task

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: gold rows answered at once, must be 1 or more, got {args.batch_size}. Fix: pass e.g. --batch-size 16")
    task = Task.load(args.task)
    check_model(args.adapter, "--adapter", "adapter_config.json")
    scores = evaluate_task(
        task, args.model, args.adapter, load_in_4bit=args.load_in_4bit, limit=args.limit, batch_size=args.batch_size,
        dtype=args.dtype, adapter_prompt=args.adapter_prompt,
    )
    print(format_table(scores, task.labels))
    if args.load_in_4bit is None and args.adapter and adapter_trained_in_4bit(args.adapter):
        print("The base was loaded in 4-bit nf4, as the adapter's model card says QLoRA trained it "
              "(--no-load-in-4bit scores it in full precision).")
    if args.json_path:
        rows = [{"model": s.model, "prompt": s.prompt, "metric": s.metric, "value": s.value, "rows": s.num_rows,
                 "predictions": s.predictions} for s in scores]
        Path(args.json_path).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


# -- datastore ------------------------------------------------------------------------------------


def add_datastore_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "datastore",
        help="build a ReBase datastore from Hub datasets and local files",
        description="Reads every source (Hub ids, JSONL/CSV/Parquet files), keeps each row with its provenance, "
        "embeds the rows and saves them with a FAISS index: the --datastore of `selfguide generate --method rebase`. "
        "Rerunning resumes an interrupted build, and reuses a finished one built from the same sources.",
    )
    p.add_argument("sources", nargs="+", help="Hub dataset ids or local .jsonl/.json/.csv/.parquet files")
    p.add_argument("--output-dir", required=True, help="the datastore folder")
    p.add_argument("--max-rows-per-config", type=int, default=1000,
                   help="evenly spaced rows kept per (dataset, config), so one big dataset cannot crowd out the rest; 0 keeps every row")
    p.add_argument("--embedder", default=None, help="sentence-transformers model (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--index-factory", default=None, help='FAISS factory string over inner product (default "HNSW32"; "Flat" is exact)')
    p.add_argument("--overwrite", action="store_true", help="rebuild even if the folder holds a datastore of other sources or settings")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="embed on Ray (Ray Data over a pool of embedder actors): alone, Ray starts here (or joins $RAY_ADDRESS); "
                        "or the cluster at ADDRESS. The datastore is the same as without")
    p.add_argument("--num-workers", type=int, default=2, help="with --ray: embedder actors (one CPU each)")
    p.set_defaults(func=run_datastore)
    return p


def run_datastore(args) -> int:
    from .rebase import build_datastore

    check_output_dir(Path(args.output_dir))
    kwargs = {"index_factory": args.index_factory} if args.index_factory else {}
    try:
        store = build_datastore(
            args.sources, args.output_dir, max_rows_per_config=args.max_rows_per_config or None,
            embedder=args.embedder, overwrite=args.overwrite, ray_address=args.ray, num_workers=args.num_workers, **kwargs,
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the rows read and embedded so far are kept in {args.output_dir}; the same command continues from them") from None
    print(f"\n{store!r}")
    for skip in store.meta["skipped"]:
        print(f"skipped {' '.join(filter(None, (skip['source'], skip['config'])))}: {skip['reason']}")
    return 0


# -- demo -----------------------------------------------------------------------------------------


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="the whole loop on the shipped example task: synthesize, QLoRA-finetune, evaluate, write the card",
        description="Runs recipes/configs/demo.yaml on the embedded student: SELF-GUIDE synthesizes training data "
        "for a 3-way support-ticket classification task, QLoRA finetunes on it, and the base model (few-shot) "
        "and the adapter (zero-shot) are scored on 42 gold rows. Prints the before/after table.",
    )
    p.add_argument("--output-dir", default="outputs/demo", help="where the adapter, its README.md card and the dataset go")
    p.add_argument("--max-steps", type=int, default=None, help="training steps (default: the config's)")
    p.add_argument("--num-examples", type=int, default=None, help="synthetic rows to ask for (default: the config's)")
    p.add_argument("--model", default=None, help="student to use instead of the embedded one")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also push the adapter and the dataset to this Hub repo")
    p.set_defaults(func=run_demo)
    return p


def demo_argv(args) -> list[str]:
    argv = ["--config", str(demo_config_path()), "--task", str(demo_task_path()), "--output_dir", args.output_dir]
    for flag, value in (("--max_steps", args.max_steps), ("--num_examples", args.num_examples), ("--model_name_or_path", args.model)):
        if value is not None:
            argv += [flag, str(value)]
    if args.push_to_hub:
        argv += ["--push_to_hub", "true", "--hub_model_id", args.push_to_hub, "--push_dataset", "true"]
    return argv


def run_demo(args) -> int:
    from .recipes.sft import run

    start = time.perf_counter()
    result = run(demo_argv(args))  # bad input raises a SelfGuideError: cli.main prints its one line
    minutes = (time.perf_counter() - start) / 60
    print(f"\nadapter and model card: {result.output_dir}/ (README.md)")
    print(f"synthetic dataset and its card: {result.output_dir / 'dataset'}/")
    for kind, url in result.pushed.items():
        print(f"pushed {kind}: {url}")
    print(f"done in {minutes:.1f} min")
    return 0
