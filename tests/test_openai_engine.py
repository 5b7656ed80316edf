"""OpenAIEngine against a scripted server (protocol, retries, limits) and a real llama-cpp-python server."""

import threading
import time

import pytest

from selfguide.engines import OpenAIEngine, SamplingParams, ServerError
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


def test_server_errors_and_rate_limits_are_retried():
    answers = iter([(503, "busy"), (429, "slow down", {"Retry-After": "0"}), "fine"])
    with ScriptedServer(lambda prompt, body: next(answers)) as server:
        out = OpenAIEngine(server.base_url, model="m", backoff=0.01).generate(["p"], SamplingParams())
    assert out == [["fine"]] and len(server.requests) == 3


def test_client_errors_fail_at_once_with_the_server_message():
    with ScriptedServer(lambda prompt, body: (400, {"error": "context length exceeded"})) as server:
        with pytest.raises(ServerError, match="answered 400.*context length exceeded"):
            OpenAIEngine(server.base_url, model="m", backoff=0.01).generate(["p"], SamplingParams())
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
            OpenAIEngine(server.base_url, model="m", backoff=0.01).generate(["p"], SamplingParams())


def test_a_server_that_is_down_is_named_in_the_error():
    base_url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServerError, match=f"cannot reach the server at {base_url}.*after 3 attempts"):
        OpenAIEngine(base_url, max_retries=2, backoff=0.01).generate(["p"], SamplingParams())
    assert time.monotonic() - started < 10


def test_slow_answers_time_out_then_fail_clearly():
    def slow(prompt, body):
        time.sleep(1.0)
        return "late"

    with ScriptedServer(slow) as server:
        engine = OpenAIEngine(server.base_url, model="m", timeout=0.2, max_retries=1, backoff=0.01)
        with pytest.raises(ServerError, match="ReadTimeout"):
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
