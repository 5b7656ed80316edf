import json

import datasets
import numpy as np
import pytest
from tests.rebase_support import FIXTURES, fixture_store, kill_build_mid_embedding

import selfguide.rebase.datastore as ds_module
from selfguide.rebase import Datastore, DatastoreError, Source, build_datastore
from selfguide.rebase.datastore import embed, evenly_spaced, text_columns


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fixture_store(tmp_path_factory.getbasetemp())


def _rows(store, dataset):
    return [r for r in store.rows if r["dataset"] == dataset]


def _source(store, dataset):
    return next(s for s in store.sources if s["dataset"] == dataset)


def test_every_source_kind_lands_with_its_provenance(store):
    datasets_in_store = {s["dataset"] for s in store.sources}
    assert datasets_in_store == {"imdb_small", "movie_sentiment", "recipes", "trivia", "news_topics"}
    assert len(store) == 14 + 6 + 6 + 6

    review = next(r for r in _rows(store, "imdb_small") if r["row_id"] == "r07")
    assert (review["split"], review["license"]) == ("test", "IMDb terms of use")
    assert json.loads(review["content"]) == {  # task_type, constant over imdb_small, is kept with the dataset
        "text": "A moving, beautifully directed film that stays with you.",
        "label": "positive",
    }

    recipe = _rows(store, "recipes")[2]
    assert recipe["row_id"] == "2"  # no id column: the row's position in the file
    assert json.loads(recipe["content"])["servings"] == 4  # numbers stay in the row ...
    assert recipe["cell_columns"] == ["title", "ingredients", "steps"]  # ... but are not embedded

    trivia = _rows(store, "trivia")[0]
    assert json.loads(trivia["content"]) == {"question": "What is the capital of Australia?", "answer": "Canberra"}

    news = _rows(store, "news_topics")
    assert json.loads(news[1]["content"])["topic"] == "sports"  # class ids become their names
    assert "sports" in store.text(news[1]["cell_ids"])
    assert _source(store, "news_topics")["license"] == "CC-BY-4.0"


def test_each_dataset_has_a_description_and_constant_columns_join_it(store):
    imdb = _source(store, "imdb_small")
    assert "task_type: sentiment" in imdb["description"]
    # A value shared by every row describes the dataset and is not embedded as a cell of each row.
    assert all("task_type" not in r["cell_columns"] for r in _rows(store, "imdb_small"))
    assert _source(store, "news_topics")["description"].startswith("news_topics. News headlines labelled")
    assert imdb["num_rows"] == 11


