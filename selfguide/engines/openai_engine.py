"""Generation through any OpenAI-compatible server (vLLM, llama.cpp, TGI) by its base URL.

It calls /v1/completions with plain prompts, so the prompts that work for a local base model work
unchanged against a larger teacher served elsewhere.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import httpx

from .base import Engine, SamplingParams, truncate_at_stop
from ..errors import ConfigError, SelfGuideError

logger = logging.getLogger(__name__)

# 408/429 mean "not now", 5xx mean the server failed this attempt: all worth another try.
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
# The OpenAI API accepts at most four stop strings; servers following it reject more.
_MAX_STOP = 4


class ServerError(SelfGuideError, RuntimeError):
    """The server could not be reached or refused a request; the message names the base URL and the fix."""


class OpenAIEngine(Engine):
    def __init__(
        self,
        base_url: str,
        model: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        concurrency: int = 4,
        backoff: float = 0.5,
    ):
        if concurrency < 1:
            raise ConfigError(f"concurrency: must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ConfigError(f"max_retries: must be 0 or more, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        # Users paste either the server root or its /v1 prefix; both must work.
        self._api = self.base_url if self.base_url.endswith("/v1") else self.base_url + "/v1"
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=concurrency)
        )
        self._model = model

    @property
    def model(self) -> str:
        """The served model: the one named at construction, else the first the server lists."""
        if self._model is None:
            listed = self._request("GET", "/models").get("data") or []
            if not listed or not isinstance(listed[0], dict) or "id" not in listed[0]:
                raise ServerError(f"{self.base_url} lists no model under /v1/models. Fix: pass model=... explicitly")
            self._model = listed[0]["id"]
        return self._model

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        url = self._api + path
        attempt = 0
        while True:
            last = attempt >= self.max_retries
            retry_after = None
            try:
                response = self._client.request(method, url, json=body)
            except httpx.TransportError as e:
                if last:
                    raise ServerError(
                        f"cannot reach the server at {self.base_url} ({type(e).__name__}: {e}) after "
                        f"{attempt + 1} attempts. Fix: start the server or correct base_url"
                    ) from e
            else:
                if response.status_code not in _RETRY_STATUS or last:
                    return self._json(method, url, response)
                retry_after = response.headers.get("retry-after")
            self._sleep(attempt, retry_after)
            attempt += 1

    @staticmethod
    def _json(method: str, url: str, response: httpx.Response) -> dict:
        if response.status_code >= 400:
            raise ServerError(
                f"{method} {url} answered {response.status_code}: {response.text[:500]}. "
                "Fix: check the model name, the api key and the request limits of the server"
            )
        try:
            answer = response.json()
        except ValueError as e:
            raise ServerError(f"{method} {url} answered with something that is not JSON: {response.text[:200]!r}") from e
        if not isinstance(answer, dict):
            raise ServerError(
                f"{method} {url} answered with JSON that is not an object: {response.text[:200]!r}. "
                "Fix: point base_url at an OpenAI-compatible server"
            )
        return answer

    def _sleep(self, attempt: int, retry_after: Optional[str]) -> None:
        delay = self.backoff * 2**attempt
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass  # an HTTP date instead of seconds: the exponential delay is good enough
        logger.info("retrying %s in %.1fs (attempt %d)", self.base_url, delay, attempt + 1)
        time.sleep(delay)

    def _body(self, model: str, prompt: str, params: SamplingParams, n: int, seed: Optional[int]) -> dict:
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": n,
        }
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if seed is not None:
            body["seed"] = seed
        if params.stop:
            body["stop"] = list(params.stop)[:_MAX_STOP]
        return body

    def _complete(self, model: str, index: int, prompt: str, params: SamplingParams) -> list[str]:
        texts: list[str] = []
        # Some servers (llama.cpp) ignore `n` and answer with one choice: ask again for the rest,
        # with a shifted seed so the extra samples are not copies of the first.
        while len(texts) < params.n:
            seed = None if params.seed is None else params.seed * 100_003 + index * 1_009 + len(texts)
            answer = self._request("POST", "/completions", self._body(model, prompt, params, params.n - len(texts), seed))
            got = answer.get("choices")
            # A chat-format answer ("message") or an error object with status 200 would otherwise read as empty text.
            if not got or not isinstance(got, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in got):
                raise ServerError(
                    f"{self.base_url} answered a completion request without choices that hold a 'text': "
                    f"{json.dumps(answer)[:300]}. Fix: point base_url at a server of the OpenAI /v1/completions API"
                )
            got.sort(key=lambda c: c.get("index", 0))
            texts.extend(truncate_at_stop(c["text"], params.stop) for c in got)
        return texts[: params.n]

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        if not prompts:
            return []
        model = self.model  # resolved once here, not raced by the workers
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda ip: self._complete(model, ip[0], ip[1], params), enumerate(prompts)))
