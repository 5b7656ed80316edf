"""OpenAIEngine against a scripted server (protocol, retries, limits, scoring) and a real llama-cpp-python server."""

import logging
import re
import threading
import time
import traceback

import openai
import pytest
from transformers import AutoTokenizer

from selfguide.engines import OpenAIEngine, SamplingParams, ServerError, TransformersEngine
from selfguide.errors import ConfigError
from selfguide.student import _embedded_gguf
from tests.rebase_support import ScriptedServer, free_port, real_llama_server


def test_completions_request_carries_the_sampling_knobs_and_answers_in_order():
    with ScriptedServer(lambda prompt, body: f" after {prompt}\nInput: more") as server:
        engine = OpenAIEngine(server.base_url + "/v1/", concurrency=3)
        params = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=12, seed=5, stop=("#", "@", "%", "^", "\n"))
        out = engine.generate([f"p{i}" for i in range(6)], params)
    assert out == [[f" after p{i}"] for i in range(6)]  # cut at the first stop string, in prompt order
    body = next(b for b in server.requests if b["prompt"] == "p0")
    assert body["model"] == "scripted-teacher"  # the first model the server lists
    assert (body["temperature"], body["top_k"], body["top_p"], body["max_tokens"]) == (0.7, 40, 0.9, 12)
    assert body["stop"] == ["#", "@", "%", "^"]  # the API's limit of four; the fifth ("\\n") is cut locally
    assert len({b["seed"] for b in server.requests}) == 6


def test_greedy_requests_leave_out_optional_knobs():
    with ScriptedServer(lambda prompt, body: "x") as server:
        OpenAIEngine(server.base_url, model="named").generate(["p"], SamplingParams())
    (body,) = server.requests
    assert body["model"] == "named" and "top_k" not in body and "seed" not in body and "stop" not in body


def test_servers_that_ignore_n_are_asked_again_with_other_seeds():
    with ScriptedServer(lambda prompt, body: f"seed {body['seed']}", choices_per_request=1) as server:
        (samples,) = OpenAIEngine(server.base_url).generate(["p"], SamplingParams(temperature=1.0, n=3, seed=1))
    assert len(server.requests) == 3 and len(set(samples)) == 3


def test_at_most_four_samples_are_asked_for_per_request():
    def respond(prompt, body):  # llama-server's limit
        return (400, {"error": {"message": "Field 'n': Value must be between 1 <= value <= 4"}}) if body["n"] > 4 else f"s{body['seed']}"

    with ScriptedServer(respond, choices_per_request=4) as server:
        (samples,) = OpenAIEngine(server.base_url, model="m").generate(["p"], SamplingParams(temperature=1.0, n=6, seed=1))
    assert len(samples) == 6 and [b["n"] for b in server.requests] == [4, 2]


def test_server_errors_and_rate_limits_are_retried():
    answers = iter([(503, "busy"), (429, "slow down", {"Retry-After": "0"}), "fine"])
    with ScriptedServer(lambda prompt, body: next(answers)) as server:
        out = OpenAIEngine(server.base_url, model="m").generate(["p"], SamplingParams())
    assert out == [["fine"]] and len(server.requests) == 3


def test_client_errors_fail_at_once_with_the_server_message():
    with ScriptedServer(lambda prompt, body: (400, {"error": "context length exceeded"})) as server:
        with pytest.raises(ServerError, match="answered 400.*context length exceeded"):
            OpenAIEngine(server.base_url, model="m").generate(["p"], SamplingParams())
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "reply, shown",
    [
        ((200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}]}), "message"),  # chat format
        ((200, {"error": {"message": "model overloaded"}}), "model overloaded"),
        ((200, ["not", "an", "object"]), "not an object"),
    ],
    ids=["chat-format", "error-with-200", "json-list"],
)
def test_answers_that_are_not_completions_fail_with_what_the_server_said(reply, shown):
    with ScriptedServer(lambda prompt, body: reply) as server:
        with pytest.raises(ServerError, match=f"{shown}.*Fix: point base_url at"):
            OpenAIEngine(server.base_url, model="m").generate(["p"], SamplingParams())


