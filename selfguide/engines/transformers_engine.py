"""Local generation with a transformers causal LM: batched, left-padded, seeded."""

from __future__ import annotations

from typing import Optional

import torch

from .base import Engine, SamplingParams, truncate_at_stop


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # Decoder-only generation needs the padding on the left so every row ends at the prompt's end.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, model_name_or_path: Optional[str] = None, dtype: str = "auto", batch_size: int = 16):
        from ..student import load_student

        model, tokenizer = load_student(model_name_or_path, dtype=dtype)
        return cls(model, tokenizer, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _batches(self, texts: list[str]):
        # Grouping prompts of similar length keeps padding, and so wasted compute, small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            yield start // self.batch_size, order[start : start + self.batch_size]

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        results: list[list[str]] = [[] for _ in prompts]
        do_sample = params.temperature > 0
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=do_sample,
            num_return_sequences=params.n,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if do_sample:
            kwargs.update(temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        for b, idx in self._batches(prompts):
            enc = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(self.device)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                if params.seed is not None:
                    torch.manual_seed(params.seed * 100_003 + b)
                with torch.inference_mode():
                    out = self.model.generate(**enc, **kwargs)
            texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, i in enumerate(idx):
                results[i] = [truncate_at_stop(t, params.stop) for t in texts[j * params.n : (j + 1) * params.n]]
        return results

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]:
        tok = self.tokenizer
        scores = [0.0] * len(prompts)
        pairs = [p + c for p, c in zip(prompts, continuations)]
        for _, idx in self._batches(pairs):
            prompt_ids = [tok(prompts[i])["input_ids"] for i in idx]
            cont_ids = [tok(continuations[i], add_special_tokens=False)["input_ids"] for i in idx]
            rows = [p + c for p, c in zip(prompt_ids, cont_ids)]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, r in enumerate(rows):  # right padding: positions of the continuation stay simple
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for j, i in enumerate(idx):
                start, end = len(prompt_ids[j]), len(rows[j])
                targets = ids[j, start:end].to(self.device)
                scores[i] = logprobs[j, start - 1 : end - 1].gather(-1, targets[:, None]).sum().item()
        return scores

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
