"""In-process llama.cpp through llama-cpp-python: a .gguf student generates and scores without a server.

Every prompt is computed the same way whatever came before it: the cache is cleared, the prompt but its last
token is prefilled once, and each sample (or scored continuation) evaluates that last token afresh on top of
it. So the n samples of a prompt share one prefill, and a prompt's outputs and scores do not depend on the
prompts batched with it or on the calls before it.
"""

from __future__ import annotations

import os
import random
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np
from datasets.utils import tqdm

from ..errors import ConfigError, InputNotFoundError, SelfGuideError
from ..patches import llama_logits_at_every_position
from .base import Engine, SamplingParams, truncate_at_stop


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise SelfGuideError(
            "engine='llama.cpp' needs llama-cpp-python, which is not installed. Fix: pip install 'selfguide[llama]'"
        ) from e
    return llama_cpp


def _check_gguf(model: Optional[str]) -> Optional[Path]:
    """The .gguf file `model` names, or None for the embedded default."""
    from ..student import DEFAULT_STUDENT

    if model in (None, "", DEFAULT_STUDENT):
        return None
    path = Path(model).expanduser()
    if path.suffix != ".gguf":
        raise ConfigError(
            f"model: {model!r} is not a .gguf file, and the llama.cpp engine loads GGUF checkpoints only. "
            "Fix: pass a .gguf path, or use engine='transformers' for a Hub id or a model folder"
        )
    if not path.is_file():
        raise InputNotFoundError(f"model: GGUF file {path} does not exist. Fix: pass an existing .gguf path")
    return path


class LlamaCppEngine(Engine):
    def __init__(self, llm, seed: int = 0, progress: Optional[str] = None):
        self.llm = llm
        self.progress = progress  # the description of a progress bar over generate()'s prompts; None: no bar
        # Draws each call's base seed when its params carry none: calls differ, an engine's run repeats.
        self._call_seeds = random.Random(seed)

    @classmethod
    def from_pretrained(
        cls,
        model: Optional[str] = None,
        n_ctx: int = 8192,
        n_threads: Optional[int] = None,
        seed: int = 0,
        progress: Optional[str] = None,
    ) -> "LlamaCppEngine":
        """`model`: a .gguf file, or None for the embedded student.

        `n_threads`: for decoding and prefill alike, as llama.cpp's own tools default; None: half the CPUs,
        llama-cpp-python's default for decoding. Its prefill default, every CPU, spins threads against each
        other on a busy machine: a 169-token prefill took 5.5 s on 2 threads and 0.5 s on 1 (2 cores, load 8).
        """
        path = _check_gguf(model)
        llama_cpp = _import_llama_cpp()
        if path is None:
            from ..student import _embedded_gguf

            path = _embedded_gguf()
        # swa_full: each sample rolls the cache back to its prompt; a sliding-window cache that dropped the
        # positions generation slid past could not go back (Gemma 3 has 512-token windows).
        threads = n_threads or max(os.cpu_count() // 2, 1)
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=seed, swa_full=True, verbose=False
        )
        return cls(llm, seed=seed, progress=progress)

    def close(self) -> None:
        self.llm.close()

    def _tokenize(self, text: str, bos: bool = True) -> list[int]:
        # Special tokens parsed: a chat-rendered prompt holds its template's control tokens as text.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=True)

    def _check_fits(self, n_tokens: int, what: str) -> None:
        if n_tokens > self.llm.n_ctx():
            raise ConfigError(
                f"n_ctx: {what} needs {n_tokens} tokens, more than the context of {self.llm.n_ctx()}. "
                "Fix: LlamaCppEngine.from_pretrained(..., n_ctx=...) with a larger context, or a shorter prompt"
            )

    def _prefill(self, tokens: list[int]) -> None:
        """A cache holding exactly `tokens`, computed from scratch."""
        self.llm.reset()
        self.llm.eval(tokens)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        base = params.seed if params.seed is not None else self._call_seeds.getrandbits(31)
        seen: dict[str, int] = {}
        results = []
        for prompt in tqdm(prompts, desc=self.progress, unit="prompt", disable=self.progress is None, leave=False):
            tokens = self._tokenize(prompt)
            self._check_fits(len(tokens) + params.max_new_tokens, f"a prompt plus max_new_tokens={params.max_new_tokens}")
            # Seeded by the prompt's text, its repeat within the call and the sample's index: the same prompt
            # gets the same samples however the prompts are batched or ordered.
            repeat = seen[prompt] = seen.get(prompt, -1) + 1
            self._prefill(tokens[:-1])
            samples = []
            for j in range(params.n):
                # create_completion matches the cached prefix (the prompt but its last token) and evaluates the
                # rest. min_p, typical_p and repeat_penalty are set to their no-op values; llama.cpp applies
                # the temperature after top_k and top_p, as its server does.
                out = self.llm.create_completion(
                    tokens,
                    max_tokens=params.max_new_tokens,
                    temperature=params.temperature,
                    top_k=params.top_k,
                    top_p=params.top_p,
                    min_p=0.0,
                    typical_p=1.0,
                    repeat_penalty=1.0,
                    stop=list(params.stop),
                    seed=random.Random(f"{base}|{repeat}|{j}|{prompt}").getrandbits(31),
                )
                samples.append(truncate_at_stop(out["choices"][0]["text"], params.stop))
            results.append(samples)
        return results

    def _continuation_logprob(self, prompt: list[int], continuation: list[int]) -> float:
        """Summed log-probability of `continuation` after `prompt`, whose all-but-last tokens are cached."""
        inputs = [prompt[-1]] + continuation[:-1]  # row r predicts continuation[r]
        logits = llama_logits_at_every_position(self.llm, inputs, n_past=len(prompt) - 1)
        top = logits.max(axis=1)
        log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        return float((logits[np.arange(len(inputs)), continuation] - log_norm).sum())

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """Log-likelihood of each continuation after its prompt, tokenized apart and joined (as
        TransformersEngine does); each distinct prompt is prefilled once for all its continuations."""
        scores = [0.0] * len(prompts)
        pairs_of: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            pairs_of.setdefault(p, []).append(i)
        for prompt, pairs in pairs_of.items():
            tokens = self._tokenize(prompt)
            conts = {i: self._tokenize(continuations[i], bos=False) for i in pairs}
            self._check_fits(len(tokens) + max(len(c) for c in conts.values()), "a prompt plus its continuation")
            self._prefill(tokens[:-1])
            for i, cont in conts.items():
                if cont:
                    scores[i] = self._continuation_logprob(tokens, cont)
        return scores

    @cached_property
    def _chat_formatter(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:  # -1: the model has no such token
            return self.llm.detokenize([token], special=True).decode("utf-8") if token >= 0 else ""

        return Jinja2ChatFormatter(
            template=self.llm.metadata["tokenizer.chat_template"],
            eos_token=text(self.llm.token_eos()),
            bos_token=text(self.llm.token_bos()),
        )

    @property
    def has_chat_template(self) -> bool:
        return bool(self.llm.metadata.get("tokenizer.chat_template"))

    def render_chat(self, messages) -> str:
        if not self.has_chat_template:
            return super().render_chat(messages)
        formatter = self._chat_formatter
        text = formatter(messages=list(messages)).prompt
        bos = formatter.bos_token
        return text[len(bos):] if bos and text.startswith(bos) else text

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(self._tokenize(t, bos=False)) for t in texts)
