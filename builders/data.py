"""The training data of a finetuning run: a dataset the user names, or one the builders synthesize for the task.

`load_training_data` reads `--dataset_name` (a `save_to_disk` folder, `selfguide generate`'s output folder, a
folder of data files or a Hub id) or calls `load_dataset("selfguide" | "rebase", ...)`; `training_splits` picks
the split to train on and the gold rows to compute an evaluation loss on; `with_training_prompts` is the one
place a training row's prompt is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..evaluation import FEW_SHOT, ZERO_SHOT
from ..prompts import prompt_completion, row_fewshot_prompt, training_prompt, user_turn
from ..task import TASK_FILE, Task
from .rebase import ReBaseConfig
from .selfguide import SelfGuideConfig

SYNTHESIS_CONFIGS = {"selfguide": SelfGuideConfig, "rebase": ReBaseConfig}
# Builder arguments the recipe fills from its own flags: the same key in --synthesis_kwargs would silently win.
SYNTHESIS_FLAGS = {"task": "--task", "model": "--synthesis_model", "num_examples": "--num_examples", "seed": "--synthesis_seed"}
# TRL's dataset formats, by the columns each needs.
TRL_FORMATS = (("prompt", "completion"), ("messages",), ("text",))


def is_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def saved_dataset_folder(name: str) -> Optional[Path]:
    """The `save_to_disk` folder a local `--dataset_name` names: the folder itself, or the `dataset/` inside the
    folder `selfguide generate --output-dir` wrote (beside its train.jsonl and filter_report.json)."""
    path = Path(name).expanduser()
    for folder in (path, path / "dataset"):
        if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
            return folder
    return None


def hub_task(repo_id: str) -> Optional[Task]:
    """The task a dataset on the Hub was made for: the `task.json` that `push_dataset` puts beside its rows, or None
    (not there, not reachable, not cached offline)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(repo_id, TASK_FILE, repo_type="dataset")
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError):  # ValueError: not a valid repo id
        return None
    return Task.from_saved(Path(path).parent)


def resolve_task(task: Optional[str], dataset_name: Optional[str]) -> Task:
    """`--task` when given; else the task a dataset was made for: kept in the folder `selfguide generate` wrote, or
    in the Hub dataset `--push_dataset` pushed."""
    if task:
        return Task.load(task)
    if not dataset_name:
        saved = None
    else:
        saved = Task.from_saved(Path(dataset_name).expanduser()) if is_local(dataset_name) else hub_task(dataset_name)
    if saved is None:
        where = f" and {dataset_name} holds no saved task" if dataset_name else ""
        raise ConfigError(
            f"task: missing{where}. Fix: pass --task path/to/task.yaml; it gives the data to synthesize (or, with "
            "--dataset_name, the gold rows to evaluate on) and the model card's task"
        )
    return saved


def synthesis_arguments(script_args, task: Task, model_name_or_path: Optional[str]) -> dict:
    """The builder's arguments. The model goes as the user named it (None: the embedded default), so the
    cache is the one `selfguide generate` and a plain load_dataset use, not keyed on this machine's
    converted-model path."""
    knobs = {"num_examples": script_args.num_examples, "seed": script_args.synthesis_seed, **(script_args.synthesis_kwargs or {})}
    return {"task": task, "model": script_args.synthesis_model or model_name_or_path, **knobs}


def check_synthesis(script_args, task: Task, model_name_or_path: Optional[str]) -> None:
    """Make the builder config load_dataset will make, so a bad knob or datastore stops the run before the
    student is loaded, in the recipe's terms."""
    method = script_args.synthesis_method
    given = script_args.synthesis_kwargs or {}
    duplicates = [k for k in given if k in SYNTHESIS_FLAGS]
    if duplicates:
        flags = ", ".join(SYNTHESIS_FLAGS[k] for k in duplicates)
        raise ConfigError(
            f"synthesis_kwargs: {', '.join(map(repr, duplicates))} would override {flags}. Fix: pass {flags} instead, "
            "and keep synthesis_kwargs for the builder's own knobs"
        )
    config_class = SYNTHESIS_CONFIGS[method]
    try:
        config_class.check_knobs(given)
        # cache_kwargs reads a ReBase datastore's fingerprint, so a wrong path fails here rather than after the model loads.
        config_class(**synthesis_arguments(script_args, task, model_name_or_path)).cache_kwargs()
    except ValueError as e:  # DatastoreError among them; the builder's message names the knob and the fix
        raise ConfigError(f"synthesis_kwargs ({method} builder): {e}") from None


def _empty_split_message(split: str) -> str:
    return f"the training split {split!r} is empty. Fix: synthesize more rows (num_examples, max_rounds) or pick another split"


