"""QLoRA training steps on the CPU with bf16 vs float32 4-bit matmuls (bitsandbytes' compute dtype).

`selfguide.quantization.nf4_config` picks float32 on the CPU, where QLoRA's usual bf16 is fast only
with native bf16 instructions (AVX512-BF16, AMX). Both variants load the embedded student the
recipe's way (nf4, double quantisation, LoRA r16 on every linear layer) and time forward and backward
passes of the same batch, projecting the LM head only at the last positions as the recipe does. The
variants alternate, so load from other processes on a shared machine falls on both.

    python benchmarks/qlora_compute_dtype.py                 # batch 8 x 64 tokens, 2 timed steps each

Writes benchmarks/results/qlora_compute_dtype.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import command_line, machine, markdown_table, write_results

VARIANTS = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f == "avx2")


def load(compute_dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from selfguide.quantization import nf4_config
    from selfguide.student import resolve_student

    model = AutoModelForCausalLM.from_pretrained(
        resolve_student(None), quantization_config=nf4_config(compute_dtype=compute_dtype), device_map={"": "cpu"}, dtype=torch.float32
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))


def step(model, batch: torch.Tensor, completion_tokens: int) -> float:
    start = time.perf_counter()
    inner = model.base_model.model
    hidden = inner.model(input_ids=batch).last_hidden_state[:, -completion_tokens - 1 : -1]
    logits = inner.lm_head(hidden).float()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, -completion_tokens:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--completion-tokens", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant, after one untimed warm-up step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="qlora_compute_dtype", help="results file name under benchmarks/results/ (one per kind of CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = torch.randint(100, 20000, (args.batch, args.tokens))
    models = {name: load(dtype) for name, dtype in VARIANTS.items()}
    for model in models.values():
        step(model, batch, args.completion_tokens)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.steps):
        for name, model in models.items():
            times[name].append(step(model, batch, args.completion_tokens))
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median["bfloat16"] / median["float32"]
    flags = cpu_flags()
    md = "\n".join([
        "# QLoRA on the CPU: bf16 vs float32 4-bit matmuls",
        "",
        f"Embedded Gemma 3 270M, nf4 + LoRA r16 on every linear layer, batch {args.batch} x {args.tokens} tokens, LM head "
        f"projected at the last {args.completion_tokens} positions, {args.threads} CPU thread(s), forward + backward; "
        f"{args.steps} timed steps per variant, alternating. CPU flags of note: {', '.join(flags) or 'none'}.",
        "",
        markdown_table(["compute dtype", "step time, median (s)", "steps (s)"],
                       [[name, f"{median[name]:.2f}", ", ".join(f"{t:.2f}" for t in times[name])] for name in VARIANTS]),
        "",
        f"bf16 / float32 step time: **{ratio:.2f}x**. Load average (1 min) at the end: {machine()['load_average_1m']:.2f}. "
        f"Command: `{command_line()}`.",
    ])
    write_results(args.name, {"settings": vars(args), "cpu_flags": flags, "times_s": times, "median_s": median,
                                          "ratio_bf16_over_fp32": ratio, "machine": machine()}, md)


if __name__ == "__main__":
    main()