def test_a_file_of_one_class_keeps_its_label_with_the_dataset(tmp_path):
    from selfguide.rebase.retrieval import carried_label

    guideline = "Rate the review as the critic who wrote it would rate it."
    for name, label, texts in [("pos", "positive", ["Loved every minute of it.", "A joy to watch."]),
                               ("neg", "negative", ["Dull and far too long.", "I walked out halfway."])]:
        rows = [{"text": t, "label": label, "guideline": guideline} for t in texts]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    store = build_datastore([tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"], tmp_path / "store", index_factory="Flat")
    for row in store.rows:
        label = {"pos": "positive", "neg": "negative"}[row["dataset"]]
        content = json.loads(row["content"])
        # Constant columns are neither cells nor repeated in each row the rewriter reads ...
        assert content == {"text": content["text"]} and row["cell_columns"] == ["text"]
        # ... but stay with the dataset, so the row's own label is still carried.
        assert store.constant_columns(row["dataset"], row["config"]) == {"guideline": guideline, "label": label}
        assert carried_label(store, ["positive", "negative"], row["dataset"], row["config"], content) == label
    assert "label: negative" in _source(store, "neg")["description"]
    assert Datastore.load(store.path).constant_columns("neg", _source(store, "neg")["config"])["label"] == "negative"


def test_distinct_texts_are_embedded_once_with_unit_vectors(store):
    texts = store.texts["text"]
    assert len(texts) == len(set(texts))
    assert texts.count("negative") == 1
    vectors = store.text_embeddings()
    assert vectors.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(vectors[:3], embed(texts[:3]), atol=1e-5)


def test_index_is_saved_with_the_datastore_and_reloads_without_embedding(store, monkeypatch):
    query = embed(["a film with great acting"])
    before = store.search(query, 5)

    def no_embedding(*args, **kwargs):
        raise AssertionError("loading a datastore must not embed anything")

    monkeypatch.setattr(ds_module, "embed", no_embedding)
    reloaded = Datastore.load(store.path)
    index = reloaded.texts.get_index(Datastore.INDEX).faiss_index
    assert type(index).__name__ == "IndexHNSWFlat" and index.ntotal == len(reloaded.texts)
    after = reloaded.search(query, 5)
    np.testing.assert_array_equal(before[1], after[1])
    assert reloaded.fingerprint == store.fingerprint


def test_save_copies_a_datastore_that_loads_elsewhere(store, tmp_path):
    store.save(tmp_path / "copy")
    copy = Datastore.load(tmp_path / "copy")
    assert len(copy) == len(store) and copy.fingerprint == store.fingerprint
    assert (tmp_path / "copy" / "COMPLETE").read_text() == store.fingerprint


def test_max_rows_per_config_keeps_evenly_spaced_rows(tmp_path, capsys):
    rows = [{"id": f"q{i}", "question": f"Question number {i} about the weather?", "answer": f"answer {i}"} for i in range(20)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    store = build_datastore(path, tmp_path / "store", max_rows_per_config=4, index_factory="Flat")
    assert store.rows["row_id"] == ["q0", "q5", "q10", "q15"]
    assert store.meta["index_factory"] == "Flat"
    bars = capsys.readouterr().err  # both long stages of a build show their progress
    assert "Reading datastore sources: 100%" in bars and "1/1" in bars and "Embedding datastore" in bars


def test_evenly_spaced_reads_no_further_than_needed():
    def stream():
        i = 0
        while True:  # an endless stream: stopping early is the only way this test ends
            yield i
            i += 1

    assert [p for p, _ in evenly_spaced(stream(), 100, 4)] == [0, 25, 50, 75]
    assert [v for _, v in evenly_spaced(stream(), None, 3)] == [0, 1, 2]
    assert list(evenly_spaced(iter("abc"), 3, 10)) == [(0, "a"), (1, "b"), (2, "c")]


def test_hub_configs_without_text_or_too_large_are_skipped_with_a_reason():
    images = datasets.DatasetInfo(features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    assert "no text column" in ds_module._hub_skip_reason(images, 10**9)
    huge = datasets.DatasetInfo(features=datasets.Features({"text": datasets.Value("string")}), dataset_size=8 * 10**9)
    assert ds_module._hub_skip_reason(huge, 5 * 10**9).startswith("huge (8.0 GB")
    fine = datasets.DatasetInfo(features=datasets.Features({"text": datasets.Value("string")}), dataset_size=10**6)
    assert ds_module._hub_skip_reason(fine, 5 * 10**9) is None


def test_text_columns_see_through_labels_and_nesting():
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "context": datasets.Value("string"),
            "answers": {"text": datasets.List(datasets.Value("string")), "answer_start": datasets.List(datasets.Value("int32"))},
            "label": datasets.ClassLabel(names=["a", "b"]),
            "score": datasets.Value("float32"),
        }
    )
    assert text_columns(features) == ["context", "answers", "label"]


def test_translations_are_text():
    features = datasets.Features(
        {
            "translation": datasets.Translation(languages=["de", "en"]),
            "multi": datasets.TranslationVariableLanguages(languages=["de", "en", "fr"]),
        }
    )
    assert text_columns(features) == ["translation", "multi"]
    assert ds_module._hub_skip_reason(datasets.DatasetInfo(features=features), 10**9) is None  # WMT-style configs are read
    assert ds_module._text({"de": "Guten Morgen", "en": "Good morning"}) == "Guten Morgen; Good morning"


@pytest.fixture
def hub_stub(monkeypatch):
    """The three Hub calls of a Hub source answered locally: one repo, one config, two rows."""
    import types

    import huggingface_hub

    descriptions = {"hub": "Reviews from the Hub", "builder": "Reviews, as the loading script says"}

    class Api:
        def dataset_info(self, repo_id):
            return types.SimpleNamespace(gated=False, card_data=None, description=descriptions["hub"])

    def builder(repo_id, config):
        features = datasets.Features({"text": datasets.Value("string")})
        return types.SimpleNamespace(info=datasets.DatasetInfo(description=descriptions["builder"], features=features))

    rows = datasets.Dataset.from_dict({"text": ["A fine film.", "A poor film."]})
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: rows)
    return descriptions


def test_hub_source_keeps_the_users_name_and_description(hub_stub):
    def group(source):
        [found] = ds_module._hub_groups(source, None, 10**9, [])
        return found.dataset, found.description

    assert group(Source("org/reviews:default", name="my_reviews", description="My own words")) == ("my_reviews", "My own words")
    assert group(Source("org/reviews:default")) == ("org/reviews", "Reviews, as the loading script says")
    hub_stub["builder"] = ""
    assert group(Source("org/reviews:default")) == ("org/reviews", "Reviews from the Hub")


def test_unknown_hub_id_is_a_clear_error(tmp_path):
    # With the Hub reachable the id does not exist; without it the lookup fails: both name the id.
    with pytest.raises(DatastoreError, match="selfguide-tests/no-such-dataset-4f1c"):
        build_datastore("selfguide-tests/no-such-dataset-4f1c", tmp_path / "store")
    assert not (tmp_path / "store" / "COMPLETE").exists()


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("numbers.csv", "a,b\n1,2\n3,4\n", "no text column among \\['a', 'b'\\]"),
        ("empty.jsonl", "\n", "has no rows"),
        ("broken.jsonl", '{"text": "fine"}\n{"text": oops}\n', "line 2 is not valid JSON"),
        ("scalar.json", '{"text": "one object"}', "array of objects"),
    ],
)
def test_unusable_files_are_clear_errors(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(DatastoreError, match=match):
        build_datastore(tmp_path / name, tmp_path / "store")


def test_bad_source_specs_are_clear_errors(tmp_path):
    with pytest.raises(DatastoreError, match="no such file"):
        build_datastore(tmp_path / "missing.jsonl", tmp_path / "store")
    with pytest.raises(DatastoreError, match="neither an existing file nor a Hub dataset id"):
        build_datastore("not a dataset id!", tmp_path / "store")
    with pytest.raises(DatastoreError, match="none given"):
        build_datastore([], tmp_path / "store")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(DatastoreError, match="is not a datastore"):
        build_datastore(FIXTURES / "recipes.csv", tmp_path / "occupied")


def test_overwrite_never_deletes_a_folder_that_is_not_a_datastore(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    source = folder / "recipes.csv"
    source.write_bytes((FIXTURES / "recipes.csv").read_bytes())
    for target in (folder, source):  # a folder of user files, the source file itself
        with pytest.raises(DatastoreError, match="is not a datastore. Fix: choose an empty or new folder"):
            build_datastore(source, target, overwrite=True)
    assert source.read_bytes() == (FIXTURES / "recipes.csv").read_bytes()


def test_local_paths_that_cannot_be_read_are_clear_errors(tmp_path):
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["a row"]}).save_to_disk(str(saved))
    with pytest.raises(DatastoreError, match="a folder, not a file.*datasets.load_from_disk"):
        build_datastore(saved, tmp_path / "store")
    for missing in ("rows.txt", "rows.tsv", "./rows", "data/train/rows", str(tmp_path / "rows")):
        with pytest.raises(DatastoreError, match="no such file"):
            build_datastore(missing, tmp_path / "store")
    (tmp_path / "rows.tsv").write_text("text\ta row\n")
    with pytest.raises(DatastoreError, match="unsupported file type '.tsv'"):
        build_datastore(tmp_path / "rows.tsv", tmp_path / "store")
    for hub_id in ("org/name", "org/OpenHermes-2.5", "org/name:config", "imdb"):
        assert ds_module._kind(Source(hub_id)) == "hub"