def test_a_server_that_is_down_is_named_in_the_error():
    base_url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServerError, match=f"cannot reach the server at {base_url}.*after 3 attempts"):
        OpenAIEngine(base_url, max_retries=2).generate(["p"], SamplingParams())
    assert time.monotonic() - started < 10


def test_slow_answers_time_out_then_fail_clearly():
    def slow(prompt, body):
        time.sleep(1.0)
        return "late"

    with ScriptedServer(slow) as server:
        engine = OpenAIEngine(server.base_url, model="m", timeout=0.2, max_retries=1)
        with pytest.raises(ServerError, match="timed out after 0.2 s, 2 attempts.*Fix: raise timeout="):
            engine.generate(["p"], SamplingParams())
    assert len(server.requests) == 2


def test_concurrency_caps_requests_in_flight():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def tracked(prompt, body):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.15)
        with lock:
            in_flight[0] -= 1
        return prompt

    with ScriptedServer(tracked) as server:
        out = OpenAIEngine(server.base_url, model="m", concurrency=2).generate([str(i) for i in range(6)], SamplingParams())
    assert out == [[str(i)] for i in range(6)]
    assert peak[0] == 2


def test_retry_after_is_honoured():
    seen = []

    def limited(prompt, body):
        seen.append(time.monotonic())
        return (429, "slow down", {"Retry-After": "2"}) if len(seen) == 1 else "fine"

    with ScriptedServer(limited) as server:
        assert OpenAIEngine(server.base_url, model="m").generate(["p"], SamplingParams()) == [["fine"]]
    # Without the header the first retry waits at most 0.5 s.
    assert seen[1] - seen[0] >= 1.9


