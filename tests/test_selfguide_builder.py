"""The `selfguide` dataset builder: loading, caching, resume and the CLI, on the tiny random model."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset

import selfguide
from selfguide.builders.selfguide import SelfGuide
from tests.conftest import FIXTURES, build_tiny_model

# Random weights write random text; these knobs let enough of it through to exercise every stage.
LOOSE = dict(
    length_window_floor=20.0, format_check=False, extra_noise_patterns=(), max_rounds=3, min_majority=0.2,
    annotation_samples=2, output_length_filter=False, input_max_new_tokens=16, output_max_new_tokens=8,
)


def _load(task, model, cache_dir, **kw):
    return load_dataset("selfguide", task=str(task), model=str(model), cache_dir=str(cache_dir), **{**LOOSE, **kw})


def test_load_dataset_from_an_empty_folder(tmp_path, tiny_model_dir, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    ds = _load(FIXTURES / "sentiment_task.json", tiny_model_dir, tmp_path / "cache", num_examples=6)
    train, test = ds["train"], ds["test"]
    assert set(train.column_names) >= {"input", "output", "prompt", "completion", "label", "round", "votes", "agreement"}
    assert train.features["label"].names == ["positive", "negative"]
    assert 1 <= len(train) <= 6
    row = train[0]
    assert row["prompt"].endswith(f"Input: {row['input']}\nOutput:") and row["completion"] == " " + row["output"]
    assert [r["input"] for r in test] == [g["input"] for g in json.loads((FIXTURES / "sentiment_task.json").read_text())["test"]]
    report = selfguide.filter_report(ds).to_dict()
    assert report["input_filters"]["in"] == report["input_generation"]["out"]
    assert report["class_balance"]["out"] >= len(train)


def test_rank_balance_gives_equal_classes(tmp_path, tiny_model_dir):
    ds = _load(FIXTURES / "sentiment_task.json", tiny_model_dir, tmp_path / "cache", num_examples=6, balance="rank")
    labels = ds["train"]["output"]
    assert len(labels) == 6 and labels.count("positive") == labels.count("negative") == 3
    assert "label_scores" not in ds["train"].column_names
    assert selfguide.filter_report(ds).to_dict()["rank_balance"]["out"] == 6


def test_channel_labels_default_to_rank_balance(tmp_path, tiny_model_dir):
    ds = _load(FIXTURES / "sentiment_task.json", tiny_model_dir, tmp_path / "cache", num_examples=4, label_strategy="channel")
    labels = ds["train"]["output"]
    assert len(labels) == 4 and labels.count("positive") == labels.count("negative") == 2
    report = selfguide.filter_report(ds).to_dict()
    assert report["output_annotation"]["out"] == report["output_annotation"]["in"], "a channel label is never missing"


def test_second_call_does_no_model_work_and_knobs_change_the_key(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    task = FIXTURES / "rewrite_task.json"
    first = _load(task, model, tmp_path / "cache", num_examples=4)
    shutil.rmtree(model)  # any model work now would fail
    again = _load(task, model, tmp_path / "cache", num_examples=4)
    assert again["train"].to_list() == first["train"].to_list()
    with pytest.raises(OSError, match=re.escape(str(model))):
        _load(task, model, tmp_path / "cache", num_examples=4, seed=1)


def test_task_content_not_path_is_the_cache_key(tmp_path, tiny_model_dir):
    copy = tmp_path / "copy.json"
    shutil.copy(FIXTURES / "rewrite_task.json", copy)
    a = _load(FIXTURES / "rewrite_task.json", tiny_model_dir, tmp_path / "cache", num_examples=3)
    b = _load(copy, tiny_model_dir, tmp_path / "cache", num_examples=3)
    assert a["train"].cache_files == b["train"].cache_files


def test_a_knob_named_at_its_default_or_left_out_is_one_cache():
    from selfguide.builders.selfguide import SelfGuideConfig
    from selfguide.student import DEFAULT_STUDENT

    task = str(FIXTURES / "rewrite_task.json")

    def config_id(**kwargs):
        return SelfGuideConfig(task=task, **kwargs).create_config_id(dict(kwargs, task=task))

    same = {config_id(), config_id(seed=0), config_id(model=None), config_id(model=DEFAULT_STUDENT), config_id(top_k=40),
            config_id(oversample=2), config_id(extra_noise_patterns=[])}  # as JSON or YAML spell 2.0 and ()
    assert len(same) == 1
    assert config_id(seed=1) not in same and config_id(model="some/other-model") not in same
    assert config_id(model=Path("some/other-model")) == config_id(model="some/other-model")
    # numpy numbers and 0/1 flags are what they say; a set is one order of its items.
    assert config_id(top_k=np.int64(40), calibrate=1, oversample=np.float64(2.0)) in same
    assert config_id(extra_noise_patterns={"b", "a"}) == config_id(extra_noise_patterns=["a", "b"])
    # A bare string for a list knob is one item, not one regex per character.
    assert SelfGuideConfig(task=task, extra_noise_patterns="lorem ipsum").extra_noise_patterns == ("lorem ipsum",)
    assert config_id(extra_noise_patterns="lorem ipsum") == config_id(extra_noise_patterns=["lorem ipsum"])

    # calibrate changes likelihood labels only.
    assert config_id(calibrate=False) != config_id()
    for strategy in ("channel", "vote"):
        assert config_id(label_strategy=strategy, calibrate=False) == config_id(label_strategy=strategy)


def test_cache_key_covers_the_code_a_builder_runs_and_nothing_else():
    from selfguide.registry import _imported_files

    for builder, stage in (("selfguide", "synthesis/input_filters.py"), ("rebase", "rebase/transformation.py")):
        files = {f.as_posix() for f in _imported_files(f"selfguide.builders.{builder}")}
        for needed in (stage, "prompts.py", "task.py", "engines/transformers_engine.py", f"builders/{builder}.py", "builders/base.py"):
            assert any(f.endswith("/" + needed) for f in files), (builder, needed)
        # Evaluation and the CLI write no synthetic row: editing them must not re-synthesize.
        assert not any(f.endswith(("/evaluation.py", "/cli.py", "/commands.py", "/hub.py")) for f in files), builder


def test_builder_class_is_usable_directly(tmp_path, tiny_model_dir):
    builder = SelfGuide(cache_dir=str(tmp_path), task=str(FIXTURES / "rewrite_task.json"), model=str(tiny_model_dir), num_examples=3, **LOOSE)
    builder.download_and_prepare()
    assert len(builder.as_dataset("test")) == 2


def test_bad_knobs_fail_before_any_model_work(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="label_strategy"):
        _load(FIXTURES / "sentiment_task.json", tiny_model_dir, tmp_path, label_strategy="guess")
    with pytest.raises(ValueError, match="balance: 'rank'.*Fix"):
        _load(FIXTURES / "sentiment_task.json", tiny_model_dir, tmp_path, label_strategy="vote", balance="rank")
    with pytest.raises(ValueError, match="oversample: .* must be above 0, got 0"):
        _load(FIXTURES / "sentiment_task.json", tiny_model_dir, tmp_path, oversample=0)
    with pytest.raises(selfguide.TaskSpecError, match="task"):
        load_dataset("selfguide", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="max_rounds: must be int, got 'abc'"):  # e.g. --set max_rounds=abc
        _load(FIXTURES / "sentiment_task.json", tiny_model_dir, tmp_path, max_rounds="abc")
    with pytest.raises(ValueError, match="temperature: must be float or None, got 'hot'"):
        _load(FIXTURES / "sentiment_task.json", tiny_model_dir, tmp_path, temperature="hot")


_RUN = """
import json, sys, selfguide
from datasets import load_dataset
ds = load_dataset("selfguide", task=sys.argv[1], model=sys.argv[2], cache_dir=sys.argv[3], num_examples=40,
                  max_rounds=4, prompts_per_batch=2, length_window_floor=20.0, format_check=False, min_majority=0.2,
                  annotation_samples=2, output_length_filter=False, input_max_new_tokens=16, output_max_new_tokens=8)
