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
                  "engine": "--engine", "prompt_format": "--prompt-format", "tokenizer": "--tokenizer"}


def generate(args: argparse.Namespace) -> int:
    from datasets import load_dataset_builder

    import selfguide  # noqa: F401  (registers the builders)

    from .report import filter_report
    from .student import check_model
    from .task import Task, save_task

    out = Path(args.output_dir)
    check_output_dir(out)
    task = Task.load(args.task)

    knobs = dict(args.set)
    clash = sorted(knobs.keys() & _FLAGGED_KNOBS.keys())
    if clash:
        raise ConfigError("; ".join(f"--set {key}: has its own flag, {_FLAGGED_KNOBS[key]}" for key in clash) + ". Fix: use the flag instead")
    kwargs = dict(task=str(Path(args.task).resolve()), num_examples=args.num_examples, seed=args.seed, **knobs)
    if args.model:
        kwargs["model"] = args.model
    for knob in ("base_url", "engine", "prompt_format", "tokenizer"):
        if getattr(args, knob) is not None:
            kwargs[knob] = getattr(args, knob)
    if args.method == "rebase":
        if not args.datastore:
            raise ConfigError("--datastore: required with --method rebase. Fix: pass a folder made by `selfguide datastore` (or selfguide.rebase.build_datastore)")
        kwargs["datastore"] = str(Path(args.datastore).resolve())
    elif args.datastore:
        raise ConfigError("--datastore: only used by --method rebase. Fix: add --method rebase or drop it")
    if args.cache_dir:
        kwargs["cache_dir"] = args.cache_dir
    if args.model and not args.base_url:  # a server's model is checked by the engine, on its first call
        check_model(args.model)
    builder = load_dataset_builder(args.method, **kwargs)
    try:
        builder.download_and_prepare()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the finished batches are kept in {builder.work_dir}; the same command continues from them") from None
    dataset = builder.as_dataset()
    dataset.save_to_disk(str(out / "dataset"))
    save_task(task, out)  # beside the dataset: what it was made for
    for split, ds in dataset.items():
        ds.to_json(str(out / f"{split}.jsonl"), lines=True, force_ascii=False)
    report = filter_report(dataset)
    (out / "filter_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    print(f"\n{len(dataset['train'])} training rows written to {out}\n{report.summary()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfguide", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="synthesize a training set for a task")
    gen.add_argument("task", help="NI V2 task file, or a YAML/JSON spec {instruction, examples, labels?, type?}")
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
    gen.add_argument("--cache-dir", help="datasets cache directory (default: HF_DATASETS_CACHE)")
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
