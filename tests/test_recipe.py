"""The SFT recipe end to end on small random models: one process and two, QLoRA, LoRA and full finetuning."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from selfguide import Task
from selfguide.errors import ConfigError
from selfguide.metrics import extract_label, most_frequent_answer
from selfguide.modeling import finetuning_method
from selfguide.quantization import MissingBitsandbytesError
from selfguide.recipes.arguments import parse_args
from selfguide.recipes.sft import build, run
from selfguide.student import dtype_choice, resolve_dtype
from tests.sft_helpers import REPO, free_port, qlora_model_dir, save_task_dataset, task_rows, tree_digest  # noqa: F401  (fixture)

LORA = {"load_in_4bit": "false"}  # TRL's flags: an adapter on the full-precision base
FULL = {"use_peft": "false", "load_in_4bit": "false"}  # every weight


@pytest.fixture
def task(sentiment_task_dict):
    return Task.load(sentiment_task_dict)


@pytest.fixture
def task_file(tmp_path, sentiment_task_dict) -> Path:
    path = tmp_path / "sentiment.json"
    path.write_text(json.dumps(sentiment_task_dict))
    return path


@pytest.fixture
def dataset_dir(tmp_path, task) -> Path:
    return save_task_dataset(task, tmp_path / "data", task.examples * 4, task.gold)


def recipe_args(task_file, dataset_dir, model_dir, output_dir, **overrides) -> list[str]:
    settings = {
        "task": task_file,
        "dataset_name": dataset_dir,
        "model_name_or_path": model_dir,
        "output_dir": output_dir,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "gradient_checkpointing": "false",
        "save_strategy": "no",
        "report_to": "none",
        **overrides,
    }
    return [item for key, value in settings.items() if value is not None for item in (f"--{key}", str(value))]


def test_qlora_run_saves_adapter_cards_and_best_checkpoint(task, task_file, qlora_model_dir, tmp_path):
    out = tmp_path / "out"
    base_before = tree_digest(qlora_model_dir)
    # Trained on the gold rows at this rate, the score moves between evaluations (25.0 then 0.0 here): the best
    # checkpoint is chosen by it, not by a tie, and the final score is the best one only if its weights are loaded.
    data = save_task_dataset(task, tmp_path / "gold-data", task.gold * 4, task.gold)
    result = run(
        recipe_args(
            task_file, data, qlora_model_dir, out, learning_rate=3e-3,
            eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
            load_best_model_at_end="true", metric_for_best_model="exact_match",
        )
    )
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()  # the adapter only, never a copy of the base
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(qlora_model_dir) and adapter["r"] == 16
    assert tree_digest(qlora_model_dir) == base_before

    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    evaluated = [e for e in state["log_history"] if "eval_exact_match" in e]
    assert [e["step"] for e in evaluated] == [1, 2] == [e["step"] for e in state["log_history"] if "eval_loss" in e]
    scores = {e["step"]: e["eval_exact_match"] for e in evaluated}
    assert len(set(scores.values())) == 2
    best_step = max(scores, key=scores.get)
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{best_step}" and state["best_metric"] == scores[best_step]
    assert all(math.isfinite(e["loss"]) for e in state["log_history"] if "loss" in e)
    for step in (1, 2):
        checkpoint = out / f"checkpoint-{step}"
        assert (checkpoint / "adapter_model.safetensors").is_file()
        assert f"| finetuned | zero-shot | {scores[step]:.1f} | 4 |" in (checkpoint / "README.md").read_text()

    card = (out / "README.md").read_text()
    compute = str(resolve_dtype("auto")).removeprefix("torch.")  # float32, or bf16 on a CPU with native bf16
    assert f"4-bit nf4, double quantisation on, compute dtype {compute}" in card
    assert f"- dtype (`--dtype`, for the 4-bit matmuls and a frozen LoRA base): {dtype_choice('auto')}" in card
    assert "- Prompts: documents (`Input: ...` / `Output:`), no chat template" in card
    assert [s.label for s in result.scores] == ["base model, few-shot prompt", "base model, zero-shot prompt", "finetuned model, zero-shot prompt"]
    # The 'after' is the best checkpoint's weights, scored again at the end: its answers, not the base model's.
    finetuned = result.scores[-1]
    assert finetuned.value == scores[best_step] and finetuned.predictions != result.scores[1].predictions
    assert result.metrics == {"eval_exact_match": finetuned.value}
    # Each score, the baselines' too, keeps the answers it was made from, and the card shows them.
    assert [len(s.predictions) for s in result.scores] == [4, 4, 4]
    answer, share = most_frequent_answer(finetuned.predictions, task.labels)
    assert f"| finetuned | zero-shot | {finetuned.value:.1f} | 4 | {answer} ({share:.0f}%) |" in card


def test_loss_is_on_the_completion_only(task_file, dataset_dir, tiny_model_dir, tmp_path):
    run_ = build(*parse_args(recipe_args(task_file, dataset_dir, tiny_model_dir, tmp_path / "out", **LORA)))
    trainer = run_.trainer
    batch = next(iter(trainer.get_train_dataloader()))
    tokenizer = trainer.processing_class
    rows = {r["prompt"]: r["completion"] for r in run_.dataset["train"]}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        text = tokenizer.decode(ids[labels != -100])
        prompt = tokenizer.decode(ids[(labels == -100) & (ids != tokenizer.pad_token_id)])
        assert text == rows[prompt] + tokenizer.eos_token


def test_the_lm_head_projects_only_labelled_positions_with_the_same_loss(monkeypatch, task_file, dataset_dir, tiny_model_dir, tmp_path):
    from trl.trainer import utils as trl_utils

    projected = []  # positions (rows of hidden states) each fused forward sends through the LM head
    chunked = trl_utils._ChunkedLogProbFunction

    class CountingProjection:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingProjection)
    run_ = build(*parse_args(recipe_args(task_file, dataset_dir, tiny_model_dir, tmp_path / "out", **LORA)))
    model = run_.trainer.model
    batch = {k: v.to(model.device) for k, v in next(iter(run_.trainer.get_train_dataloader())).items()}
    with torch.no_grad():
        fused = model(**batch, fused_lm_head=True)
        full = model(**batch)  # the model's own cross-entropy over the full logits
    positions = batch["labels"][:, 1:]  # the positions that predict a next token
    assert projected == [int((positions != -100).sum())] and projected[0] < positions.numel()
    torch.testing.assert_close(fused.loss, full.loss, rtol=1e-5, atol=1e-5)


def test_evaluation_during_qlora_training_leaves_the_gradients_intact(monkeypatch, task_file, dataset_dir, qlora_model_dir, tmp_path):
    # bitsandbytes repacks 4-bit weights for a backward-less CPU kernel on the first eval-mode pass on
    # AVX512-BF16 CPUs; the recipe's model must keep training correctly after evaluations. Linear4bit asks
    # whether the CPU has them when it is built: told yes, it repacks on any CPU.
    import bitsandbytes as bnb

    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    assert bnb.nn.Linear4bit(64, 64).support_avx512bf16_for_cpu
    argv = recipe_args(task_file, dataset_dir, qlora_model_dir, tmp_path / "out", eval_strategy="steps", lora_dropout=0.0)
    trainer = build(*parse_args(argv)).trainer
    model = trainer.model
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    batch = next(iter(trainer.get_train_dataloader()))
    # lora_B: at initialisation lora_A's gradient is zero whatever flows back (B is zero).
    lora_b = next(p for n, p in model.named_parameters() if "layers.0.self_attn.q_proj.lora_B" in n)

    def first_layer_grad():
        model.train()
        model.zero_grad()
        model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}).loss.backward()
        return lora_b.grad.clone()

    before = first_layer_grad()
    assert before.abs().sum() > 0
    trainer.evaluate()  # the Trainer's evaluation loss, then the task callback's generations
    assert torch.equal(first_layer_grad(), before)


def test_full_finetuning_learns_what_the_evaluation_scores(task, task_file, tiny_model_dir, tmp_path):
    # Trained on the gold rows themselves, the model must score 100 with the zero-shot training prompt:
    # training and evaluation format the same text and read the label back the same way.
    data = save_task_dataset(task, tmp_path / "gold-data", task.gold * 8)
    result = run(
        recipe_args(task_file, data, tiny_model_dir, tmp_path / "out", **FULL, max_steps=40,
                    learning_rate=5e-3, per_device_train_batch_size=8, eval_baseline="false")
    )
    assert [s.value for s in result.scores] == [100.0]
    # The answers behind the score: in the result, and one line per gold row in the output folder.
    answers = [extract_label(p, task.labels) for p in result.scores[0].predictions]
    assert answers == [g.output for g in task.gold]
    written = [json.loads(line) for line in (tmp_path / "out" / "eval_predictions.jsonl").read_text().splitlines()]
    assert [(w["input"], w["reference"], w["prediction"]) for w in written] == [
        (g.input, g.output, p) for g, p in zip(task.gold, result.scores[0].predictions)
    ]
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "adapter_config.json").exists()
    assert "library_name: transformers" in (tmp_path / "out" / "README.md").read_text()


def test_few_shot_training_prompt_is_the_one_scored(task, task_file, tiny_model_dir, tmp_path):
    data = save_task_dataset(task, tmp_path / "gold-data", task.gold * 8)
    args = recipe_args(task_file, data, tiny_model_dir, tmp_path / "out", **FULL, max_steps=120, learning_rate=5e-3,
                       per_device_train_batch_size=8, eval_baseline="false", train_prompt="few-shot")
    run_ = build(*parse_args(args))
    tokenizer = run_.trainer.processing_class
    first = tokenizer.decode(run_.trainer.train_dataset[0]["input_ids"])
    assert all(f"Input: {e.input}" in first for e in task.examples)  # every demonstration precedes the row
    result = run(args)
    assert [(s.prompt, s.value) for s in result.scores] == [("few-shot", 100.0)]
    assert "the few-shot prompt it was trained on" in (tmp_path / "out" / "README.md").read_text()


def test_few_shot_training_prompt_needs_an_input_column(task, task_file, tiny_model_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"prompt": f"Input: {e.input}\nOutput:", "completion": " " + e.output} for e in task.examples]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(tmp_path / "no-input")
    with pytest.raises(ConfigError, match="train_prompt=few-shot rebuilds each prompt from the row's 'input'"):
        run(recipe_args(task_file, tmp_path / "no-input", tiny_model_dir, tmp_path / "out", **LORA, train_prompt="few-shot"))


def test_lora_adapter_on_the_full_precision_base(task_file, dataset_dir, tiny_model_dir, tmp_path):
    run(recipe_args(task_file, dataset_dir, tiny_model_dir, tmp_path / "out", **LORA, max_steps=1, eval_baseline="false"))
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    assert "Quantisation" not in (tmp_path / "out" / "README.md").read_text()


def test_two_processes_with_accelerate_launch(task_file, dataset_dir, qlora_model_dir, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "two.yaml"
    args = recipe_args(task_file, dataset_dir, qlora_model_dir, out, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=2)
    config.write_text(yaml.safe_dump({k[2:]: v for k, v in zip(args[::2], args[1::2])}))
    # `--cpu` would pick accelerate's single-process launcher; `--multi_gpu` starts torch.distributed workers,
    # which the recipe puts on the CPU (gloo) when the machine has no GPU.
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), "recipes/sft.py", "--config", str(config)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "| processes | 2 |" in card and "| total_train_batch_size | 4 |" in card
    assert "| finetuned | zero-shot |" in card and "eval_exact_match" not in proc.stderr[-200:]


# -- bad input stops before training ---------------------------------------------------------------


def test_missing_dataset_folder(task_file, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        run(recipe_args(task_file, tmp_path / "missing", tiny_model_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unknown_config_key_names_the_nearest(tmp_path, task_file):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"task": str(task_file), "lerning_rate": 0.1, "output_dir": str(tmp_path / "out")}))
    with pytest.raises(ConfigError, match="config key 'lerning_rate' does not exist \\(did you mean 'learning_rate'\\?\\)"):
        parse_args(["--config", str(config)])
    with pytest.raises(ConfigError, match="flag 'lora_rankk' does not exist"):
        parse_args(["--task", "t", "--lora_rankk", "8"])


def test_4bit_without_bitsandbytes(monkeypatch, task_file, dataset_dir, tiny_model_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(MissingBitsandbytesError, match="--load_in_4bit false"):
        run(recipe_args(task_file, dataset_dir, tiny_model_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_empty_training_split(task, task_file, tiny_model_dir, tmp_path):
    empty = save_task_dataset(task, tmp_path / "empty", [], task.gold)
    with pytest.raises(ConfigError, match="training split 'train' is empty"):
        run(recipe_args(task_file, empty, tiny_model_dir, tmp_path / "out", **LORA))
    assert not (tmp_path / "out").exists()


def test_prompts_longer_than_max_length_name_the_fix(task_file, dataset_dir, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"max_length: every one of the \d+ training rows is longer than 8 tokens.*Fix: raise max_length"):
        run(recipe_args(task_file, dataset_dir, tiny_model_dir, tmp_path / "out", **LORA, max_length=8))


def test_other_bad_inputs(task_file, dataset_dir, tiny_model_dir, tmp_path, rewrite_task_dict):
    args = recipe_args(task_file, dataset_dir, tiny_model_dir, tmp_path / "out")
    with pytest.raises(ConfigError, match="task: missing"):
        run(args[2:])
    no_gold = tmp_path / "no_gold.json"
    no_gold.write_text(json.dumps({**rewrite_task_dict, "test": []}))
    with pytest.raises(ConfigError, match="has no gold rows"):
        run(recipe_args(no_gold, dataset_dir, tiny_model_dir, tmp_path / "out", eval_strategy="steps"))
    with pytest.raises(ConfigError, match="tokens are not taken as arguments"):
        run(args + ["--hub_token", "hf_should_not_be_here"])
    with pytest.raises(ConfigError, match="push_dataset"):
        run(args + ["--push_dataset", "true"])
    with pytest.raises(ConfigError, match=r"synthesis_kwargs: .* is not JSON .*Fix: write an object"):
        run(args + ["--synthesis_kwargs", "{temperature: 0.7}"])
    with pytest.raises(ConfigError, match="synthesis_kwargs: must be a mapping"):
        run(args + ["--synthesis_kwargs", "[0.7]"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--synthesis_method", "rebase"], r"synthesis_kwargs \(rebase builder\): datastore: is missing"),
        (["--synthesis_method", "rebase", "--synthesis_kwargs", '{"datastore": "no-store"}'],
         r"synthesis_kwargs \(rebase builder\): datastore no-store"),
        (["--synthesis_kwargs", '{"max_round": 3}'],
         r"synthesis_kwargs \(selfguide builder\): max_round: no such knob of SelfGuideConfig \(did you mean 'max_rounds'\?\)\. Fix:"),
        (["--synthesis_kwargs", '{"label_strategy": "votes"}'], r"synthesis_kwargs \(selfguide builder\): label_strategy: 'votes'"),
        (["--synthesis_kwargs", '{"num_examples": 8, "seed": 1}'],
         r"synthesis_kwargs: 'num_examples', 'seed' would override --num_examples, --synthesis_seed\. Fix: pass"),
        (["--max_eval_rows", "0"], r"max_eval_rows: must be at least 1, got 0\. Fix: leave it out"),
        (["--learning_rate", "-1"], r"learning_rate: must be a positive number, got -1\.0\. Fix: pass e\.g\. 2e-4"),
        (["--max_steps", "0"], r"max_steps: 0 trains nothing \(TRL would train one step\)\. Fix: pass 1 or more"),
        (["--num_train_epochs", "0"], r"num_train_epochs: must be a positive number, got 0\.0\. Fix:"),
        (["--hub_strategy", "every_save"], r"hub_strategy: selfguide pushes once, at the end of the run.*Fix: drop hub_strategy"),
        (["--push_to_hub", "true", "--hub_revision", "dev"], r"hub_revision: selfguide pushes to the repo's main branch, not 'dev'\. Fix:"),
        (["--dataset_streaming", "true"], r"dataset_streaming: .*Fix: drop it"),
        (["--use_peft", "false"], r"load_in_4bit: a 4-bit base cannot be trained without an adapter\. Fix: add --use_peft"),
        (["--load_in_4bit", "false", "--load_in_8bit", "true"], r"load_in_8bit: 8-bit bases are not supported here\. Fix:"),
    ],
    ids=["no-datastore", "wrong-datastore", "misspelt-knob", "bad-value", "flag-in-kwargs", "no-eval-rows", "negative-lr",
         "zero-steps", "zero-epochs", "hub-strategy", "hub-revision", "streaming", "4bit-without-adapter", "8bit"],
)
def test_bad_settings_stop_before_the_student_is_loaded(task_file, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    # A student that does not exist: resolving it first would fail with its own error.
    args = ["--task", str(task_file), "--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "missing.gguf")]
    with pytest.raises(ConfigError, match=message):
        run(args + extra)
    assert not (tmp_path / "out").exists()


def test_the_card_counts_the_splits_trained_and_evaluated_on(task, task_file, tiny_model_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    splits = {"train_sft": task_rows(task, task.examples * 3), "test_sft": task_rows(task, task.gold[:2])}
    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(tmp_path / "sft")
    args = recipe_args(task_file, tmp_path / "sft", tiny_model_dir, tmp_path / "out", **LORA,
                       dataset_train_split="train_sft", dataset_test_split="test_sft")
    run_ = build(*parse_args(args))
    card = run_.card_callback.write(tmp_path / "card", run_.trainer.args, run_.trainer.state).read_text()
    assert f"- Rows: {len(task.examples) * 3} for training, 2 gold rows for evaluation" in card


def test_a_dataset_without_its_gold_split_is_evaluated_on_the_tasks_gold_rows(task_file, task, tiny_model_dir, tmp_path):
    """As the recipe saves and pushes its data by default: the gold rows stay off the Hub."""
    data = save_task_dataset(task, tmp_path / "data", task.examples * 4)
    run_ = build(*parse_args(recipe_args(task_file, data, tiny_model_dir, tmp_path / "out", **LORA, eval_strategy="steps")))
    assert run_.trainer.eval_dataset["output"] == [g.output for g in task.gold]
    metrics = run_.trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])


def test_a_generation_task_selects_checkpoints_by_rouge_under_a_classification_config(tiny_model_dir, tmp_path, rewrite_task_dict):
    """The shipped qlora.yaml names exact_match, which a generation task never logs."""
    task_file = tmp_path / "rewrite.json"
    task_file.write_text(json.dumps(rewrite_task_dict))
    task = Task.load(task_file)
    data = save_task_dataset(task, tmp_path / "data", task.examples * 4, task.gold)
    out = tmp_path / "out"
    run(recipe_args(task_file, data, tiny_model_dir, out, **LORA, eval_strategy="steps", eval_steps=1,
                    save_strategy="steps", save_steps=1, load_best_model_at_end="true", metric_for_best_model="exact_match",
                    eval_baseline="false"))
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    rouge = {e["step"]: e["eval_rougeL"] for e in state["log_history"] if "eval_rougeL" in e}
    assert list(rouge) == [1, 2] and len(set(rouge.values())) == 2
    assert state["best_metric"] == max(rouge.values())  # two scores apart: selected by rougeL, the higher the better


@pytest.mark.parametrize("config", sorted((REPO / "recipes" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(config, task_file):
    data_args, training_args, model_args = parse_args(["--config", str(config), "--task", str(task_file)])
    assert finetuning_method(model_args) == "qlora" and training_args.output_dir


def test_the_recipe_synthesizes_into_the_cache_a_plain_load_dataset_reads(task_file):
    """On the embedded default the recipe names the student as the user did, not by its converted folder."""
    from datasets import load_dataset_builder

    import selfguide  # noqa: F401  (registers the builders)
    from selfguide.builders.data import synthesis_arguments

    data_args, _, model_args = parse_args(["--task", str(task_file), "--num_examples", "8", "--synthesis_kwargs", '{"oversample": 3}'])
    recipe = load_dataset_builder("selfguide", **synthesis_arguments(data_args, Task.load(task_file), model_args.model_name_or_path))
    plain = load_dataset_builder("selfguide", task=str(task_file), num_examples=8, oversample=3.0)
    assert recipe.cache_dir == plain.cache_dir
    assert load_dataset_builder("selfguide", task=str(task_file), num_examples=9, oversample=3.0).cache_dir != plain.cache_dir


@pytest.mark.slow
def test_recipe_on_the_embedded_student(tmp_path):
    from selfguide.commands import demo_task_path

    task = Task.load(demo_task_path())
    data = save_task_dataset(task, tmp_path / "data", task.examples * 3, task.gold)
    out = tmp_path / "out"
    result = run(
        ["--task", str(demo_task_path()), "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "2",
         "--per_device_train_batch_size", "4", "--learning_rate", "2e-4", "--logging_steps", "1", "--gradient_checkpointing",
         "false", "--save_strategy", "no", "--eval_baseline", "false", "--max_eval_rows", "6"]
    )
    assert (out / "adapter_model.safetensors").is_file()
    [after] = result.scores
    assert after.model == "finetuned" and after.num_rows == 6
    card = (out / "README.md").read_text()
    assert "base_model: google/gemma-3-270m" in card and "license: gemma" in card
    loss = float(card.split("| final_train_loss | ")[1].split(" ")[0])
    assert math.isfinite(loss) and loss > 0


# -- TRL's arguments, the defaults, the CLI ----------------------------------------------------------


def test_a_config_written_for_trls_sft_script_runs_as_selfguide_sft(task_file, dataset_dir, qlora_model_dir, tmp_path, capsys):
    from selfguide.cli import main as cli_main

    out = tmp_path / "out"
    config = tmp_path / "trl.yaml"  # the keys of TRL's own trl/scripts/sft.py
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(qlora_model_dir), "dataset_name": str(dataset_dir), "use_peft": True, "load_in_4bit": True,
        "lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 2.0e-4, "max_steps": 1,
        "per_device_train_batch_size": 4, "gradient_checkpointing": False, "output_dir": str(out), "report_to": "none",
        "hub_model_id": "someone/tiny-qlora",
    }))
    assert cli_main(["sft", "--config", str(config), "--task", str(task_file), "--eval_baseline", "false"]) == 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    card = (out / "README.md").read_text()
    assert "QLoRA" in card and "target modules: q_proj, v_proj" in card and "PeftModel.from_pretrained(model, 'someone/tiny-qlora')" in card
    capsys.readouterr()
    # Bad input through the same command: one line naming the field and the fix, exit status 2, nothing written.
    assert cli_main(["sft", "--config", str(config), "--task", str(task_file), "--output_dir", str(tmp_path / "bad"), "--max_steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: max_steps: 0 trains nothing") and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "bad").exists()


def test_the_deprecated_finetuning_flag_maps_to_trls(caplog):
    for old, (use_peft, load_in_4bit) in {"qlora": (True, True), "lora": (True, False), "full": (False, False)}.items():
        _, _, model_args = parse_args(["--task", "t", "--finetuning", old])
        assert (model_args.use_peft, model_args.load_in_4bit) == (use_peft, load_in_4bit)
    assert "finetuning: deprecated; --finetuning full is --use_peft false --load_in_4bit false" in caplog.text


def test_defaults_suit_an_adapter_and_a_small_dataset(task, task_file, tiny_model_dir, tmp_path):
    from selfguide.recipes.arguments import ADAPTER_LEARNING_RATE, FULL_LEARNING_RATE, MIN_EPOCHS, MIN_STEPS

    data = save_task_dataset(task, tmp_path / "data", task.examples * 4)  # 16 rows: 4 steps an epoch at batch 4
    argv = recipe_args(task_file, data, tiny_model_dir, tmp_path / "out", max_steps=None, learning_rate=None, **LORA)
    trainer = build(*parse_args(argv)).trainer
    assert trainer.args.learning_rate == ADAPTER_LEARNING_RATE == 2e-4
    epochs = trainer.args.num_train_epochs
    assert epochs == MIN_STEPS / 4 and len(trainer.get_train_dataloader()) * epochs == MIN_STEPS  # not TRL's 3 epochs: 12 steps
    full = build(*parse_args(recipe_args(task_file, data, tiny_model_dir, tmp_path / "out", learning_rate=None, **FULL))).trainer
    assert full.args.learning_rate == FULL_LEARNING_RATE and full.args.num_train_epochs == MIN_EPOCHS  # max_steps given
    given = build(*parse_args(argv + ["--learning_rate", "1e-3", "--num_train_epochs", "2"])).trainer
    assert (given.args.learning_rate, given.args.num_train_epochs) == (1e-3, 2)


def test_task_scores_reach_tensorboard(task_file, dataset_dir, tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    result = run(recipe_args(task_file, dataset_dir, tiny_model_dir, out, **LORA, report_to="tensorboard", eval_strategy="steps", eval_steps=1))
    [logdir] = (out / "runs").iterdir()
    events = EventAccumulator(str(logdir))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    base_fewshot, base_zeroshot, finetuned = result.scores
    # The baseline when training starts, each evaluation's score, then the final one: as TensorBoard got them.
    assert scalars["train/base_fewshot_exact_match"] == [(0, base_fewshot.value)]
    assert scalars["train/base_zeroshot_exact_match"] == [(0, base_zeroshot.value)]
    assert [step for step, _ in scalars["eval/exact_match"]] == [1, 2, 2] and scalars["eval/exact_match"][-1] == (2, finetuned.value)
    assert [step for step, _ in scalars["eval/loss"]] == [1, 2]


def test_output_dir_that_is_a_file_stops_before_synthesis(task_file, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    args = ["--task", str(task_file), "--output_dir", str(tmp_path / "out" / "run"), "--model_name_or_path", str(tmp_path / "missing.gguf")]
    with pytest.raises(ConfigError, match=r"output_dir: .*out is a file, not a folder\. Fix: pass a folder"):
        run(args)


def test_a_bad_input_under_accelerate_launch_ends_with_its_one_line(task_file, dataset_dir, tmp_path):
    # --quiet: accelerate's launcher then reports a failed run by its exit status, not with its own traceback.
    cmd = ["accelerate", "launch", "--quiet", "--num_processes", "1", "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no",
           "recipes/sft.py", "--task", str(task_file), "--dataset_name", str(dataset_dir), "--output_dir", str(tmp_path / "out"),
           "--learning_rate", "-1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: learning_rate: must be a positive number, got -1.0. Fix: pass e.g. 2e-4, or leave it out for the default"


# -- the data a run is given -------------------------------------------------------------------------


def generated_folder(task, folder: Path, examples) -> Path:
    """A folder laid out as `selfguide generate --output-dir` writes it: dataset/, <split>.jsonl, filter_report.json, task.json."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    from selfguide.report import FilterReport
    from selfguide.task import save_task

    report = FilterReport()
    report.add("input_filters", 40, 20, {"too_long": 12, "near_duplicate": 8})
    report.add("final", 20, len(examples))
    info = DatasetInfo(description=report.to_description("SELF-GUIDE rows"), builder_name="selfguide")
    dataset = DatasetDict({"train": Dataset.from_list(task_rows(task, examples), info=info)})
    dataset.save_to_disk(str(folder / "dataset"))
    dataset["train"].to_json(str(folder / "train.jsonl"), lines=True)
    (folder / "filter_report.json").write_text(json.dumps(report.to_dict()))
    save_task(task, folder)
    return folder


