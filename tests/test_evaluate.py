"""Task evaluation: prompts, greedy scoring, sharding over processes, and `selfguide evaluate`."""

import json
import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from selfguide import Example, Task
from selfguide.commands import demo_task_path
from selfguide.evaluation import (
    FEW_SHOT, ZERO_SHOT, _across_processes, adapter_trained_in_4bit, build_prompts, evaluate_task, score_model,
)
from selfguide.metrics import most_frequent_answer, rouge_l, task_score
from selfguide.prompts import fewshot_prompt, training_prompt
from tests.sft_helpers import qlora_model_dir  # noqa: F401  (fixture)


@pytest.fixture
def task(sentiment_task_dict):
    return Task.load(sentiment_task_dict)


@pytest.fixture(scope="module")
def lively_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with wider random weights (std 0.2, not 0.02).

    At 0.02 its answer hangs on the end every prompt shares ("Output:"), so all gold rows get one answer, and
    predictions compared across batchings or processes would compare constants, right order or not.
    """
    config = AutoConfig.from_pretrained(tiny_model_dir, initializer_range=0.2)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lively-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture
def lively(lively_dir):
    return AutoModelForCausalLM.from_pretrained(lively_dir), AutoTokenizer.from_pretrained(lively_dir)


def test_prompts_zero_shot_is_the_training_prompt_and_few_shot_shows_every_demo(task):
    inputs = [g.input for g in task.gold]
    assert build_prompts(task, inputs, ZERO_SHOT) == [training_prompt(task, x) for x in inputs]
    rng = random.Random(0)
    assert build_prompts(task, inputs, FEW_SHOT, seed=0) == [fewshot_prompt(task, x, rng) for x in inputs]
    for prompt in build_prompts(task, inputs, FEW_SHOT):
        assert all(f"Input: {e.input}\nOutput: {e.output}" in prompt for e in task.examples)
    with pytest.raises(ValueError, match="prompt"):
        build_prompts(task, inputs, "three-shot")


def test_scores_are_greedy_deterministic_and_leave_model_and_tokenizer_as_found(task, lively, capsys):
    model, tokenizer = lively
    model.train()
    tokenizer.padding_side = "right"
    first = score_model(model, tokenizer, task, prompt=FEW_SHOT, max_new_tokens=6, batch_size=2)
    bar = capsys.readouterr().err  # a progress bar over the 2 batches of the 4 gold rows
    assert "scoring finetuned, few-shot prompt" in bar and "0/2 " in bar
    second = score_model(model, tokenizer, task, prompt=FEW_SHOT, max_new_tokens=6)
    assert len(set(first.predictions)) == len(task.gold), "with one answer for all rows, a mixed-up batch would pass"
    assert first.predictions == second.predictions
    assert first.value == task_score(task.type, first.predictions, [g.output for g in task.gold], task.labels)
    assert model.training and tokenizer.padding_side == "right"


def test_a_gold_row_with_several_answers_scores_its_best(lively):
    model, tokenizer = lively
    task = Task.load({"instruction": "Repeat the words.", "type": "generation", "examples": [{"input": "a b", "output": "a b"}],
                      "test": [{"input": "the cat sat", "output": "the cat sat"}, {"input": "dogs bark", "output": "dogs bark"}]})
    answers = score_model(model, tokenizer, task, max_new_tokens=6).predictions
    assert all(rouge_l(a, a) == 1.0 and rouge_l(a, "zz") == 0.0 for a in answers), answers
    rows = [Example(g.input, "zz", ("zz", answer)) for g, answer in zip(task.gold, answers)]
    assert score_model(model, tokenizer, task, rows, max_new_tokens=6).value == 100.0


ITEMS = ["a", "b", "c", "d", "e"]  # odd, so the two ranks' shares differ in size


def _sharded_worker(rank, world, store, model_dir, task_dict, out):
    # A file rendezvous, not a TCP store, whose server thread lives in rank 0. Even so a worker died once
    # more in CI with "terminate called without an active exception" (SIGABRT) after scoring: a C++
    # thread torn down while the interpreter exits. A worker that has written its result and left the
    # process group therefore exits at once, skipping that teardown; a failure before then still fails.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        shard = []

        def answer(part):  # each answer names its item and its rank, so the split and the order both show
            shard.extend(part)
            return [f"{x} by {rank}" for x in part]

        back = _across_processes(answer, ITEMS)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # generate() reads each batch's prompts in one forward wider than a token: the rows this rank scored.
        shapes = []
        model.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(kwargs["input_ids"].shape), with_kwargs=True)
        score = score_model(model, tokenizer, Task.load(task_dict), max_new_tokens=6, batch_size=2)
        scored_rows = sum(rows for rows, width in shapes if width > 1)
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"shard": shard, "back": back, "scored_rows": scored_rows, "predictions": score.predictions, "value": score.value}, f)
    finally:
        dist.destroy_process_group()
    os._exit(0)


def test_two_processes_split_the_rows_and_agree_with_one(task, lively, lively_dir, sentiment_task_dict, tmp_path):
    model, tokenizer = lively
    single = score_model(model, tokenizer, task, max_new_tokens=6, batch_size=2)
    assert len(set(single.predictions)) == len(task.gold), "with one answer for all rows, any order would pass"
    out = str(tmp_path / "scores")
    mp.spawn(_sharded_worker, args=(2, tmp_path / "store", str(lively_dir), sentiment_task_dict, out), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads(open(f"{out}.{rank}").read())
        assert got["shard"] == ITEMS[rank::2]
        assert got["back"] == [f"{x} by {i % 2}" for i, x in enumerate(ITEMS)]
        assert got["scored_rows"] == len(task.gold) // 2
        assert (got["predictions"], got["value"]) == (single.predictions, single.value)


def test_a_qlora_adapter_is_scored_on_a_4bit_base_unless_told_otherwise(qlora_model_dir, sentiment_task_dict, tmp_path, capsys, monkeypatch):
    import bitsandbytes.nn.modules as bnb_modules
    from bitsandbytes.functional import has_avx512bf16
    from huggingface_hub import ModelCard
    from peft import LoraConfig, get_peft_model

    # On a CPU with AVX512-BF16, bitsandbytes repacks each 4-bit weight for its inference kernel at the first
    # eval-mode forward; its 64-value blocks need layers at least 64 wide (the 32-wide tiny model failed there
    # with "shape '[32, 0]' is invalid"), hence the 128-wide model. Counted, so the repack is known to run there.
    repacks = []
    repack = bnb_modules._convert_weight_packed_for_cpu
    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", lambda *a, **k: repacks.append(1) or repack(*a, **k))
    torch.manual_seed(0)
    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(qlora_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(adapter)
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(sentiment_task_dict))
    assert not adapter_trained_in_4bit(str(adapter)), "no card: nothing says it was trained in 4-bit"
    ModelCard("---\ntags:\n- selfguide\n- lora\n---\n# adapter\n").save(adapter / "README.md")
    assert not adapter_trained_in_4bit(str(adapter))
    ModelCard("---\ntags:\n- selfguide\n- qlora\n---\n# adapter\n").save(adapter / "README.md")
    assert adapter_trained_in_4bit(str(adapter))

    auto = evaluate_task(task_file, adapter=str(adapter))
    four_bit = evaluate_task(task_file, adapter=str(adapter), load_in_4bit=True)
    full = evaluate_task(task_file, adapter=str(adapter), load_in_4bit=False)
    assert [s.predictions for s in auto] == [s.predictions for s in four_bit]
    assert [s.predictions for s in auto] != [s.predictions for s in full]
    assert bool(repacks) == has_avx512bf16()
    assert _cli(["evaluate", "--task", str(task_file), "--adapter", str(adapter)]) == 0
    assert "4-bit nf4, as the adapter's model card says QLoRA" in capsys.readouterr().out
    assert _cli(["evaluate", "--task", str(task_file), "--adapter", str(adapter), "--no-load-in-4bit"]) == 0
    assert "4-bit" not in capsys.readouterr().out


def _cli(argv):
    from selfguide.cli import main

    return main(argv)


def test_evaluate_command_scores_baseline_and_adapter(task, tiny_model_dir, sentiment_task_dict, tmp_path, capsys):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # A random (non-zero) adapter, so the finetuned model really differs from the base.
    get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(tmp_path / "adapter")
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(sentiment_task_dict))

    assert _cli(["evaluate", "--task", str(task_file), "--adapter", str(tmp_path / "adapter"), "--json", str(tmp_path / "s.json")]) == 0
    table = capsys.readouterr().out
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [(r["model"], r["prompt"]) for r in rows] == [("base", FEW_SHOT), ("base", ZERO_SHOT), ("finetuned", ZERO_SHOT)]
    assert all(f"| {r['model']} | {r['prompt']} | {r['value']:.1f} | 4 |" in table for r in rows)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    finetuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    direct = score_model(finetuned, tokenizer, task)
    base_direct = score_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, task)
    assert rows[2]["value"] == direct.value and rows[1]["value"] == base_direct.value
    assert rows[2]["predictions"] == direct.predictions and rows[1]["predictions"] == base_direct.predictions
    answer, share = most_frequent_answer(direct.predictions, task.labels)
    assert f"| finetuned | {ZERO_SHOT} | {direct.value:.1f} | 4 | {answer} ({share:.0f}%) |" in table


def test_an_adapter_whose_base_folder_is_on_another_machine_needs_the_base_named(tiny_model_dir, sentiment_task_dict, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear")).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    # As a pulled adapter trained elsewhere: PEFT recorded the trainer's local folder.
    config["base_model_name_or_path"] = "/home/trainer/.cache/huggingface/selfguide/models/gemma-3-270m"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(sentiment_task_dict))
    assert _cli(["evaluate", "--task", str(task_file), "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err
    assert "/home/trainer/.cache" in err and "Fix: pass the base model (--model" in err
    assert _cli(["evaluate", "--task", str(task_file), "--adapter", str(adapter), "--model", str(tiny_model_dir)]) == 0


def test_evaluate_command_rejects_a_task_without_gold_rows(rewrite_task_dict, tmp_path, capsys):
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps({**rewrite_task_dict, "test": []}))
    with pytest.raises(ValueError, match="no gold rows"):
        evaluate_task(task_file, "unused-model")
    assert _cli(["evaluate", "--task", str(task_file)]) == 2
    assert "no gold rows" in capsys.readouterr().err
    assert _cli(["evaluate", "--task", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    task_file.write_text(json.dumps(rewrite_task_dict))
    for limit in ("0", "-5"):  # not every row, nor all but the last five
        assert _cli(["evaluate", "--task", str(task_file), "--limit", limit]) == 2
        assert f"limit: the number of gold rows to score must be a positive integer, got {limit}" in capsys.readouterr().err


@pytest.mark.slow
def test_prompting_baseline_on_the_embedded_student_beats_chance():
    # Greedy decoding is deterministic, so these are fixed numbers on a given machine; the bounds only
    # say the pipeline reads real answers: three balanced labels put chance at 33.3.
    scores = evaluate_task(demo_task_path(), limit=21)
    few, zero = scores
    assert few.prompt == FEW_SHOT and few.num_rows == 21
    assert few.value > 40.0 and few.value > zero.value