@pytest.mark.parametrize("factory", ["IVF", "Nonsense", "PQ7"])  # PQ7: 384-d vectors do not split into 7 parts
def test_a_bad_index_factory_fails_before_any_source_is_read(tmp_path, monkeypatch, factory):
    def never(*args, **kwargs):
        raise AssertionError("a bad index_factory must be reported before reading or embedding")

    monkeypatch.setattr(ds_module, "_collect", never)
    monkeypatch.setattr(ds_module, "embed", never)
    with pytest.raises(DatastoreError, match=f"index_factory '{factory}': .*Fix: use .*'HNSW32'"):
        build_datastore(FIXTURES / "recipes.csv", tmp_path / "store", index_factory=factory)


def _count_embedded_texts(monkeypatch) -> list:
    """The texts embedded from now on, in order: the real embedder still runs."""
    embedded = []
    real_embed = ds_module.embed

    def counting_embed(texts, *args, **kwargs):
        embedded.extend(texts)
        return real_embed(texts, *args, **kwargs)

    monkeypatch.setattr(ds_module, "embed", counting_embed)
    return embedded


def test_trained_indexes_build_and_too_few_texts_keep_the_embeddings_for_the_fix(tmp_path, monkeypatch):
    store = build_datastore(FIXTURES / "recipes.csv", tmp_path / "ivf", index_factory="IVF2,Flat")
    assert type(store.texts.get_index(Datastore.INDEX).faiss_index).__name__ == "IndexIVFFlat"
    assert store.search(store.text_embeddings([0]), 1)[1][0][0] == 0

    with pytest.raises(DatastoreError, match="index_factory 'IVF64,Flat': cannot be trained on this datastore's 18 texts"):
        build_datastore(FIXTURES / "recipes.csv", tmp_path / "store", index_factory="IVF64,Flat")
    embedded = _count_embedded_texts(monkeypatch)
    fixed = build_datastore(FIXTURES / "recipes.csv", tmp_path / "store", index_factory="Flat")
    assert embedded == fixed.sources["description"]  # the rows' texts came from the failed build's work
    assert fixed.meta["index_factory"] == "Flat" and fixed.fingerprint != store.fingerprint


