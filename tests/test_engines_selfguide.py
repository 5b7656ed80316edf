"""SELF-GUIDE end to end on the engines users run: in-process llama.cpp and a real llama-cpp-python server.

The embedded student's GGUF, a real server on loopback, likelihood labels (the default) included; a server
killed mid-run keeps the finished batches, and the same call continues from them once it is back.
"""

import json
import threading
import time

import pytest
from datasets import load_dataset

from selfguide.engines import ServerError
from tests.conftest import FIXTURES
from tests.rebase_support import free_port, real_llama_server

pytestmark = pytest.mark.slow
SENTIMENT = FIXTURES / "sentiment_task.json"
# Small and loose: the 270M student must leave a few rows through every stage, fast.
KNOBS = dict(num_examples=4, max_rounds=2, prompts_per_batch=4, input_max_new_tokens=24, length_window_floor=5.0,
             format_check=False, near_duplicate_threshold=1.0)


def _load(cache_dir, **kw):
    return load_dataset("selfguide", task=str(SENTIMENT), cache_dir=str(cache_dir), **{**KNOBS, **kw})


def _rows(ds) -> list[tuple]:
    return [(r["input"], r["output"], r["round"]) for r in ds["train"]]


def test_selfguide_in_process_llama_cpp_is_seeded_and_labels_by_likelihood(tmp_path):
    first = _load(tmp_path / "a", engine="llama.cpp")
    rows = _rows(first)
    assert rows and {o for _, o, _ in rows} <= {"positive", "negative"}
    assert all(0 < a <= 1 for a in first["train"]["agreement"])  # a label probability, not a vote count
    assert _rows(_load(tmp_path / "b", engine="llama.cpp")) == rows  # same seed, same engine: same rows


# llama-cpp-python's server scores by echoing every prompt token with its logprobs, sorting the 262k-token
# vocabulary in Python for each: about 0.2-1 s a token here. A task of short prompts keeps this test in minutes.
PARITY = {"instruction": "Even or odd?", "labels": ["even", "odd"],
          "examples": [{"input": "4", "output": "even"}, {"input": "7", "output": "odd"}, {"input": "10", "output": "even"}]}


def test_selfguide_through_a_served_student_with_likelihood_labels(tmp_path):
    with real_llama_server(tmp_path, logits_all=True) as base_url:
        ds = load_dataset("selfguide", task=PARITY, cache_dir=str(tmp_path / "cache"), base_url=base_url, concurrency=1,
                          timeout=900, num_examples=2, max_rounds=2, prompts_per_batch=2, input_max_new_tokens=6,
                          calibrate=False, length_window_floor=20.0, format_check=False, near_duplicate_threshold=1.0)
    assert ds["train"].num_rows >= 1 and set(ds["train"]["output"]) <= {"even", "odd"}
    assert all(0 < a <= 1 for a in ds["train"]["agreement"])  # a label probability from the server's logprobs


def test_a_server_that_cannot_score_is_named_before_any_sampling(tmp_path):
    with real_llama_server(tmp_path, logits_all=False) as base_url:
        with pytest.raises(ServerError, match="label_strategy='vote'|label_strategy=\"vote\""):
            _load(tmp_path / "cache", base_url=base_url)
    assert not list((tmp_path / "cache").rglob("journal.jsonl")) or all(
        p.read_text() == "" for p in (tmp_path / "cache").rglob("journal.jsonl"))


def test_a_server_killed_mid_run_keeps_the_journal_and_the_same_call_continues(tmp_path):
    port = free_port()
    # Vote labels: sampling only, so the servers need no logits of every position (4.7 GB against 0.4 GB).
    kw = dict(base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, num_examples=6, max_rounds=3, label_strategy="vote",
              annotation_samples=2, min_majority=0.5)
    caught = {}

    def run():
        try:
            _load(tmp_path / "cache", **kw)
        except ServerError as e:
            caught["error"] = e

    with real_llama_server(tmp_path, logits_all=False, port=port):
        worker = threading.Thread(target=run)
        worker.start()
        journal = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and worker.is_alive():
            journal = next((tmp_path / "cache").rglob("journal.jsonl"), None)
            if journal is not None and journal.read_text().count("\n") >= 1:
                break
            time.sleep(0.2)
    worker.join(timeout=300)  # the server is gone: the run must fail, not hang
    assert not worker.is_alive() and "error" in caught, "the run finished before the server was killed: make it longer"
    assert "Finished batches are kept" in str(caught["error"]) and str(journal.parent) in str(caught["error"])
    kept = journal.read_text()
    assert kept.count("\n") >= 1
    with real_llama_server(tmp_path, logits_all=False, port=port):
        resumed = _rows(_load(tmp_path / "cache", **kw))
    after = journal.read_text()
    assert after.startswith(kept)  # the finished batches were reused, not asked again
    keys = [json.loads(line)["key"] for line in after.splitlines()]
    assert len(keys) == len(set(keys))  # no batch done twice
    inputs = [i for i, _, _ in resumed]
    assert resumed and len(inputs) == len(set(inputs))  # no row duplicated