json.dump(ds["train"].to_list(), open(sys.argv[4], "w"))
"""


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-c", _RUN, *map(str, args)], **kw)


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny_model_dir):
    task = FIXTURES / "rewrite_task.json"
    ref = _run([task, tiny_model_dir, tmp_path / "ref", tmp_path / "ref.json"])
    assert ref.wait(timeout=300) == 0

    proc = _run([task, tiny_model_dir, tmp_path / "cache", tmp_path / "out.json"], start_new_session=True)
    journals = lambda: list((tmp_path / "cache").glob("selfguide_work/*/journal.jsonl"))  # noqa: E731
    deadline = time.time() + 240
    while time.time() < deadline and not (journals() and len(journals()[0].read_text().splitlines()) >= 3):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.json").exists(), "the run finished before it could be interrupted"
    done_before = len(journals()[0].read_text().splitlines())

    again = _run([task, tiny_model_dir, tmp_path / "cache", tmp_path / "out.json"])
    assert again.wait(timeout=300) == 0
    keys = [json.loads(line)["key"] for line in journals()[0].read_text().splitlines()]
    assert len(keys) == len(set(keys)) > done_before
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads((tmp_path / "ref.json").read_text())


def test_cli_generate_and_bad_input(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "selfguide.cli", "generate", str(FIXTURES / "rewrite_task.json"), "--model", str(tiny_model_dir),
           "--num-examples", "3", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]
    cmd += [f"--set={k}={v}" for k, v in {**LOOSE, "extra_noise_patterns": "[]"}.items() if k != "extra_noise_patterns"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "input_filters" in done.stdout
    assert (out / "dataset" / "dataset_dict.json").exists()
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert rows and {"prompt", "completion"} <= set(rows[0])
    assert json.loads((out / "filter_report.json").read_text())["input_generation"]["in"] > 0

    bad = tmp_path / "bad.yaml"
    bad.write_text("instruction: Do it.\nexamples:\n  - input: x\n")
    done = subprocess.run([sys.executable, "-m", "selfguide.cli", "generate", str(bad), "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "examples[0].output" in done.stderr and "Fix:" in done.stderr


def test_cli_set_refuses_flagged_and_misspelt_knobs(tmp_path, capsys):
    from selfguide.cli import main

    base = ["generate", str(FIXTURES / "rewrite_task.json"), "--output-dir", str(tmp_path / "out")]
    assert main([*base, "--set", "seed=3"]) == 2
    assert "--set seed: has its own flag, --seed" in capsys.readouterr().err
    assert main([*base, "--set", "max_round=3"]) == 2
    assert "max_round: no such knob of SelfGuideConfig (did you mean 'max_rounds'?)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_embedded_student_generates_16_rows(tmp_path):
    ds = load_dataset("selfguide", task=str(FIXTURES / "sentiment_task.json"), num_examples=16, cache_dir=str(tmp_path))
    train = ds["train"]
    assert len(train) == 16
    assert set(train["output"]) <= {"positive", "negative"}
    assert not set(train["input"]) & {e["input"] for e in json.loads((FIXTURES / "sentiment_task.json").read_text())["examples"]}
