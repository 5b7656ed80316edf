"""The `rebase` dataset builder through `load_dataset`: columns, provenance, caching, resume, errors.

The teacher is a scripted OpenAI-compatible server on loopback; the datastore, retrieval,
transformation, engine and builder are the real code.
"""

import json

import pytest
from datasets import load_dataset

import selfguide
from selfguide.engines import ServerError
from selfguide.prompts import training_prompt
from selfguide.rebase import DatastoreError, build_datastore
from selfguide.task import Task
from tests.conftest import FIXTURES as TASKS
from tests.rebase_support import FIXTURES, ScriptedServer, copying_teacher, fixture_store, free_port, source_record

TASK = TASKS / "sentiment_task.json"
SOURCE_COLUMNS = {
    "reasoning", "source_dataset", "source_config", "source_split", "source_row_id", "source_license", "retrieval_score", "label_from_source"
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fixture_store(tmp_path_factory.getbasetemp())


def _load(store_path, base_url, cache_dir, **kw):
    return load_dataset("rebase", task=str(TASK), datastore=str(store_path), base_url=base_url, cache_dir=str(cache_dir), **kw)


def test_load_dataset_turns_retrieved_rows_into_task_rows(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any working directory
    with ScriptedServer(copying_teacher) as server:
        ds = _load(store.path, server.base_url, tmp_path / "cache", num_examples=4)
    train, test = ds["train"], ds["test"]
    assert set(train.column_names) == {"input", "output", "prompt", "completion", "label"} | SOURCE_COLUMNS
    assert len(train) == 4
    task = Task.load(TASK)
    by_id = {json.loads(line)["id"]: json.loads(line) for line in (FIXTURES / "reviews.jsonl").open()}
    for row in train:
        source = by_id[row["source_row_id"]]  # every row points back to the review it was made from
        assert (row["source_dataset"], row["source_split"], row["source_license"]) == (source["dataset"], source["split"], source["license"])
        assert (row["input"], row["output"]) == (source["text"], source["label"])
        assert row["label"] == task.labels.index(row["output"])
        assert row["prompt"] == training_prompt(task, row["input"]) and row["completion"] == " " + row["output"]
        assert row["retrieval_score"] > 0 and row["reasoning"] == ""
    assert [r["input"] for r in test] == [g.input for g in task.gold]
    assert set(test["source_dataset"]) == {""} and set(test["retrieval_score"]) == {-1.0}
    report = selfguide.filter_report(ds).to_dict()
    assert report["retrieve"]["out"] == 8  # retrieve_factor 2 x 4 examples
    assert report["transform"] == {"in": 8, "out": 8, "dropped": {}}
    # The teacher saw the demos and the retrieved review, and was asked for greedy JSON.
    first = server.requests[0]
    assert first["temperature"] == 0.0 and task.examples[0].input in first["prompt"]
    assert source_record(first["prompt"])["text"] in {r["text"] for r in by_id.values()}


def test_rows_cut_to_num_examples_are_in_the_report(store, tmp_path):
    with ScriptedServer(copying_teacher) as server:
        ds = _load(store.path, server.base_url, tmp_path / "cache", num_examples=3)  # one batch rewrites all 6 retrieved
    report = selfguide.filter_report(ds).to_dict()
    assert report["transform"]["out"] == 6
    assert report["final"] == {"in": 6, "out": 3, "dropped": {"over_budget": 3}}
    assert list(report)[-1] == "final" and len(ds["train"]) == 3


def _always_positive(prompt, body):
    reply = json.loads('{"input": "' + copying_teacher(prompt, body))
    return json.dumps(reply["input"])[1:] + ', "output": "positive"}'


@pytest.mark.parametrize("source_labels", [True, False])
def test_rows_keep_their_source_datasets_labels_over_the_rewriters(store, tmp_path, source_labels):
    with ScriptedServer(_always_positive) as server:
        train = _load(store.path, server.base_url, tmp_path / "cache", num_examples=6, source_labels=source_labels)["train"]
    by_id = {json.loads(line)["id"]: json.loads(line) for line in (FIXTURES / "reviews.jsonl").open()}
    reviews = [r for r in train if r["source_dataset"] == "imdb_small"]
    gold = [by_id[r["source_row_id"]]["label"] for r in reviews]
    assert "negative" in gold
    if source_labels:
        assert [r["output"] for r in reviews] == gold and all(r["label_from_source"] for r in reviews)
    else:
        assert {r["output"] for r in reviews} == {"positive"} and not any(train["label_from_source"])
    assert not any(r["label_from_source"] for r in train if r["source_dataset"] != "imdb_small")


def test_second_call_is_cached_and_the_datastore_content_is_the_key(tmp_path):
    path = tmp_path / "store"
    build_datastore(FIXTURES / "reviews.jsonl", path, index_factory="Flat")
    with ScriptedServer(copying_teacher) as server:
        first = _load(path, server.base_url, tmp_path / "cache", num_examples=2)
        asked = len(server.requests)
        again = _load(path, server.base_url, tmp_path / "cache", num_examples=2, concurrency=1, api_key="not-a-key-change")
        assert len(server.requests) == asked  # served from the cache: no teacher call
        assert again["train"].to_list() == first["train"].to_list()
        build_datastore([FIXTURES / "reviews.jsonl", FIXTURES / "recipes.csv"], path, index_factory="Flat", overwrite=True)
        _load(path, server.base_url, tmp_path / "cache", num_examples=2)
        assert len(server.requests) > asked  # same path, new content: built afresh


def test_a_failed_run_resumes_from_its_journal(store, tmp_path):
    healthy = [False]
    answered = []

    def flaky(prompt, body):
        if not healthy[0] and len(answered) >= 2:
            return 400, {"error": "quota exhausted"}
        answered.append(prompt)
        return copying_teacher(prompt, body)

    with ScriptedServer(flaky) as server:
        with pytest.raises(ServerError, match="quota exhausted"):
            _load(store.path, server.base_url, tmp_path / "cache", num_examples=4, batch_size=2, concurrency=1)
        done_first = list(answered)
        healthy[0] = True
        ds = _load(store.path, server.base_url, tmp_path / "cache", num_examples=4, batch_size=2, concurrency=1)
    assert len(done_first) == 2 and len(ds["train"]) == 4
    # The batch finished before the failure came from the journal; only the rest was asked again.
    assert not set(done_first) & set(answered[2:])
    assert len(answered) == 4


def test_chain_of_thought_rows_keep_reasoning_and_answer(store, tmp_path):
    def reasoning_teacher(prompt, body):
        record = source_record(prompt)
        reasoning = f"The reviewer sounds {record['label']} about the film. So the answer is {record['label'].title()}."
        return json.dumps(record["text"])[1:] + ", " + json.dumps({"output": reasoning})[1:]

    with ScriptedServer(reasoning_teacher) as server:
        ds = _load(store.path, server.base_url, tmp_path / "cache", num_examples=3, cot=True)
    for row in ds["train"]:
        assert row["reasoning"].endswith(f"So the answer is {row['output'].title()}.")
        assert row["completion"] == " " + row["reasoning"]
        assert row["output"] in ("positive", "negative")


def test_a_teacher_that_only_writes_nonsense_fails_with_the_report(store, tmp_path):
    with ScriptedServer(lambda prompt, body: '", "output": }') as server:
        with pytest.raises(RuntimeError, match="(?s)no synthetic row survived.*transform.*empty_field: 4"):
            _load(store.path, server.base_url, tmp_path / "cache", num_examples=2)


def test_a_server_that_is_down_is_a_clear_error(store, tmp_path):
    port = free_port()
    with pytest.raises(ServerError, match=f"cannot reach the server at http://127.0.0.1:{port}"):
        _load(store.path, f"http://127.0.0.1:{port}", tmp_path / "cache", num_examples=2, max_retries=0)


def test_missing_or_unfinished_datastores_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="datastore: is missing"):
        load_dataset("rebase", task=str(TASK), cache_dir=str(tmp_path))
    from selfguide.builders.rebase import ReBaseConfig

    assert ReBaseConfig(task=str(TASK), datastore="store", exclude_datasets="imdb_*").exclude_datasets == ("imdb_*",)
    with pytest.raises(ValueError, match="dtype: 'bf16' is not one of"):  # not ignored when a server rewrites
        ReBaseConfig(task=str(TASK), datastore="store", base_url="http://127.0.0.1:9", dtype="bf16")
    with pytest.raises(ValueError, match="candidates: .* must be at least 1, got 0"):
        load_dataset("rebase", task=str(TASK), datastore=str(tmp_path), candidates=0, cache_dir=str(tmp_path))
    with pytest.raises(DatastoreError, match="no such folder"):
        _load(tmp_path / "nowhere", "http://127.0.0.1:9", tmp_path / "cache")
    (tmp_path / "half" / ".build").mkdir(parents=True)
    with pytest.raises(DatastoreError, match="incomplete"):
        _load(tmp_path / "half", "http://127.0.0.1:9", tmp_path / "cache")


def test_cli_rebase_errors_exit_cleanly(store, tmp_path):
    import subprocess
    import sys

    port = free_port()
    base = [sys.executable, "-m", "selfguide.cli", "generate", str(TASK), "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    down = subprocess.run(base + ["--method", "rebase", "--datastore", str(store.path), "--base-url", f"http://127.0.0.1:{port}", "--set", "max_retries=0"],
                          capture_output=True, text=True, timeout=300)
    assert down.returncode == 2 and f"http://127.0.0.1:{port}" in down.stderr and "Traceback" not in down.stderr
    missing = subprocess.run(base + ["--method", "rebase"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--datastore" in missing.stderr
