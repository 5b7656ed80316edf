"""Scale-out on a real local Ray (ray.init(num_cpus=2)): sharded SELF-GUIDE gives the rows the same shards give here,
a worker killed mid-shard is retried without losing or repeating a batch, `selfguide generate` runs one Ray job per
task, and a datastore embedded by Ray Data loads and searches like one built here."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from datasets import load_dataset

from selfguide.errors import ConfigError
from selfguide.synthesis.shards import shard_journal
from tests.conftest import FIXTURES
from tests.test_selfguide_builder import LOOSE

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

SENTIMENT = FIXTURES / "sentiment_task.json"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()


def _load(model, cache_dir, **kw):
    return load_dataset("selfguide", task=str(SENTIMENT), model=str(model), cache_dir=str(cache_dir), **{**LOOSE, **kw})


def _journal_keys(path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()] if path.exists() else []


def _work_dir(cache_dir):
    (journal,) = cache_dir.glob("selfguide_work/*/shard-0-of-2.jsonl")
    return journal.parent


def test_sharded_rows_are_the_same_on_ray_as_here(local_ray, tiny_model_dir, tmp_path):
    knobs = dict(num_examples=12, num_shards=2, prompts_per_batch=4)
    here = _load(tiny_model_dir, tmp_path / "here", **knobs)["train"]
    on_ray = _load(tiny_model_dir, tmp_path / "ray", ray_address="local", **knobs)["train"]
    assert on_ray.num_rows == here.num_rows == 12
    assert (on_ray["input"], on_ray["output"]) == (here["input"], here["output"])
    # The work was split: each shard journaled its own batches (b mod 2), none twice.
    work = _work_dir(tmp_path / "ray")
    keys = [_journal_keys(shard_journal(work, s, 2)) for s in range(2)]
    assert all(keys) and not set(keys[0]) & set(keys[1])
    assert all(int(k.split("/b")[1]) % 2 == s for s, ks in enumerate(keys) for k in ks)
    # ray_address is where the shards ran, not what they made: one cache entry serves both.
    assert _load(tiny_model_dir, tmp_path / "here", ray_address="local", **knobs)["train"]["input"] == here["input"]


def _shard_workers() -> list[psutil.Process]:
    """Ray names a worker's process after the task it runs."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("selfguide_shard" in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_a_worker_killed_mid_shard_is_retried_and_ends_with_the_same_rows(local_ray, tiny_model_dir, tmp_path):
    knobs = dict(num_examples=24, num_shards=2, prompts_per_batch=2, max_rounds=1)
    whole = _load(tiny_model_dir, tmp_path / "whole", **knobs)["train"]

    result, errors = {}, []

    def build():
        try:
            result["rows"] = _load(tiny_model_dir, tmp_path / "killed", ray_address="local", **knobs)["train"]
        except Exception as e:  # noqa: BLE001  (reported by the assertion below)
            errors.append(e)

    thread = threading.Thread(target=build)
    thread.start()
    killed_at, deadline = None, time.monotonic() + 300
    while killed_at is None and thread.is_alive() and time.monotonic() < deadline:
        journals = list((tmp_path / "killed").glob("selfguide_work/*/shard-0-of-2.jsonl"))
        done = _journal_keys(journals[0]) if journals else []
        workers = _shard_workers()
        if done and workers:  # shard 0 has finished a batch and is still working: kill its worker
            for w in workers:
                os.kill(w.pid, signal.SIGKILL)
            killed_at = len(done)
        time.sleep(0.05)
    thread.join(timeout=600)
    assert not errors, errors
    assert killed_at is not None, "the run ended before a worker could be killed mid-shard"

    rows = result["rows"]
    assert (rows["input"], rows["output"]) == (whole["input"], whole["output"])
    keys = _journal_keys(shard_journal(_work_dir(tmp_path / "killed"), 0, 2))
    assert len(keys) == len(set(keys)) > killed_at  # the retry went on from the journal and repeated nothing