def load_training_data(script_args, task: Task, student_name: str, model_name_or_path: Optional[str]):
    """A DatasetDict, where it came from, and the synthesis settings (both for the cards)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if script_args.dataset_name:
        name = script_args.dataset_name
        folder = saved_dataset_folder(name) if is_local(name) else None
        split_state = folder / script_args.dataset_train_split / "state.json" if folder else None
        # datasets saves an empty split as a folder with no data file, then cannot load it back.
        if split_state and split_state.exists() and not json.loads(split_state.read_text()).get("_data_files"):
            raise ConfigError(_empty_split_message(script_args.dataset_train_split))
        try:
            dataset = load_from_disk(str(folder)) if folder else load_dataset(name, name=script_args.dataset_config)
        except Exception as e:  # datasets raises many types for "not there"; all mean the same to the user
            raise ConfigError(
                f"dataset_name: cannot load {name!r} ({type(e).__name__}: {e}). Fix: pass a folder saved with "
                "save_to_disk, a Hub dataset id you can reach, or leave it out to synthesize from --task"
            ) from None
        if not isinstance(dataset, DatasetDict):
            dataset = DatasetDict({script_args.dataset_train_split: dataset})
        return dataset, name, {}

    import selfguide  # noqa: F401  (registers the builders with datasets)

    arguments = synthesis_arguments(script_args, task, model_name_or_path)
    dataset = load_dataset(script_args.synthesis_method, **arguments)
    knobs = {k: v for k, v in arguments.items() if k not in ("task", "model")}
    task_name = Path(script_args.task).name if script_args.task else task.name
    call = f"load_dataset({script_args.synthesis_method!r}, task={task_name!r}, " + ", ".join(f"{k}={v!r}" for k, v in knobs.items()) + ")"
    return dataset, call, {"synthesis model": script_args.synthesis_model or student_name, **knobs}


def training_splits(dataset, script_args, task: Task):
    """The split to train on, and the gold rows for the evaluation loss: the dataset's test split, else the
    task's own gold rows (a dataset saved or pushed without them, the default: they stay off the Hub)."""
    split = script_args.dataset_train_split
    if split not in dataset:
        raise ConfigError(f"dataset_train_split: the dataset has no split {split!r}, only {list(dataset)}. Fix: name one of them")
    train = dataset[split]
    if train.num_rows == 0:
        raise ConfigError(_empty_split_message(split))
    if not any(all(c in train.column_names for c in cols) for cols in TRL_FORMATS + (("input", "output"),)):
        raise ConfigError(
            f"the training split has columns {train.column_names}, none of TRL's formats "
            "(prompt+completion, messages, text) nor input+output. Fix: build it with load_dataset('selfguide', ...)"
        )
    test = dataset.get(script_args.dataset_test_split)
    if (test is None or not test.num_rows) and task.gold:
        from datasets import Dataset

        test = Dataset.from_list([{"input": g.input, "output": g.output} for g in task.gold])
    return train, test if test is not None and test.num_rows else None


def with_training_prompts(train, test, task: Task, prompt: str, seed: int):
    """Both splits (`test` may be None) as TRL prompt-completion rows with the training prompt `prompt`: the one
    place a training prompt is built. Zero-shot is the instruction, then the input; few-shot puts every
    demonstration first, in an order seeded by the row's index. The finetuned model is scored with the same one.

    Rows the builders wrote keep their completion (a ReBase row's reasoning, say) and, zero-shot, their prompt;
    rows with only an input and an output (the task's gold rows as the evaluation split) get both, in the form of
    the training rows: conversational turns where the builder wrote those for a chat student, text otherwise.
    Rows in TRL's other formats (messages, text) are trained on as they are, zero-shot only."""
    from trl.data_utils import is_conversational

    if prompt not in (ZERO_SHOT, FEW_SHOT):
        raise ConfigError(f"train_prompt: {prompt!r} is not one of {(ZERO_SHOT, FEW_SHOT)}")
    chat = is_conversational(train[0])

    def rows(split):
        columns = set(split.column_names)
        if prompt == ZERO_SHOT and ("prompt" in columns or not {"input", "output"} <= columns):
            return split
        if "input" not in columns:
            raise ConfigError(
                f"train_prompt=few-shot rebuilds each prompt from the row's 'input', and the dataset has only "
                f"{split.column_names}. Fix: build it with load_dataset('selfguide', ...), or use train_prompt zero-shot"
            )

        def row(example, i):
            text = row_fewshot_prompt(task, example["input"], seed, i) if prompt == FEW_SHOT else training_prompt(task, example["input"])
            built = {"prompt": user_turn(text) if chat else text}
            if "completion" not in columns:
                built["completion"] = prompt_completion(task, example["input"], example["output"], chat=chat)["completion"]
            return built

        return split.map(row, with_indices=True, desc=f"{prompt} prompts")

    return rows(train), rows(test) if test is not None else None
