"""The in-process llama.cpp engine on the embedded GGUF: seeded samples that do not depend on batching, one
prefill for n samples, stop strings, greedy decoding, and label scores that rank as TransformersEngine's do."""

import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp", reason="needs the 'llama' extra: pip install 'selfguide[llama]'")

from selfguide import Task
from selfguide.engines import SamplingParams
from selfguide.engines.llamacpp_engine import LlamaCppEngine
from selfguide.errors import ConfigError, InputNotFoundError, SelfGuideError
from selfguide.prompts import format_completion, format_prompt

PROMPTS = ["Review: a fine film. Sentiment:", "Review: dull. Sentiment:", "The capital of France is"]
SAMPLE = SamplingParams(temperature=1.0, n=2, max_new_tokens=6, seed=3)
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def engine():
    engine = LlamaCppEngine.from_pretrained(n_ctx=2048)
    yield engine
    engine.close()


@pytest.mark.parametrize("model", ["google/gemma-3-270m", "some/folder"])
def test_a_model_that_is_no_gguf_names_the_transformers_engine(model):
    with pytest.raises(ConfigError, match=r"model: .*\.gguf.*engine='transformers'"):
        LlamaCppEngine.from_pretrained(model)


def test_a_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(InputNotFoundError, match="model: GGUF file .*missing.gguf does not exist"):
        LlamaCppEngine.from_pretrained(str(tmp_path / "missing.gguf"))


def test_without_llama_cpp_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what `import llama_cpp` meets where it is not installed
    with pytest.raises(SelfGuideError, match=r"pip install 'selfguide\[llama\]'"):
        LlamaCppEngine.from_pretrained()


@pytest.mark.slow
def test_same_seed_same_samples_however_the_prompts_are_batched(engine):
    first = engine.generate(PROMPTS, SAMPLE)
    assert [len(s) for s in first] == [2, 2, 2]
    assert all(len(set(s)) > 1 for s in first), "the n samples of a prompt must differ"
    assert engine.generate(PROMPTS[::-1], SAMPLE) == first[::-1]
    assert engine.generate(PROMPTS[1:2], SAMPLE) == first[1:2]
    # A prompt given twice gets fresh samples the second time, as n=4 would.
    twice = engine.generate([PROMPTS[0], PROMPTS[0]], SAMPLE)
    assert twice[0] == first[0] and twice[1] != twice[0]
    assert engine.generate(PROMPTS[:1], SamplingParams(**{**vars(SAMPLE), "seed": 4})) != first[:1]


@pytest.mark.slow
def test_n_samples_share_one_prefill(engine, monkeypatch):
    evaluated = []
    real_eval = engine.llm.eval
    monkeypatch.setattr(engine.llm, "eval", lambda tokens: (evaluated.append(len(tokens)), real_eval(tokens))[1])
    out = engine.generate(PROMPTS, SAMPLE)
    assert [len(s) for s in out] == [2, 2, 2]
    # Each prompt but its last token is evaluated once; every other evaluation (the last prompt token once per
    # sample, then each sampled token) is one token wide.
    assert [n for n in evaluated if n > 1] == [engine.count_tokens([p]) for p in PROMPTS]  # BOS added, last token left
    assert evaluated.count(1) >= len(PROMPTS) * SAMPLE.n


@pytest.mark.slow
def test_greedy_is_the_same_for_every_sample_and_matches_a_plain_completion(engine):
    greedy = SamplingParams(temperature=0.0, n=2, max_new_tokens=4, seed=None)
    got = engine.generate(PROMPTS, greedy)
    assert len({s[0] for s in got}) == len(PROMPTS), "the outputs must depend on the prompt"
    assert engine.generate(PROMPTS[::-1], SamplingParams(temperature=0.0, max_new_tokens=4)) == [s[:1] for s in got[::-1]]
    for prompt, samples in zip(PROMPTS, got):
        engine.llm.reset()
        plain = engine.llm.create_completion(prompt, max_tokens=4, temperature=0.0, repeat_penalty=1.0)
        assert samples == [plain["choices"][0]["text"]] * 2


