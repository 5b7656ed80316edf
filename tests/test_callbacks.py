"""The callbacks with a plain transformers Trainer: they need nothing from TRL or the recipe."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerControl, TrainerState, TrainingArguments

from selfguide import Task
from selfguide.callbacks import ModelCardCallback, TaskEvalCallback
from selfguide.evaluation import score_model
from selfguide.metrics import most_frequent_answer
from selfguide.hub_cards import DataSummary, ModelCardInfo
from tests.sft_helpers import qlora_model_dir, task_rows  # noqa: F401  (fixture)


def lm_rows(tokenizer, task, examples):
    rows = []
    for r in task_rows(task, examples):
        ids = tokenizer(r["prompt"] + r["completion"] + tokenizer.eos_token)["input_ids"]
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def card_info(task):
    data = DataSummary("given dataset", "in-memory rows", "came from in-memory rows", len(task.examples), len(task.gold))
    return ModelCardInfo(model_name="plain-trainer", task=task, base_model="tiny", finetuning="full", data=data)


def test_callbacks_drive_best_model_selection_and_write_cards(tiny_model_dir, sentiment_task_dict, tmp_path):
    task = Task.load(sentiment_task_dict)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3, use_cpu=True,
        eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, logging_steps=1, report_to="none",
        load_best_model_at_end=True, metric_for_best_model="exact_match", greater_is_better=True,
    )
    task_eval = TaskEvalCallback(task)
    trainer = Trainer(
        model=model, args=args, data_collator=collate, processing_class=tokenizer,
        train_dataset=lm_rows(tokenizer, task, task.gold * 4), eval_dataset=lm_rows(tokenizer, task, task.gold),
        callbacks=[task_eval, ModelCardCallback(card_info(task), task_eval=task_eval)],
    )
    trainer.train()
    final_card = (tmp_path / "out" / "README.md").read_text()

    history = trainer.state.log_history
    baseline = [e for e in history if "base_fewshot_exact_match" in e]
    assert len(baseline) == 1 and "base_zeroshot_exact_match" in baseline[0]
    evaluated = [e for e in history if "eval_exact_match" in e]
    assert [e["step"] for e in evaluated] == [1, 2, 3] == [e["step"] for e in history if "eval_loss" in e]
    scores = {e["step"]: e["eval_exact_match"] for e in evaluated}
    assert len(set(scores.values())) > 1  # trained on the gold rows, the score moves: no checkpoint wins by a tie
    best_step = max(scores, key=scores.get)  # the first step to reach the top score: a later tie is no improvement
    assert Path(trainer.state.best_model_checkpoint).name == f"checkpoint-{best_step}"
    assert trainer.state.best_metric == scores[best_step]
    # The output folder's weights are the best checkpoint's once training ends, and so is its card.
    assert best_step != 3 and final_card == (tmp_path / "out" / f"checkpoint-{best_step}" / "README.md").read_text()

    metrics = trainer.evaluate()  # the best checkpoint's weights, loaded at the end
    direct = score_model(trainer.model, tokenizer, task)
    assert metrics["eval_exact_match"] == direct.value == task_eval.last_score.value == scores[best_step]
    assert task_eval.last_score.predictions == direct.predictions
    answer, share = most_frequent_answer(direct.predictions, task.labels)  # the best weights' answers, as at their save
    assert f"| finetuned | zero-shot | {direct.value:.1f} | 4 | {answer} ({share:.0f}%) |" in final_card

    for step in (1, 2, 3):
        card = (tmp_path / "out" / f"checkpoint-{step}" / "README.md").read_text()
        value = next(e["eval_exact_match"] for e in evaluated if e["step"] == step)
        assert f"| finetuned | zero-shot | {value:.1f} | 4 |" in card
        assert f"| steps | {step} |" in card


def test_generation_task_logs_rouge(tiny_model_dir, rewrite_task_dict):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    answers = score_model(model, tokenizer, Task.load(rewrite_task_dict), max_new_tokens=8).predictions
    assert len(set(answers)) == len(answers)
    # The random model shares no word with the real references: rougeL 0.0 whatever the callback generates.
    # Against the model's own answers only the same generations, row by row, score 100.
    own = [{"input": row["input"], "output": answer} for row, answer in zip(rewrite_task_dict["test"], answers)]
    task = Task.load({**rewrite_task_dict, "test": own})
    callback = TaskEvalCallback(task, baseline=False, max_new_tokens=8)
    state, metrics = TrainerState(), {"eval_loss": 1.0}
    state.log_history.append({"eval_loss": 1.0, "step": 0})
    callback.on_evaluate(None, state, TrainerControl(), model=model, processing_class=tokenizer, metrics=metrics)
    assert metrics == {"eval_loss": 1.0, "eval_rougeL": 100.0}
    assert metrics["eval_rougeL"] == score_model(model, tokenizer, task, max_new_tokens=8).value
    assert callback.last_score.predictions == answers
    assert state.log_history[-1]["eval_rougeL"] == 100.0


def test_card_callback_writes_on_the_main_process_only(tiny_model_dir, sentiment_task_dict, tmp_path):
    task = Task.load(sentiment_task_dict)
    state = TrainerState(is_world_process_zero=False)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    callback = ModelCardCallback(card_info(task))
    callback.on_train_end(args, state, TrainerControl())
    assert not (tmp_path / "out" / "README.md").exists()
    state.is_world_process_zero = True
    callback.on_train_end(args, state, TrainerControl())
    assert (tmp_path / "out" / "README.md").is_file()


def test_evaluating_a_4bit_model_leaves_its_gradients_intact(qlora_model_dir, sentiment_task_dict):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from selfguide.quantization import nf4_config, trainable_4bit_layout
    from selfguide.student import offline_load_kwargs

    task = Task.load(sentiment_task_dict)
    tokenizer = AutoTokenizer.from_pretrained(qlora_model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        qlora_model_dir, quantization_config=nf4_config(), dtype=torch.float32, **offline_load_kwargs()
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    # As bitsandbytes sets it on AVX512-BF16 CPUs: then an eval-mode pass repacks the weights on any CPU.
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = True
    with trainable_4bit_layout(model):
        assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    assert all(layer.support_avx512bf16_for_cpu for layer in layers)
    batch = {k: v.to(model.device) for k, v in collate(lm_rows(tokenizer, task, task.gold)).items()}

    def first_layer_grad():
        model.train()
        model.zero_grad()
        model(**batch).loss.backward()
        return model.base_model.model.model.layers[0].self_attn.q_proj.lora_A.default.weight.grad.clone()

    before = first_layer_grad()
    assert before.abs().sum() > 0
    TaskEvalCallback(task, baseline=False, max_new_tokens=2).on_evaluate(
        None, TrainerState(), TrainerControl(), model=model, processing_class=tokenizer, metrics={}
    )
    assert not any(getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers)
    assert all(layer.support_avx512bf16_for_cpu for layer in layers)  # the layout is the callback's only for its evaluation
    assert torch.equal(first_layer_grad(), before)