def test_generate_over_a_folder_of_tasks_runs_one_ray_job_each_and_load_dataset_finds_them(local_ray, tiny_model_dir, tmp_path, capsys):
    from datasets import load_dataset_builder

    from selfguide.cli import main
    from tests.conftest import letter_labelled

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    spec = json.loads(SENTIMENT.read_text())
    (tasks / "words.json").write_text(json.dumps(dict(spec, name="sentiment_words")))
    (tasks / "letters.json").write_text(json.dumps(dict(letter_labelled(spec), name="sentiment_letters")))
    loose = [item for k, v in LOOSE.items() if not isinstance(v, tuple) for item in ("--set", f"{k}={v}")]
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["generate", str(tasks), "--model", str(tiny_model_dir), "--num-examples", "4", "--output-dir", str(out),
            "--cache-dir", str(cache), "--ray", *loose]
    assert main(argv) == 0, capsys.readouterr().err
    for name, file in (("sentiment_words", "words.json"), ("sentiment_letters", "letters.json")):
        written = [json.loads(line) for line in (out / name / "train.jsonl").read_text().splitlines()]
        assert written
        # The Ray job's build is the cache entry a plain load_dataset with the same arguments reads.
        builder = load_dataset_builder("selfguide", task=str(tasks / file), model=str(tiny_model_dir), num_examples=4,
                                       cache_dir=str(cache), **LOOSE)
        assert Path(builder.cache_dir).is_dir()
        assert builder.as_dataset()["train"]["input"] == [r["input"] for r in written]


DATASTORE_SOURCES = [str(FIXTURES / "datastore" / "reviews.jsonl"), str(FIXTURES / "datastore" / "recipes.csv")]


def test_a_datastore_embedded_on_ray_loads_and_searches_like_one_built_here(local_ray, tmp_path):
    import numpy as np

    from selfguide.rebase import Datastore, build_datastore

    here = build_datastore(DATASTORE_SOURCES, tmp_path / "here", index_factory="Flat", chunk_size=4)
    on_ray = build_datastore(DATASTORE_SOURCES, tmp_path / "ray", index_factory="Flat", chunk_size=4, ray_address="local", num_workers=2)
    assert on_ray.fingerprint == here.fingerprint  # where it was embedded is not what it holds
    assert on_ray.texts["text"] == here.texts["text"]
    np.testing.assert_allclose(on_ray.text_embeddings(), here.text_embeddings(), atol=1e-5)
    queries = here.text_embeddings()[:6]
    reloaded = Datastore.load(tmp_path / "ray")
    assert reloaded.search(queries, 3)[1].tolist() == on_ray.search(queries, 3)[1].tolist() == here.search(queries, 3)[1].tolist()


def test_a_killed_build_resumes_on_ray_from_its_finished_chunks(local_ray, tmp_path, monkeypatch):
    from selfguide.rebase import build_datastore, datastore
    from tests.rebase_support import kill_build_mid_embedding

    target = tmp_path / "store"
    finished = kill_build_mid_embedding(DATASTORE_SOURCES, target)
    sent = []
    real = datastore._embed_on_ray

    def recording(chunk_list, *args):  # Ray still does the work; this only notes which chunks it was given
        sent.extend(i for i, _ in chunk_list)
        yield from real(chunk_list, *args)

    monkeypatch.setattr(datastore, "_embed_on_ray", recording)
    store = build_datastore(DATASTORE_SOURCES, target, chunk_size=1, ray_address="local")
    assert sorted(sent) == sorted(set(range(len(store.texts))) - finished)
    whole = build_datastore(DATASTORE_SOURCES, tmp_path / "whole", chunk_size=1)
    assert store.fingerprint == whole.fingerprint and store.texts["text"] == whole.texts["text"]


def test_an_unreachable_cluster_names_the_address_and_the_fix(tiny_model_dir, tmp_path):
    code = (
        "from datasets import load_dataset; import selfguide\n"
        f"load_dataset('selfguide', task={str(SENTIMENT)!r}, model={str(tiny_model_dir)!r}, cache_dir={str(tmp_path)!r}, "
        "num_shards=2, ray_address='127.0.0.1:9')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "ray_address: cannot reach a Ray cluster at '127.0.0.1:9'" in out.stderr
    assert "Fix: start one there (`ray start --head`)" in out.stderr


def test_ray_needs_more_than_one_shard(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="ray_address: .*num_shards is 1. Fix: set num_shards=2"):
        _load(tiny_model_dir, tmp_path, ray_address="local")