@pytest.mark.slow
def test_stop_strings_end_the_same_samples_early(engine, monkeypatch):
    params = SamplingParams(temperature=1.0, n=2, max_new_tokens=16, seed=0)
    evaluated = []
    real_eval = engine.llm.eval
    monkeypatch.setattr(engine.llm, "eval", lambda tokens: (evaluated.append(len(tokens)), real_eval(tokens))[1])
    full = engine.generate(PROMPTS, params)
    full_tokens, evaluated[:] = sum(evaluated), []
    cut = engine.generate(PROMPTS, SamplingParams(**{**vars(params), "stop": ("e", "\n")}))
    assert sum("e" in s for samples in full for s in samples) >= 3, "samples must reach the stop string"
    for full_samples, cut_samples in zip(full, cut):
        for f, c in zip(full_samples, cut_samples):
            ends = [i for i in (f.find("e"), f.find("\n")) if i != -1]
            assert c == f[: min(ends)] if ends else c == f
    assert sum(evaluated) < full_tokens, "generation stops at a stop string, not just its text"


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_a_clear_error(engine):
    with pytest.raises(ConfigError, match="n_ctx: .* more than the context of 2048"):
        engine.generate(["word " * 2100], SamplingParams(max_new_tokens=4))
    with pytest.raises(ConfigError, match="n_ctx: "):
        engine.score(["word " * 2100], [" positive"])


@pytest.mark.slow
def test_scores_do_not_depend_on_the_other_pairs_in_the_call(engine):
    conts = [" positive", "", " a long and winding answer"]
    pairs = [(p, c) for p in PROMPTS[:2] for c in conts]
    together = engine.score([p for p, _ in pairs], [c for _, c in pairs])
    alone = [engine.score([p], [c])[0] for p, c in reversed(pairs)][::-1]
    assert together == pytest.approx(alone, abs=1e-4)
    assert together[1] == 0.0, "an empty continuation has log-probability 0"
    assert len({round(s, 3) for s in together}) > len(conts), "scores must depend on the prompt"


@pytest.mark.slow
def test_label_scores_rank_as_the_transformers_engine_ranks_them(engine, sentiment_task_dict):
    from selfguide.engines import TransformersEngine

    tasks = [Task.load(sentiment_task_dict), Task.load("selfguide/tasks/demo_support_tickets.yaml")]
    groups = [
        (format_prompt(task, row.input, task.examples[k % 2 :] + task.examples[: k % 2]), [format_completion(l) for l in task.labels])
        for task in tasks
        for k, row in enumerate(task.gold[:6])
    ]
    prompts = [p for p, labels in groups for _ in labels]
    conts = [c for _, labels in groups for c in labels]
    reference = TransformersEngine.from_pretrained(None)  # the same GGUF, dequantized to float32
    want = reference.score(prompts, conts)
    got = engine.score(prompts, conts)
    assert got == pytest.approx(want, abs=0.6), "Q4_K_M log-probabilities stay close to the float32 ones"
    assert sum(abs(g - w) for g, w in zip(got, want)) / len(got) < 0.2
    argmax, start = [], 0
    for _, labels in groups:
        g, w = got[start : start + len(labels)], want[start : start + len(labels)]
        argmax.append(g.index(max(g)) == w.index(max(w)))
        start += len(labels)
    assert sum(argmax) >= 0.8 * len(groups), f"same best label on {sum(argmax)} of {len(groups)} prompts"
    chat = "<start_of_turn>user\nIs this positive?<end_of_turn>\n<start_of_turn>model\n"
    assert engine.count_tokens([chat, conts[0]]) == reference.count_tokens([chat, conts[0]])


@pytest.mark.slow
def test_render_chat_applies_the_gguf_template(engine, tmp_path):
    assert not engine.has_chat_template, "the embedded base GGUF carries no chat template"
    with pytest.raises(ConfigError, match="prompt_format: 'chat' needs a chat template"):
        engine.render_chat([{"role": "user", "content": "Hi"}])
    templated = tmp_path / "with-template.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(engine.llm.model_path), str(templated), "--chat-template", TEMPLATE],
        check=True, capture_output=True,
    )
    chat = LlamaCppEngine.from_pretrained(str(templated), n_ctx=512)
    try:
        assert chat.has_chat_template
        text = chat.render_chat([{"role": "user", "content": "Hi "}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Rate it"}])
        assert text == (
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
            "<start_of_turn>user\nRate it<end_of_turn>\n<start_of_turn>model\n"
        ), "rendered with a generation prompt and without the leading BOS the engine adds when it tokenizes"
        assert chat.count_tokens(["<start_of_turn>user\n"]) == 3, "control tokens are parsed as one token each"
    finally:
        chat.close()
