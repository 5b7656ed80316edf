"""The local engine's two shortcuts against plain transformers calls on the same prompts, in one run.

  labels    `TransformersEngine.score` (each prompt encoded once for all labels, vocabulary projection
            only where a label token is predicted) vs one full forward per (prompt, label) pair
  samples   `TransformersEngine.generate` with n samples (one prefill, cache copied n times) vs
            `model.generate(num_return_sequences=n)` (which prefills every copy)

On an NI V2 classification task's few-shot annotation prompts with the embedded student.

    python benchmarks/engine_shortcuts.py [--task FILE] [--inputs 8] [--samples 5]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from common import SHARED_DATA, machine, markdown_table, write_results

from selfguide import Task
from selfguide.engines import SamplingParams, TransformersEngine
from selfguide.prompts import fewshot_prompt, format_completion


def plain_scores(engine: TransformersEngine, prompts: list[str], continuations: list[str]) -> list[float]:
    tok, out = engine.tokenizer, []
    for p, c in zip(prompts, continuations):
        p_ids, c_ids = tok(p)["input_ids"], tok(c, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([p_ids + c_ids])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out.append(sum(logprobs[len(p_ids) - 1 + t, i].item() for t, i in enumerate(c_ids)))
    return out


def plain_generate(engine: TransformersEngine, prompts: list[str], n: int, max_new_tokens: int) -> None:
    tok = engine.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        engine.model.generate(**enc, do_sample=True, temperature=0.2, top_k=40, num_return_sequences=n,
                              max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=str(SHARED_DATA / "ni" / "tasks" / "task190_snli_classification.json"))
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=8)
    args = p.parse_args()

    task = Task.load(args.task)
    engine = TransformersEngine.from_pretrained(None, batch_size=args.inputs)
    inputs = [g.input for g in task.gold[: args.inputs]]
    prompts = [fewshot_prompt(task, x, random.Random(i)) for i, x in enumerate(inputs)]
    labels = [format_completion(label) for label in task.labels]
    pairs = [p for p in prompts for _ in labels]
    conts = labels * len(prompts)

    ours_scores: list[float] = []
    t_score_ours = timed(lambda: ours_scores.extend(engine.score(pairs, conts)))
    plain: list[float] = []
    t_score_plain = timed(lambda: plain.extend(plain_scores(engine, pairs, conts)))
    max_diff = max(abs(a - b) for a, b in zip(ours_scores, plain))

    # Annotation settings; both sides decode exactly max_new_tokens so they do the same work.
    params = SamplingParams(temperature=0.2, top_k=40, n=args.samples, max_new_tokens=args.max_new_tokens, seed=0)
    engine.model.generation_config.min_new_tokens = args.max_new_tokens
    t_gen_ours = timed(lambda: engine.generate(prompts, params))
    t_gen_plain = timed(lambda: plain_generate(engine, prompts, args.samples, args.max_new_tokens))

    prompt_tokens = engine.count_tokens(prompts) / len(prompts)
    rows = [
        ["label scores", f"{len(prompts)} prompts x {len(labels)} labels", f"{t_score_plain:.1f}", f"{t_score_ours:.1f}",
         f"{t_score_plain / t_score_ours:.1f}x"],
        ["n samples", f"{len(prompts)} prompts x n={args.samples}, {args.max_new_tokens} new tokens", f"{t_gen_plain:.1f}",
         f"{t_gen_ours:.1f}", f"{t_gen_plain / t_gen_ours:.1f}x"],
    ]
    md = "\n".join([
        "# Engine shortcuts vs plain transformers calls",
        "",
        f"Task `{task.name}`, few-shot prompts of {prompt_tokens:.0f} tokens on average, embedded student, one run.",
        f"Largest difference between the two label scores: {max_diff:.2e} (log-probability).",
        "",
        markdown_table(["call", "work", "plain transformers (s)", "selfguide engine (s)", "speed-up"], rows),
        "",
        f"Command: `python benchmarks/engine_shortcuts.py --inputs {args.inputs} --samples {args.samples}`",
    ])
    write_results("engine_shortcuts", {"settings": vars(args), "prompt_tokens": prompt_tokens, "max_score_diff": max_diff,
                                       "seconds": {"score_plain": t_score_plain, "score_ours": t_score_ours,
                                                   "generate_plain": t_gen_plain, "generate_ours": t_gen_ours},
                                       "machine": machine()}, md)


if __name__ == "__main__":
    main()