def test_the_api_key_is_sent_but_never_shown_or_logged(caplog):
    key = "sk-test-0123456789abcdef"
    # A server that repeats the key it was given in its error (as some proxies do).
    refusal = {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error"}}
    with ScriptedServer(lambda prompt, body: (401, refusal)) as server:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(ServerError, match="answered 401: .*Incorrect API key provided: <api key>") as failed:
                OpenAIEngine(server.base_url, model="m", api_key=key).generate(["p"], SamplingParams())
    assert server.headers[0]["authorization"] == f"Bearer {key}"
    assert caplog.records  # the client did log the request
    traceback_text = "".join(traceback.format_exception(failed.value))  # with the exceptions it was raised from
    assert key not in traceback_text and key not in caplog.text


# -- scoring ------------------------------------------------------------------------------------


def _pieces(text: str) -> list[str]:
    """The scripted server's tokenizer: each word with the space before it."""
    return re.findall(r"\s*\S+|\s+", text)


def _logprob(piece: str) -> float:
    return -0.25 * len(piece.strip()) - 0.5


def echo_server(bos: str = "", usage: bool = True, generated: str = " next"):
    """A scripted server that answers echo with logprobs, each word a token of log-probability `_logprob`.

    With `bos`, as vLLM: the BOS token comes first and its text is counted into every text_offset, though
    not into the text. Without `usage`, as a server that leaves it out; `generated` is the one token generated."""

    def respond(prompt, body):
        if not (body.get("echo") and body.get("logprobs") is not None):
            return "sampled"
        tokens = ([bos] if bos else []) + _pieces(prompt) + [generated]
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        logprobs = [None] + [_logprob(t) for t in tokens[1:]]
        answer = {"object": "text_completion", "choices": [{"index": 0, "text": prompt + generated,
                  "logprobs": {"tokens": tokens, "text_offset": offsets, "token_logprobs": logprobs, "top_logprobs": None}}]}
        if usage:
            answer["usage"] = {"prompt_tokens": len(tokens) - 1, "completion_tokens": 1, "total_tokens": len(tokens)}
        return 200, answer

    return ScriptedServer(respond)


@pytest.mark.parametrize("server_kind", [dict(bos="<bos>"), dict(usage=False)], ids=["vllm-style-offsets", "no-usage"])
def test_score_sums_the_continuation_tokens_of_the_echoed_text(server_kind):
    prompts = ["Review: fine.\nSentiment:", "Review: fine.\nSentiment:", "Q: sky?\nA:", "Review: fine.\nSentiment:", "Q: sky?\nA:"]
    continuations = [" positive", " not so good", " blue", " positive", ""]
    with echo_server(**server_kind) as server:
        scores = OpenAIEngine(server.base_url, model="m").score(prompts, continuations)
    expected = [sum(_logprob(t) for t in _pieces(c)) if c else 0.0 for c in continuations]
    assert scores == pytest.approx(expected)
    # Each distinct pair asked once, none for the empty continuation; one generated token, greedy.
    assert sorted(b["prompt"] for b in server.requests) == sorted({p + c for p, c in zip(prompts, continuations) if c})
    assert all((b["echo"], b["logprobs"], b["max_tokens"], b["temperature"]) == (True, 1, 1, 0.0) for b in server.requests)


def test_a_token_across_the_prompt_boundary_counts_for_the_continuation():
    # "Sentiment: pos" + "itive": the server's token " positive" starts in the prompt and ends in the continuation.
    with echo_server(bos="<bos>") as server:
        (score,) = OpenAIEngine(server.base_url, model="m").score(["Sentiment: pos"], ["itive"])
    assert score == pytest.approx(_logprob(" positive"))


@pytest.mark.parametrize(
    "reply, shown",
    [
        ((200, {"choices": [{"index": 0, "text": "The sky is blue.", "logprobs": None}]}), '"logprobs": null'),
        ((200, {"choices": [{"index": 0, "text": "The sky is blue.", "logprobs": {"tokens": ["The"], "text_offset": [0], "token_logprobs": None}}]}),
         '"token_logprobs": null'),
        ((400, {"error": "echo is not supported"}), "answered 400: .*echo is not supported"),
    ],
    ids=["no-logprobs", "null-token-logprobs", "echo-refused"],
)
def test_a_server_that_cannot_score_fails_check_scoring_naming_vote(reply, shown):
    with ScriptedServer(lambda prompt, body: reply) as server:
        with pytest.raises(ServerError, match=f"(?s){shown}.*cannot score continuations.*label_strategy=\"vote\""):
            OpenAIEngine(server.base_url, model="m").check_scoring()
    (request,) = server.requests  # one tiny echo request, no sampling
    assert request["echo"] is True and request["max_tokens"] == 1


def test_score_needs_one_continuation_per_prompt():
    with pytest.raises(ConfigError, match="continuations: 1 given for 2 prompts"):
        OpenAIEngine("http://127.0.0.1:9", model="m").score(["a", "b"], [" c"])


# -- the served model's tokenizer ---------------------------------------------------------------


def test_a_tokenizer_gives_the_chat_template_and_token_counts(tiny_model_dir, tiny_chat_dir):
    plain = OpenAIEngine("http://127.0.0.1:9", model="m")
    assert not plain.has_chat_template
    with pytest.raises(ConfigError, match="prompt_format: 'chat' needs a chat template"):
        plain.render_chat([{"role": "user", "content": "hi"}])

    no_template = OpenAIEngine("http://127.0.0.1:9", model="m", tokenizer=str(tiny_model_dir))
    assert not no_template.has_chat_template
    chat = OpenAIEngine("http://127.0.0.1:9", model="m", tokenizer=str(tiny_chat_dir))
    assert chat.has_chat_template
    assert chat.render_chat([{"role": "user", "content": "hi"}]) == "[user]\nhi</s>\n<s>[assistant]\n"  # BOS text cut
    text = "Classify the sentiment of a movie review"
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(text, add_special_tokens=False)["input_ids"]
    assert chat.count_tokens([text, text]) == 2 * len(ids) != plain.count_tokens([text, text])


# -- a real llama-cpp-python server with the embedded student ----------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    with real_llama_server(tmp_path_factory.mktemp("llama-server")) as base_url:
        yield base_url


@pytest.mark.slow
def test_real_server_greedy_is_repeatable_and_honours_stop(llama_server):
    engine = OpenAIEngine(llama_server, timeout=60)
    params = SamplingParams(max_new_tokens=12, stop=("\n",))
    prompts = ["Input: The cat chased the mouse.\nOutput: The mouse was chased by the cat.\n\nInput: Maria wrote the report.\nOutput:",
               "The capital of France is"]
    first = engine.generate(prompts, params)
    assert first == engine.generate(prompts, params)
    assert all(len(o) == 1 and o[0].strip() and "\n" not in o[0] for o in first)


@pytest.mark.slow
def test_real_server_samples_n_completions_though_it_ignores_n(llama_server):
    # llama.cpp answers one choice per request; the engine asks again with another seed.
    engine = OpenAIEngine(llama_server, timeout=60)
    params = SamplingParams(temperature=1.0, top_k=40, n=2, max_new_tokens=8, seed=3)
    (samples,) = engine.generate(["Once upon a time"], params)
    assert len(samples) == 2 and all(s.strip() for s in samples) and samples[0] != samples[1]


# Label strings after a prompt, ranked by the server and by the in-process engine on the same GGUF. Few and short:
# llama-cpp-python's server spends about a second a token on echo with logprobs here (it sorts the 262k-token
# vocabulary in Python for every token's top logprobs).
RANKED = [
    ("Review: I loved every minute of it.\nSentiment: positive\n\nReview: A dull, boring mess.\nSentiment: negative\n\n"
     "Review: The acting was wonderful.\nSentiment:", [" positive", " negative"]),
    ("The capital of France is", [" Paris", " London", " Berlin"]),
    ("Question: Is fire hot?\nAnswer:", [" Yes", " No"]),
    ("The opposite of hot is", [" cold", " warm"]),
    ("One, two, three,", [" four", " five, six"]),
]


def _best_labels(scores: list[float]) -> list[int]:
    """For each RANKED prompt, the index of its best-scored label."""
    it = iter(scores)
    best = []
    for _, labels in RANKED:
        mine = [next(it) for _ in labels]
        best.append(mine.index(max(mine)))
    return best


@pytest.mark.slow
def test_real_server_scores_labels_as_the_in_process_engine_does(llama_server):
    prompts = [p for p, labels in RANKED for _ in labels]
    continuations = [c for _, labels in RANKED for c in labels]
    engine = OpenAIEngine(llama_server, timeout=600, concurrency=1)
    engine.check_scoring()
    served = engine.score(prompts, continuations)
    local = TransformersEngine.from_pretrained(None).score(prompts, continuations)  # the same GGUF, in float32
    # Measured: at most 0.20 nats apart (llama.cpp computes with the Q4_K_M weights, transformers dequantized).
    assert max(abs(a - b) for a, b in zip(served, local)) < 0.35
    served_best, local_best = _best_labels(served), _best_labels(local)
    assert sum(a == b for a, b in zip(served_best, local_best)) >= len(RANKED) - 1
    assert served_best[:2] == [0, 0]  # " positive" for the wonderful acting, " Paris" for France


@pytest.mark.slow
def test_a_gguf_tokenizer_counts_the_tokens_the_server_reads(llama_server):
    text = "Review: great film.\nSentiment: positive"
    engine = OpenAIEngine(llama_server, tokenizer=str(_embedded_gguf()))
    assert not engine.has_chat_template  # the embedded student is a base model
    usage = openai.OpenAI(base_url=llama_server + "/v1", api_key="none").completions.create(
        model=engine.model, prompt=text, max_tokens=1).usage
    assert engine.count_tokens([text]) == usage.prompt_tokens - 1  # the server counts its BOS too


@pytest.mark.slow
def test_real_server_without_all_logits_fails_check_scoring_naming_vote(tmp_path):
    with real_llama_server(tmp_path, logits_all=False) as base_url:
        engine = OpenAIEngine(base_url, max_retries=0)
        with pytest.raises(ServerError, match='(?s)answered 500: .*logits_all=False.*label_strategy="vote"'):
            engine.check_scoring()
