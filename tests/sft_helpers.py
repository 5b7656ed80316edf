"""Shared by the recipe, callback, card, push and evaluation tests: small models and task datasets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def build_qlora_model(path: Path, tokenizer_dir: Path) -> Path:
    """A random 2-layer Llama wide enough for bitsandbytes' CPU 4-bit kernels (64-value blocks per row).

    The shared tiny model's 32-wide layers train in 4-bit but cannot be packed for CPU inference.
    """
    from transformers import AutoTokenizer

    from tests.conftest import save_random_llama

    return save_random_llama(path, AutoTokenizer.from_pretrained(tokenizer_dir), hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="session")
def qlora_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return build_qlora_model(tmp_path_factory.mktemp("tiny-llama-128"), tiny_model_dir)


def task_rows(task, examples) -> list[dict]:
    """Rows shaped like the selfguide builder's: input, output, prompt, completion."""
    from selfguide.prompts import prompt_completion

    return [{"input": e.input, "output": e.output, **prompt_completion(task, e.input, e.output)} for e in examples]


COLUMNS = ("input", "output", "prompt", "completion")


def save_task_dataset(task, path: Path, train_examples, test_examples=None) -> Path:
    from datasets import Dataset, DatasetDict

    def split(examples):
        rows = task_rows(task, examples)
        return Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS})  # keeps the columns when empty

    splits = {"train": split(train_examples)}
    if test_examples:
        splits["test"] = split(test_examples)
    DatasetDict(splits).save_to_disk(str(path))
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, keyed by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def free_port() -> int:
    """A loopback port nobody holds now, so parallel runs do not meet on torch.distributed's default one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