def test_loading_a_missing_or_foreign_folder_says_what_to_do(tmp_path):
    with pytest.raises(DatastoreError, match="no such folder.*build_datastore"):
        Datastore.load(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatastoreError, match="incomplete \\(it is not a datastore\\)"):
        Datastore.load(tmp_path / "plain")


def test_interrupted_build_is_never_taken_as_whole_and_resumes(tmp_path, monkeypatch):
    sources = [str(FIXTURES / "reviews.jsonl"), str(FIXTURES / "recipes.csv")]
    target = tmp_path / "store"
    done_before = len(kill_build_mid_embedding(sources, target))
    assert not (target / "COMPLETE").exists()
    with pytest.raises(DatastoreError, match="incomplete \\(its build was interrupted\\)"):
        Datastore.load(target)

    embedded = _count_embedded_texts(monkeypatch)
    store = build_datastore(sources, target, chunk_size=1)
    texts = store.texts["text"]
    descriptions = store.sources["description"]
    # Only the chunks the killed run had not finished were embedded again (plus the descriptions).
    assert len(embedded) == len(texts) - done_before + len(descriptions)
    np.testing.assert_allclose(store.text_embeddings(), embed(texts), atol=1e-5)
    assert not (target / ".build").exists()
    assert Datastore.load(target).fingerprint == store.fingerprint


