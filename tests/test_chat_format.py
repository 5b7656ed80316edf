"""Chat students: prompts in the student's chat template, TRL conversational rows, documents otherwise."""

import random

import pytest
from datasets import load_dataset
from transformers import AutoTokenizer

from selfguide.builders.selfguide import SelfGuideConfig
from selfguide.engines import TransformersEngine
from selfguide.errors import ConfigError
from selfguide.evaluation import ZERO_SHOT, build_prompts
from selfguide.journal import Journal
from selfguide.prompts import tokenizer_style, training_prompt
from selfguide.report import FilterReport
from selfguide.synthesis.pipeline import SelfGuidePipeline
from selfguide.task import Task
from tests.conftest import FIXTURES
from tests.test_selfguide_builder import LOOSE

SENTIMENT = FIXTURES / "sentiment_task.json"


def _load(model, cache_dir, **kw):
    return load_dataset("selfguide", task=str(SENTIMENT), model=str(model), cache_dir=str(cache_dir), **{**LOOSE, "num_examples": 4, **kw})


def test_auto_gives_a_chat_student_conversational_rows(tmp_path, tiny_chat_dir):
    ds = _load(tiny_chat_dir, tmp_path / "cache")
    task = Task.load(str(SENTIMENT))
    for split in ("train", "test"):
        row = ds[split][0]
        assert row["prompt"] == [{"role": "user", "content": training_prompt(task, row["input"])}]
        assert row["completion"] == [{"role": "assistant", "content": row["output"]}]


def test_document_prompts_stay_strings_when_asked_or_without_a_template(tmp_path, tiny_chat_dir, tiny_model_dir):
    for model, fmt in ((tiny_chat_dir, "document"), (tiny_model_dir, "auto")):
        row = _load(model, tmp_path / fmt, prompt_format=fmt)["train"][0]
        assert row["prompt"].endswith(f"Input: {row['input']}\nOutput:") and row["completion"] == " " + row["output"]


def test_chat_without_a_template_is_refused_before_the_model_loads(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="prompt_format: 'chat'.*no chat template.*Fix: prompt_format='document'"):
        _load(tiny_model_dir, tmp_path / "cache", prompt_format="chat")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("journal.jsonl"))


def test_synthesis_prompts_are_user_turns_of_the_template(tmp_path, tiny_chat_dir):
    engine = TransformersEngine.from_pretrained(str(tiny_chat_dir))
    task = Task.load(str(SENTIMENT))
    config = SelfGuideConfig(task=str(SENTIMENT), model=str(tiny_chat_dir), **LOOSE)
    chat = SelfGuidePipeline(task, engine, config, Journal(tmp_path / "j1.jsonl"), FilterReport(), progress=False, chat=True)
    document = SelfGuidePipeline(task, engine, config, Journal(tmp_path / "j2.jsonl"), FilterReport(), progress=False)
    (prompt,) = chat._prompts(random.Random(0), 1, [])
    assert prompt.startswith("[user]\nYou write new inputs for a task whose instruction is: ") and prompt.endswith("Reply with the text of the new input only, not its answer.</s>\n<s>[assistant]\n")
    assert "answer:" in prompt.split("Write example")[0]  # the demonstrations keep their labels
    (plain,) = document._prompts(random.Random(0), 1, [])
    assert "[user]" not in plain and plain.endswith("\n")


def test_evaluation_prompts_equal_the_template_applied_to_the_training_rows(tmp_path, tiny_chat_dir):
    """What SFTTrainer renders from a conversational row is what the finetuned model is scored on."""
    ds = _load(tiny_chat_dir, tmp_path / "cache")
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    task = Task.load(str(SENTIMENT))
    row = ds["test"][0]
    rendered = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    (prompt,) = build_prompts(task, [row["input"]], ZERO_SHOT, style=tokenizer_style(tokenizer))
    assert tokenizer.bos_token + prompt == rendered


def test_a_chat_student_trained_by_the_recipe_says_so_in_its_card(tmp_path, tiny_chat_dir):
    from selfguide.recipes.sft import run
    from tests.test_recipe import LORA, recipe_args

    data = tmp_path / "data"
    _load(tiny_chat_dir, tmp_path / "cache").save_to_disk(str(data))
    run(recipe_args(SENTIMENT, data, tiny_chat_dir, tmp_path / "out", max_steps=1, eval_baseline="false", **LORA))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- Prompts: chat: each prompt one user turn of the base model's chat template" in card
    # The usage snippet prompts the adapter as it was trained: the training prompt as one user turn of the template.
    snippet = card.split("```python\n")[1].split("```")[0]
    compile(snippet, "usage", "exec")
    namespace = {"tokenizer": AutoTokenizer.from_pretrained(tiny_chat_dir)}
    exec(next(block for block in snippet.split("\n\n") if block.startswith("instruction = ")), namespace)
    exec(next(line for line in snippet.splitlines() if line.startswith("prompt = tokenizer.apply_chat_template")), namespace)
    task = Task.load(SENTIMENT)
    trained = namespace["tokenizer"].apply_chat_template(
        [{"role": "user", "content": training_prompt(task, task.examples[0].input)}], tokenize=False, add_generation_prompt=True
    )
    assert namespace["prompt"] == trained
