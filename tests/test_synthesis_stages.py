"""Each SELF-GUIDE stage on its own; the model calls use the tiny random model."""

import random
from collections import Counter

import pytest

from selfguide import Task
from selfguide.engines import SamplingParams, TransformersEngine
from selfguide.metrics import extract_label
from selfguide.synthesis.class_balance import assign_by_rank, class_cap, downsample_to_smallest
from selfguide.synthesis.input_filters import InputFilter, length_window, required_markers
from selfguide.synthesis.input_generation import SLOT_MARKER, build_input_prompt, draw_target_label
from selfguide.synthesis.label_calibration import label_by_channel, label_by_likelihood
from selfguide.prompts import row_fewshot_prompt
from selfguide.synthesis.output_annotation import annotation_prompts, vote
from selfguide.synthesis.output_filters import OutputFilter
from selfguide.task import Example


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return TransformersEngine.from_pretrained(str(tiny_model_dir), dtype="float32", batch_size=4)


def test_input_prompt_is_a_document_ending_in_the_target_slot(sentiment_task_dict):
    task = Task.load(sentiment_task_dict)
    low = [Example("So-so movie, decent ending.", "positive")]
    prompt = build_input_prompt(task, low, "negative", random.Random(0))
    assert prompt.rstrip().endswith(f"{SLOT_MARKER} 6 (answer: negative)")
    for ex in task.examples + low:
        assert ex.input in prompt
    for gold in task.gold:
        assert gold.input not in prompt
    orders = {build_input_prompt(task, low, "negative", random.Random(s)) for s in range(5)}
    assert len(orders) > 1, "example order must be shuffled per prompt"


def test_annotation_prompts_depend_on_the_row_not_on_the_batch(sentiment_task_dict):
    task = Task.load(sentiment_task_dict)
    inputs = [g.input for g in task.gold]
    whole = annotation_prompts(task, inputs, seed=3)
    assert whole == [row_fewshot_prompt(task, x, 3, i) for i, x in enumerate(inputs)]
    assert annotation_prompts(task, inputs[:2], seed=3) == whole[:2]
    for prompt in whole:
        assert all(f"Input: {e.input}\nOutput: {e.output}" in prompt for e in task.examples)
    assert len({row_fewshot_prompt(task, inputs[0], 3, i) for i in range(8)}) > 1, "each row gets its own demo order"


def test_target_labels_favour_short_classes():
    rng = random.Random(0)
    draws = [draw_target_label(["a", "b"], {"a": 10, "b": 0}, 10, rng) for _ in range(50)]
    assert draws.count("b") >= 49


def test_engine_is_seeded_and_honours_stop_strings(engine):
    params = SamplingParams(temperature=0.9, top_k=40, n=3, max_new_tokens=12, stop=("e",), seed=7)
    a = engine.generate(["Input: x", "Input: yy"], params)
    b = engine.generate(["Input: x", "Input: yy"], params)
    assert a == b and [len(s) for s in a] == [3, 3]
    assert all("e" not in text for samples in a for text in samples)
    other = engine.generate(["Input: x", "Input: yy"], SamplingParams(**{**vars(params), "seed": 8}))
    assert other != a


def test_length_window_has_a_floor():
    low, high = length_window([100, 101, 102], std_factor=2.0, floor=0.5)
    assert (low, high) == (50.5, 151.5)
    low, high = length_window([50, 150], std_factor=2.0, floor=0.1)
    assert (low, high) == (0.0, 200.0)


def test_input_filter_reasons():
    gold = ["Sentence 1: A cat sleeps. Sentence 2: An animal rests.", "Sentence 1: Kids play ball. Sentence 2: Children are outside."]
    f = InputFilter(gold_inputs=gold, instruction="Decide whether the two sentences agree with each other or not at all.")
    assert required_markers(gold) == {"Sentence 1", "Sentence 2"}
    assert f.accept("   ") == "empty"
    assert f.accept("x") == "length"
    assert f.accept("Hello! Sentence 1: A dog barks. Sentence 2: It is loud.") == "noise"
    assert f.accept("Sentence 1: A dog barks. Output: yes Sentence 2: Loud.") == "noise"
    assert f.accept("Decide whether the two sentences agree with each other or not at all, ok") == "instruction_leak"
    assert f.accept("A dog barks loudly at the mailman every single day.") == "format"
    assert f.accept(gold[0]) == "duplicate"
    ok = "Sentence 1: A man rides a red bike. Sentence 2: Someone is cycling."
    assert f.accept(ok) is None
    assert f.accept("Sentence 1: a MAN rides a red bike.  Sentence 2: someone is cycling") == "duplicate"
    assert f.accept("Sentence 1: A man rides a red bike. Sentence 2: Someone is cycling!!") == "duplicate"
    assert f.accept("Sentence 1: A man rides a red bike. Sentence 2: Someone is cycling fast.") == "near_duplicate"


