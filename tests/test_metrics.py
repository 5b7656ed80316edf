import pytest
from rouge_score.rouge_scorer import RougeScorer

from selfguide import Task
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


def test_rouge_l_is_rouge_score_as_natural_instructions_calls_it():
    """NI's evaluation: RougeScorer(["rougeL"], use_stemmer=True) on the raw texts, the F-measure."""
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [
        ("The cats were running to the houses.", "A cat runs to its house"),
        ("Generated: 42 apples, (mostly) red!", "42 red apples"),
        ("naïve model", "naive model"),  # rouge_score splits at the accent: "na ve model"
        ("studies studying studied", "study"),
        ("", "something"),
        ("...", "..."),  # no token on either side: 0.0, as rouge_score scores it
    ]
    for prediction, reference in pairs:
        assert rouge_l(prediction, reference) == scorer.score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l("...", " ... ") == 0.0 and abs(rouge_l("naïve model", "naive model") - 0.4) < 1e-9


def test_rouge_l_stems_as_natural_instructions_does():
    assert rouge_l("running", "runs") == 1.0
    assert abs(rouge_l("the dogs are running", "a dog runs") - 2 * (2 / 4 * 2 / 3) / (2 / 4 + 2 / 3)) < 1e-9


def test_rouge_l_reads_words_of_any_script():
    assert rouge_l("Привет мир", "Пока") == 0.0
    assert rouge_l("Привет, мир!", "привет мир") == 1.0
    assert abs(rouge_l("مرحبا بالعالم", "مرحبا") - 2 * (0.5 * 1.0) / 1.5) < 1e-9
    assert abs(rouge_l("東京 大阪", "東京") - 2 * (0.5 * 1.0) / 1.5) < 1e-9
    # A text with [a-z0-9] in it keeps rouge_score's tokens: here only "2024" on one side, nothing on the other.
    assert rouge_l("Привет мир 2024", "Привет мир") == 0.0


def test_a_row_with_several_references_scores_its_best():
    prediction = "he is running fast"
    best = rouge_l(prediction, "he runs fast")
    assert rouge_l(prediction, "a slow walk") == 0.0 < best < 1.0
    assert task_score("generation", [prediction], [("a slow walk", "he runs fast")]) == 100 * best
    assert task_score("generation", [prediction, prediction], ["a slow walk", ("a slow walk", "he runs fast")]) == 50 * best
    assert task_score("classification", ["no"], [("yes", "No.")], ["yes", "no"]) == 100.0


def test_natural_instructions_rows_carry_every_reference_to_scoring():
    long = "the answer is written out in many words"
    data = {
        "Definition": ["Rewrite the sentence."],
        "Positive Examples": [{"input": "x", "output": long}],
        "Instances": [{"input": "one", "output": ["a slow walk in the park today", "he runs fast every single day"]},
                      {"input": "two", "output": ["only one answer is given for this row"]}],
    }
    task = Task.from_natural_instructions(data, name="t")
    several, single = task.gold
    assert (several.output, several.answers) == ("a slow walk in the park today", tuple(data["Instances"][0]["output"]))
    assert (single.references, single.answers) == ((), (single.output,))
    predictions = ["he is running fast every day", "only one answer"]
    expected = (rouge_l(predictions[0], "he runs fast every single day") + rouge_l(predictions[1], single.output)) / 2
    assert task_score(task.type, predictions, [g.answers for g in task.gold]) == 100 * expected
    # The references survive the spec a task is saved as, and a row with one answer is written as before.
    again = Task.from_dict(task.to_dict(), name="t")
    assert again.gold == task.gold and again.fingerprint() == task.fingerprint()
    assert task.to_dict()["test"][1] == {"input": "two", "output": single.output}
    with pytest.raises(ValueError, match=r"test\[0\]\.references.*Fix:"):
        Task.from_dict(task.to_dict() | {"test": [{"input": "one", "output": "a", "references": ["b", "a"]}]})


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
