"""`selfguide` on the command line, entered where the installed script enters: `selfguide.cli.main`.

Bad input ends as one `error: ...` line naming the field and the fix, exit 2, before any model loads or
synthesis starts; Ctrl-C as one `interrupted: ...` line, exit 130.
"""

import signal
import subprocess
import sys
import time

import pytest

from selfguide import Task
from selfguide.cli import main
from tests.conftest import FIXTURES

TASK = FIXTURES / "rewrite_task.json"
# Settings under which the random tiny model keeps some rows (as tests/test_selfguide_builder.py's LOOSE).
LOOSE = ["--set", "length_window_floor=20.0", "--set", "format_check=false", "--set", "max_rounds=3", "--set", "min_majority=0.2",
         "--set", "annotation_samples=2", "--set", "output_length_filter=false", "--set", "input_max_new_tokens=16",
         "--set", "output_max_new_tokens=8"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: "), err
    return err


def test_a_mistyped_model_path_is_an_error_in_every_command(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    for argv in (
        ["generate", str(TASK), "--model", "./typo", "--output-dir", str(out), "--cache-dir", str(cache)],
        ["evaluate", "--task", str(FIXTURES / "sentiment_task.json"), "--model", "./typo"],
        ["demo", "--model", "./typo", "--output-dir", str(out)],
    ):
        assert main(argv) == 2, argv
        assert "model: folder ./typo does not exist. Fix: pass an existing folder" in capsys.readouterr().err, argv
    assert not out.exists() and not cache.exists(), "no synthesis started"


def test_an_unknown_hub_id_fails_at_once_naming_model(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    # Without a route to the Hub, from_pretrained retried for about a minute, then ended in a traceback.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    argv = ["generate", str(TASK), "--model", "nobody-here/no-such-model-3f9c", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    assert error_line(capsys).startswith("error: model: 'nobody-here/no-such-model-3f9c' is ")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(argv) == 2
    assert "is not in the local Hub cache, and HF_HUB_OFFLINE is set. Fix:" in error_line(capsys)
    assert not (tmp_path / "cache").exists()


def test_evaluate_refuses_a_batch_size_below_one_before_loading_a_model(capsys):
    # --model ./typo would fail on loading: the batch size is named first.
    assert main(["evaluate", "--task", str(FIXTURES / "sentiment_task.json"), "--model", "./typo", "--batch-size", "0"]) == 2
    assert error_line(capsys) == "error: --batch-size: gold rows answered at once, must be 1 or more, got 0. Fix: pass e.g. --batch-size 16"


def test_an_output_dir_that_is_a_file_is_refused_before_synthesis(tmp_path, tiny_model_dir, capsys):
    taken = tmp_path / "taken"
    taken.write_text("someone's notes")
    for out in (taken, taken / "sub"):
        argv = ["generate", str(TASK), "--model", str(tiny_model_dir), "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]
        assert main(argv) == 2
        assert error_line(capsys) == f"error: --output-dir: {taken} is a file, not a folder. Fix: pass a folder (it is made if missing), or move the file"
    assert not (tmp_path / "cache").exists(), "no synthesis started"
    assert main(["datastore", str(FIXTURES / "recipes.csv"), "--output-dir", str(taken)]) == 2
    assert f"--output-dir: {taken} is a file" in error_line(capsys)
    assert taken.read_text() == "someone's notes"


def test_a_folder_without_task_files_says_so(tmp_path, capsys):
    # generate takes a folder of tasks (one dataset each); evaluate scores one task
    assert main(["generate", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2
    assert error_line(capsys) == (f"error: task: {tmp_path} is a folder with no task file (.json, .yaml, .yml) in it. "
                                  "Fix: pass task files, or a folder that holds them")
    assert main(["evaluate", "--task", str(tmp_path)]) == 2
    assert "is a folder, not a task file" in error_line(capsys)


def test_generate_saves_the_task_beside_its_dataset(tmp_path, tiny_model_dir, capsys):
    from datasets import load_from_disk

    out = tmp_path / "data"
    argv = ["generate", str(TASK), "--model", str(tiny_model_dir), "--num-examples", "3", "--output-dir", str(out),
            "--cache-dir", str(tmp_path / "cache"), *LOOSE]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(load_from_disk(str(out / "dataset"))["train"]) > 0
    saved, task = Task.from_saved(out), Task.load(TASK)
    assert saved is not None and saved.to_dict() == task.to_dict() and saved.fingerprint() == task.fingerprint()


def test_ctrl_c_during_synthesis_is_one_line_saying_where_the_finished_batches_are(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    # Many rows to ask for, so the run is still going when the first batch is journalled.
    argv = [sys.executable, "-m", "selfguide.cli", "generate", str(TASK), "--model", str(tiny_model_dir), "--num-examples", "400",
            "--output-dir", str(tmp_path / "out"), "--cache-dir", str(cache), *LOOSE, "--set", "max_rounds=50"]
    # A shell starts background jobs with SIGINT ignored, and children inherit that (a CI run started with `&` did):
    # the child gets Ctrl-C's default handling, as at a terminal.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journals = lambda: list(cache.glob("selfguide_work/*/journal.jsonl"))  # noqa: E731
    # Ctrl-C only once a batch is journalled: an interrupt that lands before synthesis tests something else.
    deadline = time.time() + 900
    while not (journals() and journals()[0].read_text()):
        assert proc.poll() is None, "the run ended before a batch was journalled; nothing was interrupted"
        assert time.time() < deadline, "no batch journalled within 900 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    [journal] = journals()
    assert journal.read_text(), "the finished batches are kept"
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"interrupted: the finished batches are kept in {journal.parent}; "
                                            "the same command continues from them")


def test_bitsandbytes_kernel_message_is_silenced_and_its_other_warnings_are_not():
    # bitsandbytes logs this at import on CPUs with AVX512-BF16; sent here by hand too, so any CPU checks the filter.
    code = """
import logging
import selfguide
import peft  # imports bitsandbytes
log = logging.getLogger("bitsandbytes.backends.cpu.ops")
log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...", "untrusted")
log.warning("Some other bitsandbytes warning")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr
    assert "Some other bitsandbytes warning" in done.stderr
