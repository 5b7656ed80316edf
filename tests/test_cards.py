import pytest
import torch
from datasets import Dataset, DatasetDict
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from selfguide import FilterReport, Task
from selfguide.evaluation import FEW_SHOT, ZERO_SHOT, TaskScore
from selfguide.hub import save_dataset_for_hub
from selfguide.prompts import format_prompt
from selfguide.quantization import nf4_config
from selfguide.hub_cards import (
    CardValidationError,
    DataSummary,
    ModelCardInfo,
    render_dataset_card,
    render_model_card,
    validate_dataset_card,
    validate_model_card,
)

from tests.conftest import letter_labelled
from tests.sft_helpers import task_rows


@pytest.fixture
def task(sentiment_task_dict):
    return Task.load(sentiment_task_dict)


@pytest.fixture
def report():
    r = FilterReport()
    r.add("input_generation", 40, 30, {"empty": 4, "too_long": 6})
    r.add("output_annotation", 30, 24, {"no_majority": 6})
    return r


@pytest.fixture
def scores():
    return [
        TaskScore("base", FEW_SHOT, "exact_match", 50.0, 4),
        TaskScore("base", ZERO_SHOT, "exact_match", 25.0, 4),
        TaskScore("finetuned", ZERO_SHOT, "exact_match", 75.0, 4),
    ]


