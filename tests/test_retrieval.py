"""ReBase retrieval on the fixture datastore with the real embedder: score, guard, dedupe, report."""

import numpy as np
import pytest

from selfguide import FilterReport, Task
from selfguide.rebase import ContaminationGuard, retrieve
from selfguide.rebase.datastore import embed
from selfguide.rebase.retrieval import carried_label, is_excluded
from tests.conftest import FIXTURES as TASKS
from tests.conftest import letter_labelled
from tests.rebase_support import fixture_store

WOODEN = {"r02", "r10", "r11"}  # one review, copied once and reworded once


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fixture_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def task():
    return Task.load(TASKS / "sentiment_task.json")  # named movie_sentiment, like a dataset in the store


def test_sentiment_task_retrieves_the_reviews_without_contamination_or_duplicates(store, task):
    report = FilterReport()
    # k=10 walks past every review, so each guard and the deduplication get their turn.
    rows = retrieve(store, task, 10, report=report)
    reviews, rest = rows[:8], rows[8:]
    assert {r.dataset for r in reviews} == {"imdb_small"}
    assert {r.dataset for r in rest} == {"news_topics"}  # off-topic rows only after every usable review
    ids = {r.row_id for r in reviews}
    assert "r09" not in ids  # quotes a gold test input
    assert len(ids & WOODEN) == 1
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    # With 256 candidates per demo every text of this small store is seen: all 32 rows are scored.
    assert report.to_dict()["retrieve"] == {
        "in": 32,
        "out": 10,
        "dropped": {"own_eval_source": 3, "gold_overlap": 1, "duplicate": 2, "below_top_k": 16},
    }


def _expected_scores(task, row, store):
    """The three ReBase terms of `row`, recomputed here from the embedder alone."""
    source = next(s for s in store.sources if s["dataset"] == row.dataset)
    cell_vecs = embed(store.text(store.cells([row.index])[0]))
    description = float(embed([task.instruction])[0] @ embed([source["description"]])[0])
    inputs = embed([e.input for e in task.examples])
    if not task.is_classification:
        best_input = np.mean([max(cell_vecs @ v) for v in inputs])
        return description, best_input, np.mean([max(cell_vecs @ v) for v in embed([e.output for e in task.examples])])
    label_sims = cell_vecs @ embed(task.labels + [a for names in task.label_aliases.values() for a in names]).T
    label_cell = int(np.argmax(label_sims.max(axis=1)))
    others = np.delete(cell_vecs, label_cell, axis=0)
    return description, np.mean([max(others @ v) for v in inputs]), label_sims.max()


@pytest.mark.parametrize("task_file", ["rewrite_task.json", "sentiment_task.json"])
def test_score_averages_description_input_and_output_similarities(store, task_file):
    task = Task.load(TASKS / task_file)
    for top in retrieve(store, task, 3):
        description, best_input, best_output = _expected_scores(task, top, store)
        assert top.description_score == pytest.approx(description, abs=1e-4)
        assert top.input_score == pytest.approx(best_input, abs=1e-4)
        assert top.output_score == pytest.approx(best_output, abs=1e-4)
        assert top.score == pytest.approx((description + best_input + best_output) / 3, abs=1e-4)


def test_a_classification_tasks_labels_score_alike(store, task):
    """Every review holds one of the task's labels, so none is favoured for which label it holds."""
    reviews = [r for r in retrieve(store, task, 10) if r.dataset == "imdb_small"]
    assert {r.content["label"] for r in reviews} == {"positive", "negative"}
    assert {round(r.output_score, 4) for r in reviews} == {1.0}
    assert all(r.label == r.content["label"] for r in reviews)


def test_a_row_carries_a_label_only_when_its_dataset_answers_in_the_tasks_labels(store):
    review = {"text": "Great fun.", "label": "positive"}
    assert carried_label(store, ["positive", "negative"], "imdb_small", "", review) == "positive"
    assert carried_label(store, ["Positive.", "Negative"], "imdb_small", "", review) == "Positive."
    # Other reviews say "negative", which this label set lacks: the column is not in the task's label space.
    assert carried_label(store, ["positive", "neutral"], "imdb_small", "", review) is None
    assert carried_label(store, ["positive", "negative"], "imdb_small", "", {"text": "Great fun."}) is None
    news = {"headline": "Late goal wins it", "topic": "sports"}
    assert carried_label(store, ["sports", "world", "business", "tech"], "news_topics", "", news) == "sports"


