"""The local engine's shortcuts (one prefill for n samples, one prompt encoding for all labels) must
give what the plain computation gives, on a Llama and on a Gemma 3 with sliding-window layers."""

import pytest
import torch
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

from selfguide.engines import SamplingParams, TransformersEngine

PROMPTS = ["Review: a fine film. Sentiment:", "Review: dull. Sentiment:", "Review: the plot drags on and on, but the cast is great. Sentiment:"]


@pytest.fixture(scope="module")
def gemma_dir(tiny_model_dir, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-gemma3")
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(params=["llama", "gemma3"])
def engine(request, tiny_model_dir, gemma_dir):
    path = tiny_model_dir if request.param == "llama" else gemma_dir
    return TransformersEngine.from_pretrained(str(path), dtype="float32", batch_size=4)


def reference_score(engine, prompt: str, continuation: str) -> float:
    """Each pair alone, unpadded, with logits at every position."""
    tok = engine.tokenizer
    p = tok(prompt)["input_ids"]
    c = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([p + c], device=engine.model.device)).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return sum(logprobs[len(p) - 1 + t, tok_id].item() for t, tok_id in enumerate(c))


def test_score_matches_scoring_each_pair_alone(engine):
    conts = [" positive", " negative", " very mixed feelings"]
    prompts = [p for p in PROMPTS for _ in conts]
    got = engine.score(prompts, conts * len(PROMPTS))
    want = [reference_score(engine, p, c) for p, c in zip(prompts, conts * len(PROMPTS))]
    assert got == pytest.approx(want, abs=1e-3)
    assert len(set(round(x, 3) for x in got)) > len(conts), "scores must depend on the prompt"


def test_score_splits_batches_to_keep_continuation_logits_within_the_budget(engine):
    conts = [" positive", " negative", " the plot drags on and on, but the cast is great"]
    prompts = [p for p in PROMPTS for _ in conts]
    want = engine.score(prompts, conts * len(PROMPTS))
    vocab = engine.model.get_output_embeddings().weight.shape[0]
    widths = [len(engine.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
    engine.logits_budget = len(conts) * max(widths) * vocab  # one prompt and its continuations per forward
    seen = []
    hook = engine.model.register_forward_hook(lambda m, args, kwargs, out: seen.append(out.logits.shape), with_kwargs=True)
    try:
        got = engine.score(prompts, conts * len(PROMPTS))
    finally:
        hook.remove()
    assert got == pytest.approx(want, abs=1e-4)
    continuation_logits = [rows * width * v for rows, width, v in seen if width > 1]
    assert len(continuation_logits) == len(PROMPTS), "one scoring forward per prompt under this budget"
    assert max(continuation_logits) <= engine.logits_budget


def test_score_of_an_empty_continuation_is_zero(engine):
    assert engine.score([PROMPTS[0], PROMPTS[0]], ["", " positive"])[0] == 0.0


def plain_greedy(engine, prompt: str) -> str:
    """The prompt alone, unpadded, through the model's own generate()."""
    tok = engine.tokenizer
    enc = tok(prompt, return_tensors="pt")
    out = engine.model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_n_samples_share_one_prefill_on_a_cpu_without_changing_greedy_output(engine):
    one = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=8))
    shapes = []
    hook = engine.model.register_forward_hook(lambda m, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        three = engine.generate(PROMPTS, SamplingParams(temperature=0.0, n=3, max_new_tokens=8))
    finally:
        hook.remove()
    assert len(set(map(tuple, one))) == len(PROMPTS), "the outputs must depend on the prompt"
    assert [o * 3 for o in one] == three
    width = engine.tokenizer(PROMPTS, padding=True, return_tensors="pt")["input_ids"].shape[1]
    if engine.device.type == "cpu":
        # One forward reads the prompts (all but their last token), once each; every later one is a token wide on all 9 rows.
        assert shapes[0] == (len(PROMPTS), width - 1)
        assert set(shapes[1:]) == {(3 * len(PROMPTS), 1)}
    else:  # on a GPU each sample reads its prompt, as generate does: sharing was slower there (cuda_7b_shape.md)
        assert shapes[0] == (3 * len(PROMPTS), width)


def test_greedy_output_matches_plain_generate_on_each_prompt_alone(engine):
    got = engine.generate(PROMPTS, SamplingParams(temperature=0.0, n=2, max_new_tokens=8))
    assert got == [[plain_greedy(engine, p)] * 2 for p in PROMPTS]


def test_a_batch_of_one_token_prompts_after_a_wider_batch_starts_afresh(engine):
    # The one-token prompts have nothing to prefill; their batch, after one that had, once reused its cache.
    prompts = ["A dull", "I loved", " positive", " negative"]
    assert [len(engine.tokenizer(p)["input_ids"]) > 1 for p in prompts] == [True, True, False, False]
    engine.batch_size = 2
    assert [idx for _, idx in engine._batches(prompts)] == [[0, 1], [2, 3]]  # batched by length in characters
    got = engine.generate(prompts, SamplingParams(temperature=0.0, n=2, max_new_tokens=8))
    assert got == [[plain_greedy(engine, p)] * 2 for p in prompts]
