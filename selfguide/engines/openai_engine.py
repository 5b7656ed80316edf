"""Generation and scoring through any OpenAI-compatible server (vLLM, llama-cpp-python, TGI) by its base URL.

It calls /v1/completions with plain prompts, so the prompts that work for a local base model work
unchanged against a larger teacher served elsewhere. The official `openai` client carries the requests:
its retries (408, 409, 429, 5xx and dropped connections, honouring Retry-After), timeouts and typed
errors. This module adds what the client does not: asking again when a server ignores `n`, errors that
quote the server and name the fix, a thread pool over prompts, and `score` from echoed log-probabilities.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import openai

from ..errors import ConfigError, SelfGuideError
from ..prompts import tokenizer_style
from .base import Engine, SamplingParams, truncate_at_stop

# The OpenAI API accepts at most four stop strings; servers following it reject more.
_MAX_STOP = 4
# Samples asked for in one request: llama.cpp's llama-server refuses an `n` above 4 with a 400 ("Field 'n': Value
# must be between 1 <= value <= 4"); more are asked for in further requests.
_MAX_N = 4
# The client refuses to start without a key; servers that check none ignore this one.
_NO_KEY = "no-key"
_CANNOT_SCORE_FIX = (
    "A server that does not answer echo with log-probabilities cannot score continuations, which the "
    "likelihood, calibrated, channel and rank labels need. Fix: serve the model with prompt log-probabilities "
    '(llama-cpp-python: --logits_all true; vLLM does as it is), or use label_strategy="vote", which only samples'
)


class ServerError(SelfGuideError, RuntimeError):
    """The server could not be reached or refused a request; the message names the base URL and the fix."""


def _load_tokenizer(name: str):
    """A transformers tokenizer from a Hub id, a local folder, or a .gguf file (its embedded tokenizer)."""
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(path) if path.exists() else name)


class OpenAIEngine(Engine):
    def __init__(
        self,
        base_url: str,
        model: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        concurrency: int = 4,
        tokenizer: Optional[str] = None,
    ):
        """`max_retries` more attempts after the first; `timeout` in seconds per attempt. `tokenizer` (a Hub id,
        folder or .gguf of the served model's tokenizer) gives chat templates and exact token counts."""
        if concurrency < 1:
            raise ConfigError(f"concurrency: must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ConfigError(f"max_retries: must be 0 or more, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        # Users paste either the server root or its /v1 prefix; both must work.
        api = self.base_url if self.base_url.endswith("/v1") else self.base_url + "/v1"
        self.timeout, self.max_retries, self.concurrency = timeout, max_retries, concurrency
        self._api_key = api_key or None
        self._client = openai.OpenAI(base_url=api, api_key=api_key or _NO_KEY, timeout=timeout, max_retries=max_retries)
        self._model = model
        self.tokenizer = _load_tokenizer(tokenizer) if tokenizer else None

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _quote(self, text: str, limit: int) -> str:
        """The server's words for a message: the api key cut out (some servers echo it back), then shortened."""
        if self._api_key:
            text = text.replace(self._api_key, "<api key>")
        return text[:limit]

    def _call(self, what: str, request: Callable, fix: str) -> dict:
        """`request()` (a `with_raw_response` call of the client) as the JSON object the server answered;
        every failure a ServerError that names the server and the fix."""
        attempts = self.max_retries + 1
        try:
            response = request().http_response
        except openai.APITimeoutError as e:
            raise ServerError(
                f"{what} at {self.base_url} timed out after {self.timeout:g} s, {attempts} attempts. "
                "Fix: raise timeout=, lower concurrency= (a server that runs one request at a time makes the "
                "others wait in line), or check that the server is not overloaded"
            ) from e
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise ServerError(
                f"cannot reach the server at {self.base_url} ({type(cause).__name__}: {cause}) after {attempts} "
                "attempts. Fix: start the server or correct base_url"
            ) from e
        except openai.APIStatusError as e:
            # `from None`: the client's own message repeats the answer without leaving the api key out.
            raise ServerError(
                f"{what} at {self.base_url} answered {e.status_code}: {self._quote(e.response.text, 500)}. {fix}"
            ) from None
        try:
            answer = response.json()
        except ValueError:
            raise ServerError(
                f"{what} at {self.base_url} answered with something that is not JSON: {self._quote(response.text, 200)!r}. "
                "Fix: point base_url at an OpenAI-compatible server"
            ) from None
        if not isinstance(answer, dict):
            raise ServerError(
                f"{what} at {self.base_url} answered with JSON that is not an object: {self._quote(response.text, 200)!r}. "
                "Fix: point base_url at an OpenAI-compatible server"
            )
        return answer

    @property
    def model(self) -> str:
        """The served model: the one named at construction, else the first the server lists."""
        if self._model is None:
            answer = self._call("GET /v1/models", self._client.models.with_raw_response.list, "Fix: pass model=... explicitly")
            listed = answer.get("data") or []
            if not listed or not isinstance(listed[0], dict) or "id" not in listed[0]:
                raise ServerError(f"{self.base_url} lists no model under /v1/models. Fix: pass model=... explicitly")
            self._model = listed[0]["id"]
        return self._model

    def _completion(self, what: str, fix: str, **kwargs) -> dict:
        return self._call(what, lambda: self._client.completions.with_raw_response.create(**kwargs), fix)

    def _choices(self, answer: dict, expect: str) -> list[dict]:
        """The answer's choices, each holding a text; a chat-format answer ("message") or an error object with
        status 200 would otherwise read as empty text."""
        got = answer.get("choices")
        if not got or not isinstance(got, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in got):
            raise ServerError(
                f"{self.base_url} answered {expect} without choices that hold a 'text': "
                f"{self._quote(json.dumps(answer), 300)}. Fix: point base_url at a server of the OpenAI /v1/completions API"
            )
        return sorted(got, key=lambda c: c.get("index", 0))

    # -- generation ----------------------------------------------------------------------------------

    def _complete(self, model: str, index: int, prompt: str, params: SamplingParams) -> list[str]:
        texts: list[str] = []
        # Some servers (llama.cpp) ignore `n` and answer with one choice: ask again for the rest,
        # with a shifted seed so the extra samples are not copies of the first.
        while len(texts) < params.n:
            knobs = {}
            if params.seed is not None:
                knobs["seed"] = params.seed * 100_003 + index * 1_009 + len(texts)
            if params.stop:
                knobs["stop"] = list(params.stop)[:_MAX_STOP]
            if params.top_k > 0:
                knobs["extra_body"] = {"top_k": params.top_k}  # not an OpenAI knob: vLLM and llama.cpp read it
            answer = self._completion(
                "POST /v1/completions",
                "Fix: check the model name, the api key and the request limits of the server",
                model=model, prompt=prompt, max_tokens=params.max_new_tokens, temperature=params.temperature,
                top_p=params.top_p, n=min(params.n - len(texts), _MAX_N), **knobs,
            )
            texts.extend(truncate_at_stop(c["text"], params.stop) for c in self._choices(answer, "a completion request"))
        return texts[: params.n]

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        if not prompts:
            return []
        model = self.model  # resolved once here, not raced by the workers
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda ip: self._complete(model, ip[0], ip[1], params), enumerate(prompts)))

    # -- scoring -------------------------------------------------------------------------------------

    def _cannot_score(self, why: str, answer) -> ServerError:
        return ServerError(
            f"{self.base_url} answered a scoring request (echo with logprobs), but {why}: "
            f"{self._quote(json.dumps(answer), 400)}. {_CANNOT_SCORE_FIX}"
        )

    def _score_one(self, model: str, prompt: str, continuation: str) -> float:
        """log P(continuation | prompt), from the server's log-probabilities of the echoed prompt + continuation.

        One token is generated (llama-cpp-python reads max_tokens=0 as "no limit") and left out by the count
        of `usage.completion_tokens`. The continuation is located from the end of the echoed text, since
        vLLM's `text_offset` counts the BOS token's text ("<bos>") from the start while llama-cpp-python's
        does not. A token that straddles the boundary (the prompt's last characters merged with the
        continuation's first) counts towards the continuation: it is the only token that predicts those
        first characters. The first token of a text has no log-probability in this API.
        """
        text = prompt + continuation
        answer = self._completion(
            "a scoring request (echo with logprobs)",
            _CANNOT_SCORE_FIX,
            model=model, prompt=text, max_tokens=1, temperature=0.0, echo=True, logprobs=1,
        )
        (choice, *_) = self._choices(answer, "a scoring request")
        lp = choice.get("logprobs")
        if not isinstance(lp, dict) or not isinstance(lp.get("token_logprobs"), list):
            raise self._cannot_score("the answer holds no token log-probabilities", answer)
        logprobs, offsets, tokens = lp["token_logprobs"], lp.get("text_offset"), lp.get("tokens")
        if not (isinstance(offsets, list) and isinstance(tokens, list) and len(offsets) == len(logprobs) == len(tokens)):
            raise self._cannot_score("its logprobs lack matching text_offset and tokens lists", answer)
        usage = answer.get("usage")
        generated = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not isinstance(generated, int):  # no usage: the text says whether a token was generated
            generated = int(len(choice["text"]) > len(text))
        echoed = len(offsets) - generated
        if echoed < 1 or not choice["text"].startswith(text):
            raise self._cannot_score("the answer does not echo the prompt", answer)
        end = offsets[echoed - 1] + len(tokens[echoed - 1])  # where the echoed text ends, in the offsets' count
        boundary = end - len(continuation)
        total = 0.0
        for i in range(1, echoed):
            if offsets[i] + len(tokens[i]) > boundary:
                if logprobs[i] is None:
                    raise self._cannot_score(f"token {i} of the echoed text has a null log-probability", answer)
                total += logprobs[i]
        return total

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """Summed log-probability of each continuation after its prompt; each distinct pair is asked once,
        `concurrency` requests at a time. An empty continuation scores 0."""
        if len(prompts) != len(continuations):
            raise ConfigError(f"continuations: {len(continuations)} given for {len(prompts)} prompts; give one per prompt")
        pairs = list(dict.fromkeys(p for p in zip(prompts, continuations) if p[1]))
        if any(not p for p, _ in pairs):
            raise ConfigError("prompts: scoring needs a non-empty prompt before each continuation")
        if not pairs:
            return [0.0] * len(prompts)
        model = self.model
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            table = dict(zip(pairs, pool.map(lambda pc: self._score_one(model, *pc), pairs)))
        return [table.get(p, 0.0) for p in zip(prompts, continuations)]

    def check_scoring(self) -> None:
        """One tiny scoring request: a server that cannot score fails here, before any sampling is spent."""
        self.score(["The sky is"], [" blue"])

    # -- the served model's tokenizer, when one is given ---------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: Sequence[dict]) -> str:
        if not self.has_chat_template:
            return super().render_chat(messages)
        return tokenizer_style(self.tokenizer).render(list(messages))

    def count_tokens(self, texts: list[str]) -> int:
        if self.tokenizer is None:
            return super().count_tokens(texts)
        return sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
