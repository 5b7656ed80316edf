"""Local generation with a transformers causal LM: batched, left-padded, seeded."""

from __future__ import annotations

import math
from typing import Optional

import torch
from datasets.utils import tqdm

from ..prompts import tokenizer_style
from .base import Engine, SamplingParams, truncate_at_stop


class TransformersEngine(Engine):
    def __init__(self, model, tokenizer, batch_size: int = 16, logits_budget: int = 2**28, progress: Optional[str] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress  # the description of a progress bar over generate()'s batches; None: no bar
        # Most logits one scoring forward may hold (2**28 float32: 1 GiB, twice that with its
        # log-softmax). Long continuations times a 262k vocabulary overran 24 GiB at batch_size alone.
        self.logits_budget = logits_budget
        # Decoder-only generation needs the padding on the left so every row ends at the prompt's end.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, model_name_or_path: Optional[str] = None, dtype: str = "auto", **kwargs):
        from ..student import load_student

        model, tokenizer = load_student(model_name_or_path, dtype=dtype)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _batches(self, texts: list[str]):
        # Grouping prompts of similar length keeps padding, and so wasted compute, small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            yield start // self.batch_size, order[start : start + self.batch_size]

    def _encode(self, texts: list[str]) -> dict:
        enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        # Positions count real tokens only, as generate() derives them, so a left-padded row reads
        # the same as it would alone.
        enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return enc

    def _prefill(self, enc: dict, repeats: int):
        """The KV cache of every prompt but its last token, each row repeated `repeats` times.

        generate() with num_return_sequences copies each prompt before encoding it, so n samples
        cost n prefills; encoding once and copying the cache costs one.
        """
        with torch.inference_mode():
            out = self.model(
                input_ids=enc["input_ids"][:, :-1],
                attention_mask=enc["attention_mask"][:, :-1],
                position_ids=enc["position_ids"][:, :-1],
                use_cache=True,
                logits_to_keep=1,
            )
        cache = out.cache
        cache.batch_repeat_interleave(repeats)
        return cache

    def _shares_prefill(self, n: int, enc: dict) -> bool:
        """One prefill for the n samples of a prompt, on a CPU only. There prefill is the cost: n samples took 2.8x
        less time (benchmarks/results/engine_shortcuts.md). On an H200 generation is bound by the decode steps, and
        the shared cache made them slower: 0.48x transformers' own generate at 64 prompts x 4 samples a batch, 0.96x
        at 16 (benchmarks/results/cuda_7b_shape.md)."""
        return n > 1 and enc["input_ids"].shape[1] > 1 and self.device.type == "cpu"

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        results: list[list[str]] = [[] for _ in prompts]
        do_sample = params.temperature > 0
        kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=do_sample, pad_token_id=self.tokenizer.pad_token_id)
        if do_sample:
            kwargs.update(temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        n = params.n
        batches = tqdm(
            self._batches(prompts), total=math.ceil(len(prompts) / self.batch_size), desc=self.progress,
            unit="batch", disable=self.progress is None, leave=False,
        )
        for b, idx in batches:
            enc = self._encode([prompts[i] for i in idx])
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                if params.seed is not None:
                    torch.manual_seed(params.seed * 100_003 + b)
                with torch.inference_mode():
                    # Per batch: a cache left from the batch before would be read as this batch's prompts.
                    shared = {"cache": self._prefill(enc, n)} if self._shares_prefill(n, enc) else {}
                    out = self.model.generate(
                        input_ids=enc["input_ids"].repeat_interleave(n, dim=0),
                        attention_mask=enc["attention_mask"].repeat_interleave(n, dim=0),
                        **kwargs, **shared,
                    )
            texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, i in enumerate(idx):
                results[i] = [truncate_at_stop(t, params.stop) for t in texts[j * n : (j + 1) * n]]
        return results

    def _score_batches(self, unique: list[str], pairs_of: dict[str, list[int]], tokens: list[list[int]]):
        """Prompts grouped by length, at most `batch_size` of them and `logits_budget` continuation logits
        per group (one prompt with all its continuations always makes a group)."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        batch, rows, width = [], 0, 0
        for u in sorted(range(len(unique)), key=lambda u: len(unique[u])):
            pairs = pairs_of[unique[u]]
            w = max(len(tokens[i]) for i in pairs)
            if batch and (len(batch) == self.batch_size or (rows + len(pairs)) * max(width, w) * vocab > self.logits_budget):
                yield batch
                batch, rows, width = [], 0, 0
            batch.append(u)
            rows, width = rows + len(pairs), max(width, w)
        if batch:
            yield batch

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """Log-likelihood of each continuation after its prompt.

        Each distinct prompt is encoded once and its cache shared by all its continuations (the
        labels of a classification task), and the vocabulary projection runs only where a
        continuation token is predicted: with a 262k vocabulary that projection, at every prompt
        position, would cost more than the model itself.
        """
        tok = self.tokenizer
        scores = [0.0] * len(prompts)
        pairs_of: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            pairs_of.setdefault(p, []).append(i)
        unique = list(pairs_of)
        tokens = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
        for idx in self._score_batches(unique, pairs_of, tokens):
            enc = self._encode([unique[u] for u in idx])
            with torch.inference_mode():
                out = self.model(**enc, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            owner = [j for j, u in enumerate(idx) for _ in pairs_of[unique[u]]]
            pair = [i for u in idx for i in pairs_of[unique[u]]]
            conts = [tokens[i] for i in pair]
            width = max(len(c) for c in conts)
            if width == 0:
                continue
            ids = torch.full((len(conts), width), tok.pad_token_id, dtype=torch.long)
            for r, c in enumerate(conts):  # right padding: a continuation's pads come after it, so never seen
                ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
            rows = torch.tensor(owner, device=self.device)
            cache = out.cache
            cache.reorder_cache(rows)
            prompt_mask = enc["attention_mask"][rows]
            start = enc["position_ids"][rows, -1:] + 1
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=torch.cat([prompt_mask, torch.ones_like(ids, device=self.device)], dim=1),
                    position_ids=start + torch.arange(width, device=self.device),
                    cache=cache,
                ).logits
            later = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            for r, (i, c) in enumerate(zip(pair, conts)):
                if not c:
                    continue
                target = ids[r, : len(c)].to(self.device)
                total = first[owner[r], target[0]]
                if len(c) > 1:
                    total = total + later[r, : len(c) - 1].gather(-1, target[1:, None]).sum()
                scores[i] = total.item()
        return scores

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages) -> str:
        if not self.has_chat_template:
            return super().render_chat(messages)
        return tokenizer_style(self.tokenizer).render(messages)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