def _info(task, report, **overrides):
    data = DataSummary(
        method="SELF-GUIDE",
        source="load_dataset('selfguide', task='sentiment.json', num_examples=64, seed=0)",
        writer_sentence="the base model wrote and labelled itself (SELF-GUIDE)",
        train_rows=24,
        test_rows=4,
        report=report,
        hub_id="tester/sentiment-data",
        settings={"synthesis model": "embedded:gemma-3-270m", "num_examples": 64},
    )
    fields = dict(
        model_name="sentiment-qlora",
        task=task,
        base_model="embedded:gemma-3-270m",
        base_model_id="google/gemma-3-270m",
        finetuning="qlora",
        data=data,
        adapter={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        quantization={"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16", "library": "bitsandbytes"},
        license="gemma",
        repo_id="tester/sentiment-qlora",
    )
    fields.update(overrides)
    return ModelCardInfo(**fields)


def test_model_card_metadata_round_trips_through_the_hub_parser(task, report, scores):
    card = render_model_card(_info(task, report), scores, {"learning_rate": 2e-4, "steps": 24})
    reread = ModelCard(str(card))
    meta = reread.data.to_dict()
    assert meta["base_model"] == "google/gemma-3-270m"
    assert meta["library_name"] == "peft"
    assert meta["license"] == "gemma"
    assert meta["datasets"] == ["tester/sentiment-data"]
    assert {"selfguide", "qlora", "trl"} <= set(meta["tags"])
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "sentiment-qlora"
    assert [(r.metric_config, r.metric_value) for r in results] == [
        ("base-few-shot", 50.0),
        ("base-zero-shot", 25.0),
        ("finetuned-zero-shot", 75.0),
    ]
    assert all(r.task_type == "text-classification" and r.metric_type == "exact_match" and r.dataset_split == "test" for r in results)
    # The pushed training data holds no gold rows here, so the scores name the task's rows, not that repo.
    assert {r.dataset_type for r in results} == {task.name}
    with_gold = _info(task, report)
    with_gold.data.hub_has_gold = True
    _, results = model_index_to_eval_results(ModelCard(str(render_model_card(with_gold, scores, {}))).data.to_dict()["model-index"])
    assert {r.dataset_type for r in results} == {"tester/sentiment-data"}


def test_model_card_body_states_data_training_and_scores(task, report, scores):
    text = str(render_model_card(_info(task, report), scores, {"learning_rate": 2e-4, "steps": 24}))
    assert "| finetuned | zero-shot | 75.0 | 4 |" in text
    assert "| input_generation | 40 | 30 | too_long: 6, empty: 4 |" in text
    assert "4-bit nf4, double quantisation on, compute dtype bfloat16" in text
    assert "LoRA r=16, alpha=32" in text
    assert "| learning_rate | 0.0002 |" in text
    assert "PeftModel.from_pretrained(model, 'tester/sentiment-qlora')" in text
    assert "Intended use and limits" in text
    assert "(labels: positive, negative)" in text


def _usage(card) -> str:
    return str(card).split("```python\n")[1].split("\n```")[0]


@pytest.mark.parametrize("train_prompt", [ZERO_SHOT, FEW_SHOT])
def test_the_usage_snippet_builds_the_prompt_the_model_was_trained_with(task, report, scores, train_prompt):
    snippet = _usage(render_model_card(_info(task, report, train_prompt=train_prompt), scores, {"steps": 24}))
    compile(snippet, "usage", "exec")
    namespace = {}
    exec(next(block for block in snippet.split("\n\n") if block.startswith("instruction = ")), namespace)
    shots = task.examples if train_prompt == FEW_SHOT else ()
    assert namespace["prompt"] == format_prompt(task, task.examples[0].input, shots)


def test_the_usage_snippet_loads_a_qlora_adapters_base_in_4bit_as_trained(task, report, scores):
    snippet = _usage(render_model_card(_info(task, report), scores, {"steps": 24}))
    imports = snippet.split("\n\n")[0]
    [quantization] = [line for line in snippet.splitlines() if line.startswith("quantization = ")]
    namespace = {}
    exec(f"{imports}\n{quantization}", namespace)
    assert namespace["quantization"].to_dict() == nf4_config("nf4", True, torch.bfloat16).to_dict()
    assert "AutoModelForCausalLM.from_pretrained('google/gemma-3-270m', quantization_config=quantization)" in snippet
    lora = _usage(render_model_card(_info(task, report, finetuning="lora", quantization=None), scores, {"steps": 24}))
    compile(lora, "usage", "exec")
    assert "BitsAndBytesConfig" not in lora and "AutoModelForCausalLM.from_pretrained('google/gemma-3-270m')\n" in lora


def test_a_card_names_letter_labels_by_their_aliases(sentiment_task_dict, report, scores):
    task = Task.load(letter_labelled(sentiment_task_dict))
    text = str(render_model_card(_info(task, report), scores, {"steps": 24}))
    assert "(labels: P (positive), N (negative, bad))" in text


def test_a_classification_card_shows_each_models_most_frequent_answer(task, report, scores):
    answered = [*scores[:2], TaskScore("finetuned", ZERO_SHOT, "exact_match", 75.0, 4, ["positive", "Negative.", "positive", "positive"])]
    text = str(render_model_card(_info(task, report), answered, {"steps": 24}))
    assert "| model | prompt | exact_match | rows | most frequent answer |" in text
    assert "| finetuned | zero-shot | 75.0 | 4 | positive (75%) |" in text
    assert "| base | few-shot | 50.0 | 4 | - |" in text  # a score without its answers (a resumed run's baseline)


def test_a_card_says_how_many_gold_rows_were_scored(task, report):
    scored_two = [TaskScore("finetuned", ZERO_SHOT, "exact_match", 50.0, 2)]  # as under --max_eval_rows 2
    text = str(render_model_card(_info(task, report), scored_two, {"steps": 24}))
    assert "then checked on 2 held-out gold rows" in text and "Exact match on 2 of the task's 4 gold rows" in text
    unscored = str(render_model_card(_info(task, report), [], {"steps": 24}))
    assert "checked on" not in unscored and "No evaluation was run" in unscored


def test_full_finetune_card_and_local_base_model(task, scores):
    info = _info(task, None, finetuning="full", adapter=None, quantization=None, base_model="/models/mine", base_model_id=None, license=None)
    card = render_model_card(info, scores[:1], {"steps": 3})
    meta = ModelCard(str(card)).data.to_dict()
    assert meta["library_name"] == "transformers"
    assert "base_model" not in meta
    assert "`/models/mine` (local)" in card.text
    assert "The dataset carries no filter report." in card.text


def test_card_without_scores_has_no_model_index(task, report):
    card = render_model_card(_info(task, report), [], {"steps": 1})
    assert "model-index" not in ModelCard(str(card)).data.to_dict()
    assert "No evaluation was run" in card.text


@pytest.mark.parametrize(
    "header, problem",
    [
        ("base_model: not a//valid id\n", "base_model"),
        ("model-index:\n- name: m\n  results:\n  - task: {type: text-classification}\n    dataset: {name: d, type: d}\n"
         "    metrics:\n    - {type: exact_match, value: high}\n", "non-numeric"),
        ("model-index:\n- name: m\n  results:\n  - metrics: [{type: exact_match, value: 1}]\n", "cannot be parsed"),
        ("pipeline_tag: image-classification\n", "pipeline_tag"),
    ],
)
def test_model_card_validation_rejects_bad_metadata(header, problem):
    with pytest.raises(CardValidationError, match=problem):
        validate_model_card(f"---\n{header}---\n# card\n")


def test_dataset_card_and_hub_layout(tmp_path, task, report):
    dataset = DatasetDict({"train": Dataset.from_list(task_rows(task, task.examples)), "test": Dataset.from_list(task_rows(task, task.gold))})
    data = _info(task, report).data
    folder = save_dataset_for_hub(dataset, tmp_path / "dataset", task, data, license="gemma", gold_rows=True)
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    meta = DatasetCard.load(folder / "README.md").data.to_dict()
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]}]
    assert meta["task_categories"] == ["text-classification"]
    assert meta["size_categories"] == ["n<1K"]
    text = (folder / "README.md").read_text()
    assert "| output_annotation | 30 | 24 | no_majority: 6 |" in text
    assert "Columns: input, output, prompt, completion." in text
    # The layout loads back as the Hub would serve it.
    from datasets import load_dataset

    reloaded = load_dataset(str(folder))
    assert reloaded["train"]["completion"] == dataset["train"]["completion"]


