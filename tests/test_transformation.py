"""ReBase transformation: the prompt, JSON parsing and repair, validation, and accounting."""

import json
from collections import Counter

import pytest

from selfguide import FilterReport, Task
from selfguide.engines import OpenAIEngine, TransformersEngine
from selfguide.rebase import Transformer, parse_answer
from selfguide.rebase.transformation import ANSWER_PREFIX, final_answer, record, transformation_prompt
from tests.conftest import FIXTURES as TASKS
from tests.conftest import letter_labelled
from tests.rebase_support import ScriptedServer, source_record

GOOD = {"input": "A great movie", "output": "positive"}


@pytest.fixture(scope="module")
def sentiment():
    return Task.load(TASKS / "sentiment_task.json")


@pytest.fixture(scope="module")
def rewrite():
    return Task.load(TASKS / "rewrite_task.json")


@pytest.mark.parametrize(
    "answer, repaired",
    [
        ('{"input": "A great movie", "output": "positive"}', False),
        ('{"input": "A great movie", "output": "positive"}\n{"input": "next one"', False),  # rest ignored
        ('```json\n{"input": "A great movie", "output": "positive"}\n```', False),
        ('{"Input": "A great movie", "OUTPUT": "positive"}', False),
        ('{"input": "A great movie", "output": "positive",}', True),  # trailing comma
        ("{'input': 'A great movie', 'output': 'positive'}", True),  # Python quoting
        ('{"input": "A great movie", "output": \u201cpositive\u201d}', True),  # typographic quotes
        ('{"input": "A great movie", "output": "positive', True),  # cut off by the token limit
        ('{"input": "A great movie" "output": "positive"}', True),  # a missing comma
        ('{"input": "A great movie", output: "positive"}', True),  # an unquoted key
        ('{"input": "A great movie", "output": "positive",}\n{"input": "next one"', True),  # the first of several
    ],
)
def test_answers_parse_or_are_repaired(answer, repaired):
    parsed = parse_answer(answer)
    assert parsed.fields == GOOD and parsed.repaired is repaired and parsed.error is None


def test_unescaped_quotes_are_recovered():
    parsed = parse_answer('{"input": "He said "no" twice", "output": "negative"}')
    assert parsed.fields == {"input": 'He said "no" twice', "output": "negative"} and parsed.repaired


def test_raw_newlines_and_numbers_are_accepted():
    assert parse_answer('{"input": "line one\nline two", "output": 42}').fields == {"input": "line one\nline two", "output": "42"}


@pytest.mark.parametrize(
    "answer, error",
    [
        ("no json at all", "malformed_json"),
        ('{input = A great movie; output = positive}', "malformed_json"),
        ('{"input": "A great movie"}', "missing_field"),
        ('{"question": "A great movie", "answer": "positive"}', "missing_field"),
        ('{"input": "  ", "output": "positive"}', "empty_field"),
        ('{"input": "A great movie", "output": ["positive"]}', "empty_field"),
        pytest.param('{"input": "A great movie", "output": ' + "{" * 600, "malformed_json", id="nested-deeper-than-json_repair-reads"),
    ],
)
def test_unusable_answers_are_reported_not_raised(answer, error):
    parsed = parse_answer(answer)
    assert parsed.fields is None and parsed.error == error


def test_final_answer_is_read_from_the_end_of_the_reasoning():
    assert final_answer("The answer is not obvious. It praises the cast, so the answer is: **Positive**.") == "Positive"
    assert final_answer("It praises the cast.") is None


def test_prompt_shows_instruction_demos_labels_and_the_clipped_record(sentiment):
    record_ = {"text": "word " * 400, "label": "neg", "empty": ""}
    prompt = transformation_prompt(sentiment, record_)
    assert prompt.startswith(sentiment.instruction)
    for demo in sentiment.examples:
        assert json.dumps({"input": demo.input, "output": demo.output}) in prompt
    assert "The answer must be one of: positive, negative." in prompt
    assert "reason step by step" not in prompt
    shown = source_record(prompt)
    assert set(shown) == {"text", "label"} and len(shown["text"]) == 603 and shown["text"].endswith("...")
    assert prompt.endswith("New example: " + ANSWER_PREFIX)
    first = sentiment.examples[0]
    worked = f'Source record: {{"text": "{first.input}"}}\nNew example: {{"input": "{first.input}", "output": "{first.output}"}}'
    assert worked in prompt  # one rewrite shown whole, made from the first demo
    cot = transformation_prompt(sentiment, record_, cot=True)
    assert 'end with "So the answer is <answer>."' in cot and worked not in cot


class _Counting(OpenAIEngine):
    """An engine is needed only for its token counts here; nothing is generated."""

    def __init__(self):
        super().__init__("http://127.0.0.1:9", model="unused")


def test_token_budget_covers_the_longest_field_and_the_reasoning(sentiment):
    transformer = Transformer(sentiment, _Counting())
    short = transformer.params([{"text": "short"}]).max_new_tokens
    long = transformer.params([{"text": "short"}, {"text": "x" * 2000}]).max_new_tokens
    assert long - short >= 600 / 4 - 2 * 11  # the clipped field, less the demo-sized floor
    assert Transformer(sentiment, _Counting(), cot=True).params([{"text": "short"}]).max_new_tokens == short + 192
    assert Transformer(sentiment, _Counting(), max_new_tokens=7).params([{"text": "x" * 2000}]).max_new_tokens == 7


