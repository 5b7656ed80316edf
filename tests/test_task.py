import json

import pytest

from selfguide import Task, TaskSpecError
from selfguide.task import Example
from tests.conftest import FIXTURES, letter_labelled


def test_yaml_spec_infers_classification_and_keeps_gold_apart(tmp_path, sentiment_task_dict):
    import yaml

    spec = dict(sentiment_task_dict)
    spec.pop("labels")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    task = Task.load(path)
    assert task.type == "classification"
    assert task.labels == ["negative", "positive"]
    assert len(task.gold) == 4 and all(g not in task.examples for g in task.gold)


def test_generation_inferred_from_free_text(rewrite_task_dict):
    task = Task.load(rewrite_task_dict)
    assert task.type == "generation" and task.labels is None


def test_natural_instructions_file(tmp_path):
    ni = {
        "Definition": ["Answer yes or no."],
        "Positive Examples": [{"input": "Is fire hot?", "output": "yes", "explanation": "."}],
        "Instances": [{"id": str(i), "input": f"q{i}", "output": ["yes" if i % 2 else "no"]} for i in range(20)],
    }
    path = tmp_path / "task999_demo.json"
    path.write_text(json.dumps(ni))
    task = Task.load(path)
    assert task.name == "task999_demo"
    assert task.type == "classification" and task.labels == ["no", "yes"]
    assert len(task.gold) == 20


def test_fingerprint_follows_content_not_path(tmp_path, sentiment_task_dict):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(sentiment_task_dict))
    b.write_text(json.dumps(sentiment_task_dict))
    assert Task.load(a).fingerprint() == Task.load(b).fingerprint()
    changed = dict(sentiment_task_dict, instruction="Something else.")
    assert Task.load(changed).fingerprint() != Task.load(a).fingerprint()


def test_label_aliases_read_as_their_label_and_survive_a_round_trip(sentiment_task_dict):
    task = Task.load(letter_labelled(sentiment_task_dict))
    assert task.label_aliases == {"P": ["positive"], "N": ["negative", "bad"]}
    assert [task.label_of(a) for a in ("Positive.", "bad", "N", "neutral", "")] == ["P", "N", "N", None, None]
    assert task.label_of("P (positive)") == "P"  # the named form the ReBase rewriter is shown, copied back
    assert Task(**{**task.__dict__, "label_aliases": {"P": "positive"}}).named_labels() == ["P (positive)", "N"]
    again = Task.load(task.to_dict())
    assert again.label_aliases == task.label_aliases and again.fingerprint() == task.fingerprint()


def test_a_task_without_aliases_keeps_the_fingerprint_it_had_before_the_field(sentiment_task_dict):
    # Pinned: a task without aliases hashes as it did before the field existed.
    assert Task.load(FIXTURES / "sentiment_task.json").fingerprint() == "a077444afb6808a0"
    with_aliases = dict(sentiment_task_dict, label_aliases={"positive": ["good"]})
    assert Task.load(with_aliases).fingerprint() != "a077444afb6808a0"


@pytest.mark.parametrize(
    "aliases, field",
    [
        ({"E": ["entailment"]}, "label_aliases.E"),  # no such label
        ({"P": ["good"], "N": ["Good!"]}, "label_aliases.N"),  # one alias, two labels
        ({"N": ["P"]}, "label_aliases.N"),  # an alias that is another label
        ({"P": []}, "label_aliases.P"),
        ({"P": ["?!"]}, "label_aliases.P"),  # normalised to nothing
        (["positive"], "label_aliases"),
    ],
)
def test_bad_label_aliases_name_the_field(sentiment_task_dict, aliases, field):
    spec = dict(letter_labelled(sentiment_task_dict), label_aliases=aliases)
    with pytest.raises(TaskSpecError) as err:
        Task.load(spec)
    assert err.value.field == field and "Fix:" in str(err.value)


def test_label_aliases_on_a_generation_task_are_refused(rewrite_task_dict):
    with pytest.raises(TaskSpecError, match="generation task") as err:
        Task.load(dict(rewrite_task_dict, label_aliases={"x": ["y"]}))
    assert err.value.field == "label_aliases"


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("instruction"), "instruction"),
        (lambda d: d.update(examples=[]), "examples"),
        (lambda d: d["examples"][0].pop("output"), "examples[0].output"),
        (lambda d: d["examples"][1].update(output="neutral"), "examples[1].output"),
        (lambda d: d.update(type="regression"), "type"),
    ],
)
def test_bad_specs_name_the_field(sentiment_task_dict, mutate, field):
    mutate(sentiment_task_dict)
    with pytest.raises(TaskSpecError) as err:
        Task.load(sentiment_task_dict)
    assert err.value.field == field
    assert "Fix:" in str(err.value)


@pytest.mark.parametrize("given_labels", [True, False])
def test_a_classification_task_with_one_label_is_refused(sentiment_task_dict, given_labels):
    spec = dict(sentiment_task_dict, examples=[e for e in sentiment_task_dict["examples"] if e["output"] == "positive"], test=[])
    if given_labels:
        spec["labels"] = ["positive"]
    else:
        spec.pop("labels")  # inferred: every example answers "positive"
    with pytest.raises(TaskSpecError, match="only one label.*Fix: add examples of at least two labels, or set type: generation") as err:
        Task.load(spec)
    assert err.value.field == "labels"