def test_dataset_card_validation_checks_files(tmp_path, task, report):
    card = render_dataset_card(task, _info(task, report).data, ["input"], ["train"])
    validate_dataset_card(card)
    with pytest.raises(CardValidationError, match="no file"):
        validate_dataset_card(card, tmp_path)



@pytest.mark.parametrize(
    "method, sentence, limits, never_says",
    [
        ("SELF-GUIDE", "the base model wrote and labelled itself (SELF-GUIDE)",
         "written and labelled by the base model itself", ["annotators"]),
        ("ReBase", "was retrieved from existing datasets and rewritten for the task (ReBase)",
         "keeps its annotators' label", ["written and labelled by", "grown from"]),
        ("given dataset", "came from tester/my-rows",
         "The rows came from tester/my-rows: that dataset's own card", ["written and labelled by", "grown from", "never reached", "annotators"]),
    ],
)
def test_both_cards_describe_the_rows_as_the_method_that_made_them(task, report, scores, method, sentence, limits, never_says):
    data = DataSummary(method, "tester/my-rows", sentence, train_rows=24, test_rows=4, report=report)
    model_text = str(render_model_card(_info(task, report, data=data), scores, {}))
    dataset_text = str(render_dataset_card(task, data, ["input"], ["train", "test"]))
    for text in (model_text, dataset_text):
        assert limits in text
        assert not any(phrase in text for phrase in never_says)
        # Only a selfguide builder kept the gold rows out of synthesis; a user's dataset may hold them.
        assert ("never reached" in text) == (method != "given dataset")
    assert (f"grown from the task's {len(task.examples)} demonstrations" in dataset_text) == (method == "SELF-GUIDE")
    assert f"Data that {sentence}" in dataset_text