def _judge(task, answer, cot=False, source_label=None):
    return Transformer(task, _Counting(), cot=cot).judge(answer, source_label)


def test_labels_are_matched_to_the_label_set(sentiment):
    ok = _judge(sentiment, '{"input": "Not my kind of film at all.", "output": "Negative."}')
    assert (ok.status, ok.output) == ("ok", "negative")
    assert _judge(sentiment, '{"input": "Not my kind of film at all.", "output": "neutral"}').status == "label_not_in_set"


def test_aliases_name_letter_labels_in_the_prompt_and_read_back_as_them(sentiment):
    letter = Task.load(letter_labelled(sentiment.to_dict()))
    assert "The answer must be one of: P (positive), N (negative, bad)." in transformation_prompt(letter, {"text": "x"})
    outcome = _judge(letter, '{"input": "Not my kind of film at all.", "output": "Bad"}')
    assert (outcome.status, outcome.output) == ("ok", "N")


def test_a_source_label_overrides_the_rewriters(sentiment):
    answer = '{{"input": "Not my kind of film at all.", "output": "{}"}}'
    for said in ("positive", "meh", "Negative"):  # another label, none at all, the same label
        outcome = _judge(sentiment, answer.format(said), source_label="negative")
        assert (outcome.status, outcome.output, outcome.label_from_source) == ("ok", "negative", True)
    plain = _judge(sentiment, answer.format("positive"))
    assert (plain.output, plain.label_from_source) == ("positive", False)


def test_reasoning_that_ends_in_another_label_than_the_sources_is_dropped(sentiment):
    reasoning = json.dumps({"input": "Dull, with a plot full of holes.", "output": "It is lively. So the answer is positive."})
    assert _judge(sentiment, reasoning, cot=True, source_label="negative").status == "disagrees_with_source"
    kept = _judge(sentiment, reasoning, cot=True, source_label="positive")
    assert (kept.status, kept.output, kept.label_from_source) == ("ok", "positive", True)


def test_copied_demos_and_gold_rows_are_dropped(sentiment):
    demo = sentiment.examples[0].input
    assert _judge(sentiment, json.dumps({"input": demo.upper(), "output": "positive"})).status == "copied_demo"
    gold = sentiment.gold[0].input
    assert _judge(sentiment, json.dumps({"input": f"Honestly: {gold}", "output": "positive"})).status == "gold_overlap"


def test_chain_of_thought_keeps_reasoning_and_answer_apart(sentiment, rewrite):
    reasoning = "The reviewer calls it dull and says the plot has holes. So the answer is Negative."
    outcome = _judge(sentiment, json.dumps({"input": "Dull, with a plot full of holes.", "output": reasoning}), cot=True)
    assert (outcome.status, outcome.output, outcome.reasoning) == ("ok", "negative", reasoning)
    missing = _judge(sentiment, json.dumps({"input": "Dull, with a plot full of holes.", "output": "negative"}), cot=True)
    assert missing.status == "no_final_answer"
    generated = _judge(
        rewrite,
        json.dumps({"input": "The boy kicked the ball.", "output": "Object first, then the agent. So the answer is The ball was kicked by the boy."}),
        cot=True,
    )
    assert (generated.status, generated.output) == ("ok", "The ball was kicked by the boy")


def test_a_teacher_answering_badly_is_counted_never_fatal(sentiment):
    replies = {
        "fine": 'Good fun for the family.", "output": "positive"}',
        "comma": 'Fun, but far too long.", "output": "negative",}',
        "cut": "Wonderful score and a brave",
        "nonsense": ' "output" ??? ',  # repaired, its one field an input holding the rest
        "braces": '", "output": ' + "{" * 600,
        "label": 'Middling at best.", "output": "mixed"}',
    }
    with ScriptedServer(lambda prompt, body: replies[source_record(prompt)["key"]]) as server:
        transformer = Transformer(sentiment, OpenAIEngine(server.base_url, model="m"))
        outcomes = transformer.transform([{"key": k, "text": f"{k} row"} for k in replies])
    assert [o.status for o in outcomes] == ["ok", "ok", "missing_field", "missing_field", "malformed_json", "label_not_in_set"]
    report = FilterReport()
    record(outcomes, report)
    assert report.to_dict() == {
        "transform": {"in": 6, "out": 2, "dropped": {"missing_field": 2, "malformed_json": 1, "label_not_in_set": 1}},
        "json_repair": {"in": 4, "out": 3, "dropped": {"malformed_json": 1}},
    }


def test_a_random_model_never_crashes_the_stage(sentiment, tiny_model_dir):
    engine = TransformersEngine.from_pretrained(str(tiny_model_dir), dtype="float32", batch_size=4)
    transformer = Transformer(sentiment, engine, max_new_tokens=24)
    outcomes = transformer.transform([{"text": "A fine film.", "label": "pos"}, {"text": "Awful.", "label": "neg"}])
    assert len(outcomes) == 2
    # Whatever a random model writes becomes a status the report can count, never an exception.
    known = {"ok", "malformed_json", "missing_field", "empty_field", "label_not_in_set", "copied_demo", "gold_overlap"}
    assert {o.status for o in outcomes} <= known
    report = FilterReport()
    record(outcomes, report)
    stage = report.to_dict()["transform"]
    assert stage["out"] == sum(o.status == "ok" for o in outcomes)
    assert stage["dropped"] == {s: n for s, n in Counter(o.status for o in outcomes).items() if s != "ok"}