def test_noise_rules_a_demonstration_input_breaks_are_left_out(caplog):
    greetings = ["Hi, my order #1234 never arrived. Can you check?", "Hi, I was charged twice for one concert ticket."]
    f = InputFilter(gold_inputs=greetings, instruction="Classify the support message by its topic.")
    assert f.accept("Hi, the app crashes whenever I open my profile.") is None
    assert f.accept("Hi, the app crashes. Output: technical problem") == "noise"  # the other rules still apply
    facts = ["Fact: Water boils at 100 degrees Celsius. Answer: 100 degrees", "Fact: The moon orbits the earth. Answer: the earth"]
    f = InputFilter(gold_inputs=facts, instruction="Write a question about the fact whose answer is the given answer.")
    assert required_markers(facts) == {"Fact", "Answer"}
    assert f.accept("Fact: Bees make honey out of nectar. Answer: honey") is None
    assert f.accept("Fact: Bees make honey. Answer: honey Output: What do bees make?") == "noise"
    # An instruction the inputs quote is no leak.
    quoted = ["Read the passage below and name its topic. Passage: Rain fell all day.", "Read the passage below and name its topic. Passage: Stocks rose."]
    f = InputFilter(gold_inputs=quoted, instruction="Read the passage below and name its topic in one word.")
    assert f.accept("Read the passage below and name its topic. Passage: A cat slept.") is None
    # The user's own pattern holds even against the demonstrations, with a warning.
    f = InputFilter(gold_inputs=greetings, instruction="Classify the support message by its topic.", extra_noise_patterns=[r"^hi\b"])
    assert f.accept("Hi, the app crashes whenever I open my profile.") == "noise"
    assert "extra_noise_patterns" in caplog.text


def test_vote_majority_threshold_and_ties():
    assert vote(["yes", "yes", "no"], 0.3).output == "yes"
    tie = vote(["the long answer", "short", "x y z w"], 0.3)
    assert tie.output == "short" and tie.votes == 1
    assert vote(["a", "b", "c", "d", "e"], 0.3).reason == "no_majority"
    mapped = vote(["I think yes", "nope", "YES."], 0.3, lambda s: extract_label(s, ["yes", "no"]))
    assert mapped.output == "yes" and mapped.votes == 2 and abs(mapped.agreement - 2 / 3) < 1e-9
    assert vote(["", " "], 0.3).reason == "no_answer"


def test_likelihood_labels_are_valid_and_calibration_changes_scores(engine, sentiment_task_dict):
    task = Task.load(sentiment_task_dict)
    inputs = ["Loved it.", "Hated it.", "Fine film.", "Awful."]
    plain = label_by_likelihood(engine, task, inputs, seed=0, calibrate=False)
    calibrated = label_by_likelihood(engine, task, inputs, seed=0, calibrate=True)
    assert all(a.output in task.labels and 0.5 <= a.agreement <= 1.0 for a in plain + calibrated)
    assert [a.agreement for a in plain] != [a.agreement for a in calibrated]


def test_channel_labels_score_each_input_under_each_label_s_input_prompt(engine, sentiment_task_dict):
    task = Task.load(sentiment_task_dict)
    inputs = ["Loved it.", "Hated it.", "Fine film.", "Awful.", "Meh."]
    got = label_by_channel(engine, task, inputs, seed=3, num_orders=2)
    for i, (text, a) in enumerate(zip(inputs, got)):
        prompts = [build_input_prompt(task, [], label, random.Random(f"3:order{i % 2}")) for label in task.labels]
        direct = engine.score(prompts, [text] * len(task.labels))  # log p(input | label), not p(label | input)
        best = max(range(len(task.labels)), key=direct.__getitem__)
        assert a.output == task.labels[best] and a.agreement >= 1 / len(task.labels)
        gaps = [x - direct[0] for x in direct]
        assert [x - a.label_scores[0] for x in a.label_scores] == pytest.approx(gaps, abs=1e-4)


def test_class_balance():
    assert class_cap(10, ["a", "b", "c"]) == 4
    rows = [{"output": "a"}] * 5 + [{"output": "b"}] * 2
    out = downsample_to_smallest([dict(r, i=i) for i, r in enumerate(rows)], seed=0)
    assert sorted(r["output"] for r in out) == ["a", "a", "b", "b"]


def test_rank_balance_labels_each_row_by_its_margin():
    import math

    # The argmax of every row is "a"; the order still says which rows are most "b"-like.
    probs = [[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45], [0.7, 0.3], [0.95, 0.05]]
    rows = [{"input": f"x{i}", "output": "a", "label_scores": [math.log(p) for p in ps]} for i, ps in enumerate(probs)]
    out = assign_by_rank(rows, ["a", "b"], size=4)
    assert {r["input"]: r["output"] for r in out} == {"x0": "a", "x5": "a", "x2": "b", "x3": "b"}
    assert all("label_scores" not in r for r in out)
    assert [round(r["agreement"], 2) for r in out] == [0.9, 0.4, 0.45, 0.95]


def test_rank_balance_shares_a_short_pool_equally():
    import math

    # 30 rows leaning towards "a", 64 asked for: the cap follows the pool, not the request.
    rows = [{"input": f"x{i}", "output": "a", "label_scores": [math.log(p) for p in (0.6 + i / 100, 0.3, 0.1 - i / 1000)]} for i in range(30)]
    out = assign_by_rank(rows, ["a", "b", "c"], size=64)
    assert sorted(Counter(r["output"] for r in out).values()) == [10, 10, 10]


def test_output_filter_copies_and_length(rewrite_task_dict):
    task = Task.load(rewrite_task_dict)
    f = OutputFilter(task.examples)
    assert f.reason_to_drop("The boy kicked the ball.", "The boy kicked the ball.") == "copies_input"
    assert f.reason_to_drop("The boy kicked the ball.", "") == "empty_output"
    assert f.reason_to_drop("The boy kicked the ball.", "x" * 500) == "output_length"
    assert f.reason_to_drop("The boy kicked the ball.", "The ball was kicked by the boy.") is None