def test_unreadable_files(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("instruction: caf\xe9".encode("latin-1"))
    with pytest.raises(TaskSpecError, match="not UTF-8"):
        Task.load(latin)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TaskSpecError, match="cannot be parsed"):
        Task.load(broken)
    with pytest.raises(TaskSpecError, match="does not exist"):
        Task.load(tmp_path / "missing.yaml")


def test_fixture_files_load():
    paths = sorted(FIXTURES.glob("*_task.json"))
    assert paths, f"no *_task.json in {FIXTURES}"
    for path in paths:
        assert Task.load(path).examples


def test_yaml_scalars_are_read_as_written(tmp_path):
    # YAML 1.1 reads yes/no/on as booleans and 1.50 as 1.5: labels would become "True"/"False".
    path = tmp_path / "recommend.yaml"
    path.write_text(
        "instruction: Does the review recommend the product?\n"
        "labels: [yes, no, on]\n"
        "examples:\n"
        "  - {input: 1.50, output: yes}\n"
        "  - {input: Broke in a day, output: no}\n"
    )
    task = Task.load(path)
    assert task.labels == ["yes", "no", "on"]
    assert [(e.input, e.output) for e in task.examples] == [("1.50", "yes"), ("Broke in a day", "no")]


def test_a_label_no_answer_can_match_is_refused(sentiment_task_dict):
    spec = {**sentiment_task_dict, "labels": ["positive", "?"],
            "examples": [*sentiment_task_dict["examples"], {"input": "Is it any good", "output": "?"}]}
    with pytest.raises(TaskSpecError, match="'labels': label '\\?' has no letter or digit"):
        Task.from_dict(spec).validate()


def test_a_label_that_is_not_a_string_is_named():
    with pytest.raises(TaskSpecError, match="'labels': label 0 is not a string. Fix: write it as text, e.g. '0'"):
        Task(name="t", instruction="Label it.", type="classification", labels=[0, 1], examples=[Example("a", "0"), Example("b", "1")])


# -- names, folders, and a task saved beside its dataset --------------------------------------------


def _ni_file(path, **extra):
    ni = {
        "Definition": ["Does the premise entail the hypothesis?"],
        "Positive Examples": [{"input": "A dog runs. / An animal moves.", "output": "entails"}],
        "Instances": [{"id": str(i), "input": f"p{i} / h{i}", "output": ["entails" if i % 2 else "neutral"]} for i in range(20)],
        **extra,
    }
    path.write_text(json.dumps(ni))
    return path


def test_a_task_file_whose_name_holds_dots_is_named_by_its_whole_stem(tmp_path, sentiment_task_dict):
    import yaml

    ni = _ni_file(tmp_path / "task1529_scitail1.1_classification.json")
    assert Task.load(ni).name == "task1529_scitail1.1_classification"
    spec = {k: v for k, v in sentiment_task_dict.items() if k != "name"}
    (tmp_path / "my.task.yaml").write_text(yaml.safe_dump(spec))
    assert Task.load(tmp_path / "my.task.yaml").name == "my.task"


def test_ni_v2_keeps_the_finished_records_of_a_task_with_a_dotted_name(tmp_path, monkeypatch):
    # A resumed or --report-only run matches the records it finished by task name; a name cut at its first
    # dot matched no file, and the task's records were dropped.
    import importlib

    from tests.sft_helpers import REPO

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ni_v2 = importlib.import_module("ni_v2")
    (tmp_path / "tasks").mkdir()
    path = _ni_file(tmp_path / "tasks" / "task9901_scitail1.1_classification.json")
    args = ni_v2.parse_args(["--tasks-dir", str(tmp_path / "tasks"), "--work-dir", str(tmp_path / "work"), "--methods", "baseline"])
    task, spec = ni_v2.eval_task(path, args, tmp_path / "work")
    assert Task.load(spec).name == task.name == "task9901_scitail1.1_classification"
    record = {"task": task.name, "method": "baseline", "score": 50.0, "settings": ni_v2.result_settings(args, task.name)}
    ni_v2.append_record(tmp_path / "work" / f"{args.name}.partial.jsonl", record)
    assert ni_v2.partial_records(args) == [record]


def test_a_folder_given_as_the_task_says_so_and_what_to_pass(tmp_path, sentiment_task_dict):
    from selfguide.task import save_task

    with pytest.raises(TaskSpecError, match=f"{tmp_path} is a folder, not a task file. Fix: pass the task file inside it"):
        Task.load(tmp_path)
    saved = save_task(Task.load(sentiment_task_dict), tmp_path)
    with pytest.raises(TaskSpecError, match=f"Fix: pass {saved}, the task spec `selfguide generate` saved there"):
        Task.load(tmp_path)


def test_a_saved_task_reads_back_with_every_field(tmp_path, sentiment_task_dict):
    from dataclasses import fields

    from selfguide.task import save_task

    assert Task.from_saved(tmp_path) is None
    task = Task.load(dict(letter_labelled(sentiment_task_dict), name="my.task"))
    save_task(task, tmp_path / "data")
    again = Task.from_saved(tmp_path / "data")
    assert [f.name for f in fields(Task)] == ["name", "instruction", "examples", "type", "labels", "gold", "source", "label_aliases"]
    for f in fields(Task):
        if f.name != "source":  # where it was read from: the saved file
            assert getattr(again, f.name) == getattr(task, f.name), f.name
    assert again.source == str(tmp_path / "data" / "task.json") and again.fingerprint() == task.fingerprint()
