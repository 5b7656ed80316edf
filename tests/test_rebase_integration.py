"""ReBase end to end with the real models: the embedded embedder builds and searches a small
datastore, and the embedded student (its GGUF behind a real llama-cpp-python server) rewrites the
retrieved rows into task rows."""

import json

import pytest
from datasets import load_dataset

import selfguide
from selfguide.rebase import build_datastore
from selfguide.task import Task
from tests.conftest import FIXTURES as TASKS
from tests.rebase_support import FIXTURES, real_llama_server

pytestmark = pytest.mark.slow


def test_small_datastore_to_transformed_rows_with_the_real_models(tmp_path):
    store = build_datastore([FIXTURES / "reviews.jsonl", FIXTURES / "recipes.csv"], tmp_path / "store")
    task = Task.load(TASKS / "sentiment_task.json")
    reviews = {json.loads(line)["id"]: json.loads(line) for line in (FIXTURES / "reviews.jsonl").open()}
    with real_llama_server(tmp_path) as base_url:
        ds = load_dataset(
            "rebase", task=str(TASKS / "sentiment_task.json"), datastore=str(store.path), base_url=base_url,
            num_examples=2, retrieve_factor=1.5, batch_size=3, cache_dir=str(tmp_path / "cache"),
        )
    report = selfguide.filter_report(ds).to_dict()
    # The real embedder ranks the reviews above the recipes, and the task's own source is kept out.
    assert report["retrieve"]["out"] == 3 and report["retrieve"]["dropped"]["own_eval_source"] == 3
    transform = report["transform"]
    assert transform["in"] == 3
    train = ds["train"]
    assert len(train) == min(2, transform["out"]) >= 1  # every row the rewrite kept, up to the rows asked for
    for row in train:
        assert row["source_dataset"] == "imdb_small" and row["source_row_id"] in reviews
        assert row["output"] in task.labels and row["input"].strip()
