"""Speed and memory of the engine and the recipe on a GPU, with a model of the paper's student's shape.

No real 7B weights reach the GPU machine, so the model is Vicuna-7B's shape (Llama, 32 layers, hidden 4096,
MLP 11008, 32 heads, vocabulary 32000) with random weights, and a word-level tokenizer made here. The numbers
are what the shape costs, not what a trained model answers (it rarely samples its end token, so every sample
runs to `--max-new-tokens`). Measured side by side in one run:

  generation  TransformersEngine.generate (one prefill shared by the n samples of a prompt) against
              transformers' own generate(num_return_sequences=n) on the same batches and settings
  scoring     TransformersEngine.score: label log-likelihoods, each prompt's cache shared by its labels
  training    recipes/sft.py's own build() (the recipe's model loading, TRL's SFTTrainer): QLoRA on a 4-bit base
              against LoRA on a bf16 base, step time and peak GPU memory

    python benchmarks/cuda_7b_shape.py                   # on a machine with a CUDA GPU
    python benchmarks/cuda_7b_shape.py --layers 2 --hidden 256 --intermediate 512 --name cuda_smoke   # a small check
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from common import command_line, machine, markdown_table, write_results

from selfguide.engines import SamplingParams, TransformersEngine

TASK = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sentiment_task.json"
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prompts", type=int, default=64, help="prompts per generation call")
    p.add_argument("--prompt-words", type=int, default=300)
    p.add_argument("--n", type=int, default=4, help="samples per prompt, as SELF-GUIDE's vote asks")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", default="16,64", help="TransformersEngine batch sizes to measure")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--row-words", type=int, default=256, help="words in a training row's prompt")
    p.add_argument("--name", default="cuda_7b_shape")
    p.add_argument("--cpu-smoke", action="store_true", help="run on the CPU (a check of this script, not a measurement)")
    return p.parse_args()


def word_tokenizer(vocab: int):
    """A word-level tokenizer of exactly `vocab` entries: every id the random model samples decodes to a word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = json.loads(TASK.read_text())
    corpus = {w for e in words["examples"] + words["test"] for w in (e["input"] + " " + e["output"]).split()}
    corpus |= set(words["instruction"].split())
    entries = SPECIAL + sorted(corpus) + [f"w{i}" for i in range(vocab)]
    table = {w: i for i, w in enumerate(dict.fromkeys(entries[:vocab]))}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def random_model(args, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    return model.eval()


def text(rng: random.Random, words: int) -> str:
    return " ".join(f"w{rng.randrange(2000)}" for _ in range(words))


CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # the CPU only for a smoke check of this script: --cpu-smoke


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def reset_peak() -> None:
    gc.collect()  # a finished trainer's reference cycles would otherwise hold its model into the next measurement
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gib(peak: bool = True):
    if not CUDA:
        return None
    return round((torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2**30, 2)


def synchronized(fn):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def bare_generate(model, tokenizer, prompts, params: SamplingParams, batch_size: int) -> list[list[str]]:
    """transformers' generate with num_return_sequences: each prompt prefilled once per sample."""
    out: list[list[str]] = []
    torch.manual_seed(params.seed)
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(DEVICE)
        with torch.inference_mode():
            ids = model.generate(
                **enc, do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None,
                max_new_tokens=params.max_new_tokens, num_return_sequences=params.n, pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        out += [texts[i : i + params.n] for i in range(0, len(texts), params.n)]
    return out


def measure_generation(model, tokenizer, args) -> list[dict]:
    """Each way twice, in turn (A B C A B C): the first call at a batch size also pays for growing the allocator's
    pool, which would otherwise count against whichever way runs first. The table reads the second round."""
    rng = random.Random(0)
    prompts = [text(rng, args.prompt_words) for _ in range(args.prompts)]
    params = SamplingParams(temperature=1.0, top_p=1.0, n=args.n, max_new_tokens=args.max_new_tokens, seed=0)
    single = SamplingParams(**{**vars(params), "n": 1})
    repeated = [p for p in prompts for _ in range(args.n)]
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        engine = TransformersEngine(model, tokenizer, batch_size=batch_size)
        wide = TransformersEngine(model, tokenizer, batch_size=batch_size * args.n)  # as many sequences per batch
        ways = (
            ("TransformersEngine", lambda: engine.generate(prompts, params)),
            ("TransformersEngine, n=1 on repeated prompts", lambda: wide.generate(repeated, single)),
            ("transformers generate", lambda: bare_generate(model, tokenizer, prompts, params, batch_size)),
        )
        for round_ in (1, 2):
            for name, call in ways:
                reset_peak()
                outputs, seconds = synchronized(call)
                if name.startswith("TransformersEngine, n=1"):
                    outputs = [outputs[i][0] for i in range(len(outputs))]
                else:
                    outputs = [t for samples in outputs for t in samples]
                tokens = engine.count_tokens(outputs)
                rows.append({
                    "engine": name, "round": round_, "batch_size": batch_size, "prompts": len(prompts), "n": args.n,
                    "seconds": round(seconds, 2), "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                    "peak_gib": gib(),
                })
                print(rows[-1], flush=True)
    return rows


def measure_scoring(model, tokenizer, args) -> dict:
    rng = random.Random(1)
    labels = ["positive", "negative", "neutral"]
    prompts = [text(rng, args.prompt_words) for _ in range(args.prompts)]
    engine = TransformersEngine(model, tokenizer, batch_size=16)
    pairs = [(p, lab) for p in prompts for lab in labels]
    engine.score([pairs[0][0]], [pairs[0][1]])  # warm-up
    reset_peak()
    _, seconds = synchronized(lambda: engine.score([p for p, _ in pairs], [c for _, c in pairs]))
    return {"prompts": len(prompts), "labels": len(labels), "seconds": round(seconds, 2),
            "prompts_per_s": round(len(prompts) / seconds, 1), "peak_gib": gib()}


def training_data(folder: Path, args) -> Path:
    from datasets import Dataset, DatasetDict

    from selfguide import Task
    from selfguide.prompts import prompt_completion

    task, rng = Task.from_file(TASK), random.Random(2)
    rows = []
    for i in range(args.train_batch * args.train_steps):
        example = task.gold[i % len(task.gold)]
        source = text(rng, args.row_words) + " " + example.input
        rows.append({"input": source, "output": example.output, **prompt_completion(task, source, example.output)})
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(folder))
    return folder


def measure_training(model_dir: Path, data_dir: Path, work: Path, args, four_bit: bool) -> dict:
    from transformers import TrainerCallback

    from selfguide.recipes.arguments import parse_args as recipe_args
    from selfguide.recipes.sft import build

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            sync()
            self.times.append(time.perf_counter() - self.start)

    argv = [
        "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--task", str(TASK),
        "--output_dir", str(work / ("qlora" if four_bit else "lora")), "--max_steps", str(args.train_steps),
        "--per_device_train_batch_size", str(args.train_batch), "--gradient_accumulation_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--eval_baseline", "false", "--max_eval_rows", "4",
        "--report_to", "none", "--load_in_4bit", str(four_bit).lower(), "--max_length", "1024",
    ]
    reset_peak()
    held = gib(peak=False)  # anything still allocated from before: subtracted from this method's numbers
    run, load_s = synchronized(lambda: build(*recipe_args(argv)))
    loaded_gib = gib(peak=False)
    timer = StepTimer()
    run.trainer.add_callback(timer)
    run.trainer.remove_callback(run.task_callback)  # scoring the random model's answers measures nothing here
    run.trainer.train()
    steady = timer.times[1:] or timer.times
    result = {
        "method": "qlora" if four_bit else "lora (bf16 base)", "build_s": round(load_s, 1),
        "weights_gib": loaded_gib and round(loaded_gib - held, 2), "peak_gib": gib() and round(gib() - held, 2),
        "held_before_gib": held,
        "first_step_s": round(timer.times[0], 2), "step_s": round(sum(steady) / len(steady), 3),
        "rows_per_s": round(args.train_batch * len(steady) / sum(steady), 1),
        "final_loss": run.trainer.state.log_history[-1].get("train_loss"),
    }
    del run
    reset_peak()
    print(result, flush=True)
    return result


def main():
    args = parse_args()
    if not CUDA and not args.cpu_smoke:
        raise SystemExit("cuda_7b_shape.py measures the GPU path: no CUDA device is visible (--cpu-smoke checks the script on a CPU)")
    tokenizer = word_tokenizer(args.vocab)
    model = random_model(args, tokenizer)
    params_b = sum(p.numel() for p in model.parameters()) / 1e9
    generation = measure_generation(model, tokenizer, args)
    scoring = measure_scoring(model, tokenizer, args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, save_s = synchronized(lambda: (model.save_pretrained(work / "model"), tokenizer.save_pretrained(work / "model")))
        del model
        reset_peak()
        data = training_data(work / "data", args)
        training = [measure_training(work / "model", data, work, args, four_bit) for four_bit in (True, False)]

    shape = {k: getattr(args, k) for k in ("layers", "hidden", "intermediate", "heads", "vocab")}
    payload = {"machine": machine(), "command": command_line(), "shape": shape, "parameters_billion": round(params_b, 2),
               "save_s": round(save_s, 1), "generation": generation, "scoring": scoring, "training": training,
               "settings": {k: v for k, v in vars(args).items() if k not in shape}}
    by = {(r["engine"], r["batch_size"]): r for r in generation if r["round"] == 2}
    gen_rows = []
    for batch_size in sorted({r["batch_size"] for r in generation}):
        bare = by[("transformers generate", batch_size)]
        for way in ("TransformersEngine", "TransformersEngine, n=1 on repeated prompts", "transformers generate"):
            r = by[(way, batch_size)]
            gen_rows.append([batch_size, way, r["tokens_per_s"], f"{r['tokens_per_s'] / bare['tokens_per_s']:.2f}", r["peak_gib"]])
    md = [
        f"# A {params_b:.1f}B model of Vicuna-7B's shape on {payload['machine']['cuda']}: engine and recipe",
        "",
        f"Random weights (bf16), a word-level tokenizer of {args.vocab} entries; {args.prompts} prompts of {args.prompt_words} "
        f"words, {args.n} samples each, {args.max_new_tokens} new tokens (temperature 1). One run, side by side; "
        f"load average {payload['machine']['load_average_1m']:.2f} (the host's CPUs).",
        "",
        "## Generation: SELF-GUIDE's engine against transformers' generate on the same batches (second of two rounds)",
        "",
        markdown_table(["prompts per batch", "way", "tokens/s", "vs generate", "peak GiB"], gen_rows),
        "",
        f"## Scoring: {scoring['prompts']} prompts x {scoring['labels']} labels in {scoring['seconds']} s "
        f"({scoring['prompts_per_s']} prompts/s, peak {scoring['peak_gib']} GiB)",
        "",
        f"## Training: recipes/sft.py's build() and TRL's SFTTrainer, batch {args.train_batch}, rows of about "
        f"{args.row_words} words, {args.train_steps} steps (the first left out of the mean); GPU memory counted above "
        "what was still allocated before the method's build",
        "",
        markdown_table(["method", "model load s", "weights GiB", "peak GiB", "first step s", "step s", "rows/s"],
                       [[t["method"], t["build_s"], t["weights_gib"], t["peak_gib"], t["first_step_s"], t["step_s"], t["rows_per_s"]] for t in training]),
        "",
        f"Command: `{payload['command']}`; saving the random model took {payload['save_s']} s.",
    ]
    write_results(args.name, payload, "\n".join(md))


if __name__ == "__main__":
    main()