def test_the_folder_selfguide_generate_wrote_trains_with_its_task_and_filter_report(task, tiny_model_dir, tmp_path, rewrite_task_dict):
    folder = generated_folder(task, tmp_path / "generated", task.examples * 4)
    argv = ["--dataset_name", str(folder), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"),
            "--load_in_4bit", "false", "--max_steps", "1", "--report_to", "none"]
    run_ = build(*parse_args(argv))  # no --task: the folder's own
    assert run_.task.to_dict() == task.to_dict() and run_.trainer.train_dataset.num_rows == 16
    card = run_.card_callback.write(tmp_path / "card", run_.trainer.args, run_.trainer.state).read_text()
    assert "- Method: SELF-GUIDE" in card and "| input_filters | 40 | 20 | too_long: 12, near_duplicate: 8 |" in card
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**rewrite_task_dict, "name": "other_task"}))
    assert build(*parse_args(argv + ["--task", str(other)])).task.name == "other_task"  # --task still overrides


def test_a_saved_folder_without_its_task_asks_for_one(task, tiny_model_dir, tmp_path):
    data = save_task_dataset(task, tmp_path / "data", task.examples)
    with pytest.raises(ConfigError, match=r"task: missing and .*data holds no saved task\. Fix: pass --task"):
        run(["--dataset_name", str(data), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")])


def test_the_dataset_folder_for_the_hub_keeps_its_task_without_the_gold_rows(task, tmp_path):
    """What the recipe saves in <output_dir>/dataset and --push_dataset publishes: a task.json beside the rows, and
    the gold rows in neither unless asked for (a published test set leaks into the next crawl)."""
    from datasets import Dataset, DatasetDict, load_dataset

    from selfguide.hub import save_dataset_for_hub
    from selfguide.hub_cards import DataSummary

    dataset = DatasetDict({"train": Dataset.from_list(task_rows(task, task.examples * 4)), "test": Dataset.from_list(task_rows(task, task.gold))})
    summary = DataSummary("SELF-GUIDE", "load_dataset('selfguide', ...)", "the base model wrote", 16, 4)
    folder = save_dataset_for_hub(dataset, tmp_path / "dataset", task, summary)
    saved = Task.from_saved(folder)
    assert (saved.name, saved.instruction, saved.examples, saved.gold) == (task.name, task.instruction, task.examples, [])
    assert list(load_dataset(str(folder))) == ["train"] and load_dataset(str(folder))["train"].num_rows == 16
    with_gold = save_dataset_for_hub(dataset, tmp_path / "with_gold", task, summary, gold_rows=True)
    assert Task.from_saved(with_gold).gold == task.gold


def test_a_hub_dataset_pushed_with_its_task_gives_the_recipe_its_task(task, tmp_path, monkeypatch):
    """`--dataset_name user/repo` without --task: the task.json `--push_dataset` published beside the rows, found
    through huggingface_hub (here from its cache, offline, laid out as a download leaves it)."""
    import huggingface_hub
    from datasets import Dataset, DatasetDict
    from huggingface_hub import constants

    from selfguide.builders.data import resolve_task
    from selfguide.hub import save_dataset_for_hub
    from selfguide.hub_cards import DataSummary

    dataset = DatasetDict({"train": Dataset.from_list(task_rows(task, task.examples))})
    summary = DataSummary("SELF-GUIDE", "load_dataset('selfguide', ...)", "the base model wrote", 4)
    pushed = save_dataset_for_hub(dataset, tmp_path / "pushed", task, summary)
    repo = tmp_path / "hub" / "datasets--me--sentiment-data"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "task.json").write_bytes((pushed / "task.json").read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(sys.modules[huggingface_hub.is_offline_mode.__module__], "HF_HUB_OFFLINE", True)

    found = resolve_task(None, "me/sentiment-data")
    assert (found.name, found.instruction, found.examples, found.gold) == (task.name, task.instruction, task.examples, [])
    with pytest.raises(ConfigError, match=r"task: missing and me/other-data holds no saved task\. Fix: pass --task"):
        resolve_task(None, "me/other-data")


# -- the end of a run ----------------------------------------------------------------------------------


def test_a_killed_run_resumed_from_its_checkpoint_ends_with_the_same_card(task, task_file, dataset_dir, tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    class Killed(Exception):
        pass

    class KillAfterStep(TrainerCallback):  # the process dies mid-run: after checkpoint-2, before step 3 is saved
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Killed

    def argv(parent: Path) -> list[str]:  # the same folder name: the card is named after it
        return recipe_args(task_file, dataset_dir, tiny_model_dir, parent / "run", **LORA, max_steps=4, eval_strategy="steps",
                           eval_steps=2, save_strategy="steps", save_steps=2, learning_rate=3e-3)

    whole = run(argv(tmp_path / "whole"))
    killed = build(*parse_args(argv(tmp_path / "killed")))
    killed.trainer.add_callback(KillAfterStep())
    with pytest.raises(Killed):
        killed.trainer.train()
    out = tmp_path / "killed" / "run"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"] and not (out / "adapter_model.safetensors").exists()
    resumed = run(argv(tmp_path / "killed") + ["--resume_from_checkpoint", str(out / "checkpoint-2")])

    assert (out / "README.md").read_text() == (tmp_path / "whole" / "run" / "README.md").read_text()
    assert [(s.label, s.value, s.predictions) for s in resumed.scores] == [(s.label, s.value, s.predictions) for s in whole.scores]
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert len([e for e in history if "base_fewshot_exact_match" in e]) == 1  # scored once, before the kill
    assert [e["step"] for e in history if "eval_exact_match" in e] == [2, 4]


def test_a_model_that_learned_one_label_is_called_out_at_the_end_and_in_the_card(task, task_file, tiny_model_dir, tmp_path, capsys):
    # Trained on rows of one label only, the model answers it on every gold row, half of which hold the other.
    one_label = [g for g in task.gold if g.output == "positive"]
    data = save_task_dataset(task, tmp_path / "one-label", one_label * 8)
    run(recipe_args(task_file, data, tiny_model_dir, tmp_path / "out", **FULL, max_steps=30, learning_rate=5e-3,
                    per_device_train_batch_size=8, eval_baseline="false"))
    stdout = capsys.readouterr().out
    share = 100 * len(one_label) // len(task.gold)
    message = f"The finetuned model answers 'positive' on 100% of the 4 gold rows, which hold {share}% 'positive': it learned one label"
    assert f"WARNING: {message}" in stdout and "Fix: train on more, or better balanced, rows" in stdout
    assert f"> **Warning:** {message}" in (tmp_path / "out" / "README.md").read_text()


def test_finetuning_warnings_name_the_problem_and_the_fix(task):
    from selfguide.diagnosis import finetuning_warnings
    from selfguide.evaluation import TaskScore

    labels = [g.output for g in task.gold]  # two positive, two negative
    prompted = TaskScore("base", "few-shot", "exact_match", 75.0, 4, ["positive", "negative", "negative", "negative"])
    sound = TaskScore("finetuned", "zero-shot", "exact_match", 100.0, 4, labels)
    assert finetuning_warnings([prompted, sound], task) == []
    worse = TaskScore("finetuned", "zero-shot", "exact_match", 50.0, 4, ["positive"] * 4)
    one_label, below = finetuning_warnings([prompted, worse], task)
    assert one_label.startswith("The finetuned model answers 'positive' on 100% of the 4 gold rows, which hold 50% 'positive'")
    assert below.startswith("The finetuned model scores 50.0 exact_match, below the base model prompted with the demonstrations (75.0)")
    assert all("Fix: " in w for w in (one_label, below))
    # A constant answer that the gold rows themselves mostly hold is no sign of a broken model.
    skewed = Task.load({**task.to_dict(), "test": [{"input": g.input, "output": "positive"} for g in task.gold]})
    assert finetuning_warnings([TaskScore("finetuned", "zero-shot", "exact_match", 100.0, 4, ["positive"] * 4)], skewed) == []


def test_training_rows_keep_the_builders_completions_and_form(task):
    """with_training_prompts: a ReBase row's completion holds its reasoning, and a chat student's rows are turns;
    neither is rebuilt from `output`, and the task's gold rows join them in the same form."""
    from datasets import Dataset

    from selfguide.builders.data import with_training_prompts
    from selfguide.prompts import prompt_completion, training_prompt, user_turn

    reasoned = [{**task_rows(task, [e])[0], "completion": f" It says '{e.input}', so {e.output}"} for e in task.examples]
    gold = Dataset.from_list([{"input": g.input, "output": g.output} for g in task.gold])
    train, test = with_training_prompts(Dataset.from_list(reasoned), gold, task, "zero-shot", seed=0)
    assert train["completion"] == [r["completion"] for r in reasoned] and train["prompt"] == [r["prompt"] for r in reasoned]
    assert test["prompt"] == [training_prompt(task, g.input) for g in task.gold] and test["completion"] == [" " + g.output for g in task.gold]
    train, _ = with_training_prompts(Dataset.from_list(reasoned), None, task, "few-shot", seed=0)
    assert train["completion"] == [r["completion"] for r in reasoned] and all(f"Input: {e.input}" in train["prompt"][0] for e in task.examples)

    chat = Dataset.from_list([{"input": e.input, "output": e.output, **prompt_completion(task, e.input, e.output, chat=True)} for e in task.examples])
    train, test = with_training_prompts(chat, gold, task, "zero-shot", seed=0)
    assert train["prompt"] == chat["prompt"] and test["prompt"] == [user_turn(training_prompt(task, g.input)) for g in task.gold]
    assert test["completion"] == [[{"role": "assistant", "content": g.output}] for g in task.gold]
    train, _ = with_training_prompts(chat, None, task, "few-shot", seed=0)
    assert train["completion"] == chat["completion"] and [t["role"] for t in train["prompt"][0]] == ["user"]
    assert all(f"Input: {e.input}" in train["prompt"][0][0]["content"] for e in task.examples)


def test_a_chat_student_trains_and_is_scored_in_its_chat_template(task, task_file, tiny_chat_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    from selfguide.prompts import prompt_completion

    def rows(examples):  # what the builders write for a chat student: TRL's conversational prompt-completion rows
        return [{"input": e.input, "output": e.output, **prompt_completion(task, e.input, e.output, chat=True)} for e in examples]

    DatasetDict({"train": Dataset.from_list(rows(task.examples * 4)), "test": Dataset.from_list(rows(task.gold))}).save_to_disk(tmp_path / "data")
    run_ = build(*parse_args(recipe_args(task_file, tmp_path / "data", tiny_chat_dir, tmp_path / "out", **LORA, eval_baseline="false")))
    trained = run_.trainer.processing_class.decode(run_.trainer.train_dataset[0]["input_ids"])
    assert "[user]\n" in trained and "[assistant]\n" in trained  # SFTTrainer applied the template
    assert run_.task_callback.score_kwargs["chat"] is True  # and the evaluation prompts use it too