@pytest.fixture(scope="module")
def letter_task():
    """The reviews' labels say the words; this task's labels are letters, with the words as aliases."""
    return Task.load(letter_labelled(Task.load(TASKS / "sentiment_task.json").to_dict()))


def test_a_row_carries_a_label_written_as_an_alias(store, letter_task):
    review = {"text": "Great fun.", "label": "positive"}
    assert carried_label(store, ["P", "N"], "imdb_small", "", review) is None
    assert carried_label(store, ["P", "N"], "imdb_small", "", review, letter_task.label_aliases) == "P"


def test_aliases_are_output_queries_of_a_letter_labelled_task(store, letter_task):
    reviews = [r for r in retrieve(store, letter_task, 10) if r.dataset == "imdb_small"]
    assert {(r.content["label"], r.label) for r in reviews} == {("positive", "P"), ("negative", "N")}
    assert {round(r.output_score, 4) for r in reviews} == {1.0}  # the label cell is an alias, word for word
    top = retrieve(store, letter_task, 3)[0]
    assert top.output_score == pytest.approx(_expected_scores(letter_task, top, store)[2], abs=1e-4)


def test_narrow_candidate_lists_widen_until_k_rows_are_found(store, task):
    wide = [r.index for r in retrieve(store, task, 10)]
    narrow = [r.index for r in retrieve(store, task, 10, candidates=1)]
    assert narrow == wide


def test_excluded_datasets_never_come_back(store, task):
    report = FilterReport()
    rows = retrieve(store, task, 5, exclude_datasets=["imdb_*"], report=report)
    assert rows and all(r.dataset not in ("imdb_small", "movie_sentiment") for r in rows)
    assert report.to_dict()["retrieve"]["dropped"]["own_eval_source"] == 14


def test_rows_keep_their_provenance_and_content(store, task):
    row = retrieve(store, task, 1)[0]
    assert (row.license, row.config) == ("IMDb terms of use", "")
    assert set(row.content) == {"text", "label"} and row.content["label"] in ("positive", "negative")


def test_k_must_be_positive(store, task):
    with pytest.raises(ValueError, match="k: must be at least 1"):
        retrieve(store, task, 0)


@pytest.mark.parametrize(
    "dataset, patterns, excluded",
    [
        ("ni/task201_mnli_neutral_classification", ["ni/task20*"], True),
        ("ni/task201_mnli_neutral_classification", ["task201_mnli_neutral_classification"], True),
        ("p3/imdb_Movie_Expressed_Sentiment", ["imdb"], False),
        ("p3/imdb_Movie_Expressed_Sentiment", ["*imdb*"], True),
        ("glue", ["glue/sst2"], False),
    ],
)
def test_exclusion_patterns_match_whole_ids_or_their_parts(dataset, patterns, excluded):
    assert is_excluded(dataset, patterns) is excluded


def test_guard_matches_long_gold_texts_by_shared_ngrams():
    gold = "The committee approved the new budget for the city library after a long debate."
    guard = ContaminationGuard([gold])
    assert guard.overlaps("Reports say the committee approved the new budget for the city library after a long debate.")
    # Seven shared words (articles do not count), one short of an 8-gram.
    assert not guard.overlaps("Yesterday the committee approved the new budget for the city library.")


def test_guard_matches_shorter_gold_texts_only_whole():
    guard = ContaminationGuard(["I walked out halfway through.", "Yes"])
    assert guard.overlaps("Honestly, I walked out halfway through the second act.")
    assert not guard.overlaps("I walked out of the cinema.")
    assert guard.overlaps("yes!")  # under four words: equal after normalisation ...
    assert not guard.overlaps("Yes, it was fine.")  # ... but not merely contained


def test_guard_uses_gold_outputs_only_for_generation(task):
    assert not ContaminationGuard.for_task(task).overlaps("positive")
    rewrite = Task.load(TASKS / "rewrite_task.json")
    assert ContaminationGuard.for_task(rewrite).overlaps("Look: the postman was bitten by the dog, again.")
    assert not ContaminationGuard([])
