import pytest

from selfguide.metrics import answer_counts, exact_match, extract_label, match_label, most_frequent_answer, rouge_l, task_score


def test_extract_label_takes_the_last_label_and_prefers_longer():
    assert extract_label("It is positive... no wait, negative.", ["positive", "negative"]) == "negative"
    assert extract_label("Answer: not entailment", ["entailment", "not entailment"]) == "not entailment"
    assert extract_label("no idea", ["yes", "maybe"]) is None


def test_exact_match_normalises():
    assert exact_match("The answer is: Yes!", "yes", labels=["yes", "no"]) == 1.0
    assert exact_match("yes", "no") == 0.0


def test_letter_labels_survive_normalisation():
    """The label "A" is an article to SQuAD's normaliser; empty answers must not read as it."""
    labels = ["A", "B", "C", "D"]
    for empty in ("", ".", "the"):
        assert extract_label(empty, labels) is None and match_label(empty, labels) is None
        assert exact_match(empty, "A", labels) == 0.0
    assert extract_label("The answer is A.", labels) == "A" and exact_match("The answer is A.", "A", labels) == 1.0
    assert extract_label("(A)", labels) == match_label("(A)", labels) == "A"
    assert extract_label("A", labels) == match_label("A", labels) == "A"
    # Unlabelled answers are counted as exact match compares them, articles kept.
    assert answer_counts(["", "b.", "The end"], labels) == {"": 1, "B": 1, "the end": 1}
    # A label with no word in it is never named by empty text.
    assert extract_label("", ["?", "yes"]) is None and match_label("", ["?", "yes"]) is None


def test_rouge_l():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("", "x") == 0.0
    assert abs(rouge_l("a b c d", "a c") - 2 * (0.5 * 1.0) / 1.5) < 1e-9


def test_rouge_l_reads_words_of_any_script():
    assert rouge_l("Привет мир", "Пока") == 0.0
    assert rouge_l("Привет, мир!", "привет мир") == 1.0
    assert abs(rouge_l("مرحبا بالعالم", "مرحبا") - 2 * (0.5 * 1.0) / 1.5) < 1e-9
    assert rouge_l("...", " ... ") == 1.0 and rouge_l("...", "!!") == 0.0
    # Latin text keeps rouge_score's [a-z0-9] tokens, accents and all: "naïve" is "na ve" there.
    assert abs(rouge_l("naïve model", "naive model") - 0.4) < 1e-9


def test_task_score_scale():
    assert task_score("classification", ["yes", "no"], ["yes", "yes"], ["yes", "no"]) == 50.0


def test_most_frequent_answer_reads_answers_as_exact_match_does():
    labels = ["positive", "negative"]
    answers = ["Positive.", "I think it is positive", "negative", "No idea!"]
    assert most_frequent_answer(answers, labels) == ("positive", 50.0)
    assert answer_counts(answers, labels) == {"positive": 2, "negative": 1, "no idea": 1}
    assert most_frequent_answer(["No idea!", "no idea", "negative"], labels) == ("no idea", 100 * 2 / 3)
    with pytest.raises(ValueError, match="predictions"):
        most_frequent_answer([], labels)