def test_same_sources_reuse_a_datastore_and_other_sources_need_overwrite(tmp_path, monkeypatch):
    first = build_datastore(FIXTURES / "recipes.csv", tmp_path / "store", index_factory="Flat")
    real_embed = ds_module.embed

    def no_embedding(*args, **kwargs):
        raise AssertionError("a complete datastore of the same sources must be reused")

    monkeypatch.setattr(ds_module, "embed", no_embedding)
    assert build_datastore(FIXTURES / "recipes.csv", tmp_path / "store", index_factory="Flat").fingerprint == first.fingerprint
    moved = tmp_path / "elsewhere" / "recipes.csv"  # same bytes, another path and mtime
    moved.parent.mkdir()
    moved.write_bytes((FIXTURES / "recipes.csv").read_bytes())
    assert build_datastore(moved, tmp_path / "store", index_factory="Flat").fingerprint == first.fingerprint
    monkeypatch.setattr(ds_module, "embed", real_embed)
    moved.write_bytes(moved.read_bytes() + b"\n")
    with pytest.raises(DatastoreError, match="built from other sources. Fix: pass overwrite=True"):
        build_datastore(moved, tmp_path / "store", index_factory="Flat")
    with pytest.raises(DatastoreError, match="built with index_factory='Flat', not 'HNSW32'. Fix: pass overwrite=True"):
        build_datastore(FIXTURES / "recipes.csv", tmp_path / "store", index_factory="HNSW32")
    with pytest.raises(DatastoreError, match="overwrite=True"):
        build_datastore(Source(FIXTURES / "recipes.csv", description="Home cooking"), tmp_path / "store")
    second = build_datastore(Source(FIXTURES / "recipes.csv", description="Home cooking"), tmp_path / "store", overwrite=True)
    assert second.fingerprint != first.fingerprint
    assert "Home cooking" in second.sources["description"][0]

    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    (tmp_path / "store" / "meta.json").write_text(json.dumps(dict(meta, format=meta["format"] - 1)))
    with pytest.raises(DatastoreError, match="built by another version of selfguide. Fix: pass overwrite=True"):
        build_datastore(FIXTURES / "recipes.csv", tmp_path / "store")


def test_the_datastore_command_builds_reuses_and_reports_bad_sources(tmp_path, capsys):
    from selfguide.cli import main

    target = tmp_path / "store"
    argv = ["datastore", str(FIXTURES / "reviews.jsonl"), str(FIXTURES / "recipes.csv"), "--output-dir", str(target),
            "--max-rows-per-config", "3", "--index-factory", "Flat"]
    assert main(argv) == 0
    store = Datastore.load(target)
    assert store.meta["index_factory"] == "Flat"
    per_dataset = {s["dataset"]: sum(r["dataset"] == s["dataset"] for r in store.rows) for s in store.sources}
    assert per_dataset == {"imdb_small": 3, "movie_sentiment": 3, "recipes": 3}  # reviews.jsonl holds two
    assert "Datastore(9 rows" in capsys.readouterr().out

    assert main(argv) == 0  # same sources: reused as it is
    assert Datastore.load(target).fingerprint == store.fingerprint

    other = ["datastore", str(FIXTURES / "recipes.csv"), "--output-dir", str(target), "--index-factory", "Flat"]
    assert main(other) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert Datastore.load(target).fingerprint == store.fingerprint  # the refused build left the store alone
    assert main([*other, "--overwrite", "--max-rows-per-config", "0"]) == 0
    assert len(Datastore.load(target)) == 6  # 0 keeps every row of recipes.csv

    assert main(["datastore", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "other")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["datastore", str(FIXTURES / "recipes.csv"), "--output-dir", str(tmp_path / "other"), "--embedder", str(tmp_path / "no-model")]) == 2
    assert "embedder" in capsys.readouterr().err and not (tmp_path / "other").exists()
