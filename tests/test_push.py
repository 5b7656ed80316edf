"""Pushing to the Hub: the real huggingface_hub client against a loopback fake Hub (tests/fake_hub.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from huggingface_hub import constants

from selfguide import Task
from selfguide.hub import HubPushError, push_adapter, push_dataset, save_dataset_for_hub
from selfguide.hub_cards import DataSummary
from tests.fake_hub import FakeHub
from tests.sft_helpers import REPO, qlora_model_dir, save_task_dataset, task_rows, tree_digest  # noqa: F401  (fixture)
from tests.test_selfguide_builder import LOOSE

TOKEN = "hf_selfguideTestToken0123456789abcdef"


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # hf_xet would move the LFS files over the Xet protocol, which needs a CAS server the fake lacks.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with FakeHub(lifetime_s=120) as server:
        yield server


@pytest.fixture
def trained_folder(tmp_path) -> Path:
    """What a training run leaves behind: the adapter and card, plus files that must stay local."""
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "adapter_model.safetensors").write_bytes(os.urandom(3000) + b"\x00" * 100)
    (out / "adapter_config.json").write_text('{"r": 16}')
    (out / "tokenizer.json").write_text('{"model": {}}')
    (out / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: peft\n---\n# adapter\n")
    (out / "training_args.bin").write_bytes(b"pickled arguments")
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"optimizer state")
    (out / "dataset").mkdir()
    (out / "dataset" / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    return out


def test_adapter_push_uploads_the_files_byte_for_byte(hub, trained_folder):
    result = push_adapter(trained_folder, "sentiment-qlora", endpoint=hub.url)
    assert result.repo_id == "tester/sentiment-qlora"
    pushed = hub.repos[("model", "tester/sentiment-qlora")]
    expected = ["README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert sorted(pushed) == expected
    for name in expected:
        assert pushed[name] == (trained_folder / name).read_bytes()
    assert hub.attempts("lfs_put") == 1  # the safetensors file went through LFS, the rest inline
    assert {r["authorization"] for r in hub.requests if r["kind"] != "lfs_put"} == {f"Bearer {TOKEN}"}
    assert hub.unknown == []


def test_transient_failures_are_retried(hub, trained_folder):
    hub.fail_next("commit", 503, 502)
    push_adapter(trained_folder, "sentiment-qlora", endpoint=hub.url, backoff_s=0.01)
    assert hub.attempts("commit") == 3
    assert hub.repos[("model", "tester/sentiment-qlora")]["README.md"] == (trained_folder / "README.md").read_bytes()


def test_a_push_that_keeps_failing_says_so_and_leaves_the_output_alone(hub, trained_folder):
    before = tree_digest(trained_folder)
    hub.fail_next("commit", 500, 500, 500)
    with pytest.raises(HubPushError, match=f"(?s)failed after 3 attempts.*{trained_folder} is intact.*hf upload sentiment-qlora .* --exclude 'checkpoint-\\*'"):
        push_adapter(trained_folder, "sentiment-qlora", endpoint=hub.url, backoff_s=0.01)
    assert hub.attempts("commit") == 3
    assert tree_digest(trained_folder) == before


def test_a_rejected_token_is_not_retried(hub, trained_folder):
    hub.fail_next("create", 401)
    with pytest.raises(HubPushError, match="token") as error:
        push_adapter(trained_folder, "sentiment-qlora", endpoint=hub.url, backoff_s=0.01)
    assert hub.attempts("create") == 1
    assert TOKEN not in str(error.value)


def test_no_token_fails_before_anything_is_sent(hub, trained_folder, monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(HubPushError, match="no Hugging Face token found"):
        push_adapter(trained_folder, "sentiment-qlora", endpoint=hub.url)
    assert hub.requests == []


def test_dataset_push_with_its_card(hub, tmp_path, sentiment_task_dict):
    task = Task.load(sentiment_task_dict)
    dataset = DatasetDict({"train": Dataset.from_list(task_rows(task, task.examples)), "test": Dataset.from_list(task_rows(task, task.gold))})
    summary = DataSummary("SELF-GUIDE", "load_dataset('selfguide', ...)", "the base model wrote and labelled itself", 4, 4)
    folder = save_dataset_for_hub(dataset, tmp_path / "dataset", task, summary)
    result = push_dataset(folder, "sentiment-data", endpoint=hub.url, private=True)
    assert result.repo_id == "tester/sentiment-data" and "/datasets/" in result.commit_url
    assert hub.visibility[("dataset", "tester/sentiment-data")] == "private"
    pushed = hub.repos[("dataset", "tester/sentiment-data")]
    # The gold rows stay local unless asked for, in the rows and in the task spec beside them, and the card does not promise them.
    assert sorted(pushed) == ["README.md", "data/train-00000-of-00001.parquet", "task.json"]
    assert json.loads(pushed["task.json"])["test"] == []
    assert all(pushed[name] == (folder / name).read_bytes() for name in pushed)
    assert "gold rows" not in pushed["README.md"].decode()
    with_gold = save_dataset_for_hub(dataset, tmp_path / "with_gold", task, summary, gold_rows=True)
    push_dataset(with_gold, "sentiment-data-gold", endpoint=hub.url)
    pushed = hub.repos[("dataset", "tester/sentiment-data-gold")]
    assert "data/test-00000-of-00001.parquet" in pushed and "holds the task's 4 gold rows" in pushed["README.md"].decode()


def _recipe(task_file, data, model, out, hub_url, *extra, env=()):
    """The recipe in its own process against the fake Hub; `data` None synthesizes the training rows."""
    env = {**os.environ, "HF_ENDPOINT": hub_url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", **dict(env)}
    cmd = [sys.executable, "recipes/sft.py", "--task", str(task_file), *(["--dataset_name", str(data)] if data else []),
           "--model_name_or_path", str(model), "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "4",
           "--gradient_checkpointing", "false", "--save_strategy", "steps", "--save_steps", "1", "--report_to", "none",
           "--push_to_hub", "true", "--hub_model_id", "tiny-sft", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def recipe_inputs(tmp_path, sentiment_task_dict, qlora_model_dir):
    task = Task.load(sentiment_task_dict)
    task_file = tmp_path / "sentiment.json"
    task_file.write_text(json.dumps(sentiment_task_dict))
    return task_file, save_task_dataset(task, tmp_path / "data", task.examples * 2, task.gold), qlora_model_dir


def test_recipe_pushes_adapter_and_card_and_never_writes_the_token(recipe_inputs, tmp_path):
    task_file, data, model = recipe_inputs
    out = tmp_path / "out"
    with FakeHub(lifetime_s=200) as hub:
        proc = _recipe(task_file, data, model, out, hub.url, "--hub_private_repo", "true")
        assert proc.returncode == 0, proc.stderr[-3000:]
        pushed = hub.repos[("model", "tester/tiny-sft")]
        assert hub.visibility[("model", "tester/tiny-sft")] == "private"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(pushed)
    assert not any(name.startswith("checkpoint-") or name == "training_args.bin" for name in pushed)
    # The evaluation's answers stay local: they carry the task's gold rows.
    assert (out / "eval_predictions.jsonl").is_file() and "eval_predictions.jsonl" not in pushed
    for name, content in pushed.items():
        assert content == (out / name).read_bytes(), name
    assert "model-index:" in pushed["README.md"].decode()
    secret = TOKEN.encode()
    assert secret not in (proc.stdout + proc.stderr).encode()
    assert not [p for p in out.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert not [name for name, content in pushed.items() if secret in content]


def test_recipe_push_failure_is_clear_and_keeps_the_output(recipe_inputs, tmp_path):
    task_file, data, model = recipe_inputs
    out = tmp_path / "out"
    with FakeHub(lifetime_s=200) as hub:
        hub.fail_next("commit", 503, 503, 503)
        proc = _recipe(task_file, data, model, out, hub.url)
        assert hub.attempts("commit") == 3
    assert proc.returncode != 0
    assert "error: push of" in proc.stderr and "failed after 3 attempts" in proc.stderr and "is intact" in proc.stderr
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in out.iterdir()}
    assert TOKEN not in proc.stderr


def test_a_failed_dataset_push_keeps_the_final_card_and_table(recipe_inputs, tmp_path):
    task_file, _, model = recipe_inputs
    out = tmp_path / "out"
    with FakeHub(lifetime_s=200) as hub:
        hub.fail_next("create", 403)  # the dataset's repo, the first one the recipe creates
        proc = _recipe(task_file, None, model, out, hub.url, "--push_dataset", "true", "--num_examples", "4",
                       "--synthesis_kwargs", json.dumps(LOOSE), env={"HF_DATASETS_CACHE": str(tmp_path / "cache")})
        assert ("model", "tester/tiny-sft") not in hub.repos
    assert proc.returncode != 0
    assert "error: push of" in proc.stderr and "dataset repo 'tiny-sft-data' failed" in proc.stderr
    # With eval_strategy "no" the finetuned score comes only from the evaluation after training.
    card = (out / "README.md").read_text()
    assert "| finetuned | zero-shot |" in card and "finetuned-zero-shot" in card
    assert "Task metric on 4 gold rows" in proc.stdout and "| finetuned | zero-shot |" in proc.stdout
