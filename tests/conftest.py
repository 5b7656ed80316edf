import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

_CORPUS = [
    "Classify the sentiment of a movie review as positive or negative.",
    "Input: I loved every minute of it.\nOutput: positive",
    "Input: A dull, lifeless film.\nOutput: negative",
    "Rewrite the sentence in the passive voice.",
    "Input: The cat chased the mouse.\nOutput: The mouse was chased by the cat.",
    "Sentence 1: A man plays guitar. Sentence 2: Someone makes music. yes no maybe",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-",
]


def letter_labelled(spec: dict) -> dict:
    """The sentiment spec with its labels written as letters and the words given as their aliases,
    as NI's SNLI task writes E, C and N where datasets say entailment, contradiction and neutral."""
    letter = {"positive": "P", "negative": "N"}
    return dict(
        spec,
        labels=["P", "N"],
        label_aliases={"P": "positive", "N": ["negative", "bad"]},
        examples=[dict(e, output=letter[e["output"]]) for e in spec["examples"]],
        test=[dict(e, output=letter[e["output"]]) for e in spec["test"]],
    )


def build_tiny_model(path: Path, vocab_size: int = 320) -> Path:
    """A randomly initialised 2-layer Llama with a byte-level BPE tokenizer trained here: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    return save_random_llama(path, tokenizer)


def save_random_llama(path: Path, tokenizer, hidden_size: int = 32, intermediate_size: int = 64) -> Path:
    """A 2-layer Llama with random (seeded) weights around `tokenizer`, saved with it at `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,  # tied, the random model repeats the last prompt token: every answer alike
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def sentiment_task_dict() -> dict:
    return json.loads((FIXTURES / "sentiment_task.json").read_text())


@pytest.fixture
def rewrite_task_dict() -> dict:
    return json.loads((FIXTURES / "rewrite_task.json").read_text())


# A template whose markers cannot come from a document prompt: a row or prompt holding them was rendered with it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>[{{ m['role'] }}]\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>[assistant]\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with CHAT_TEMPLATE: a chat student."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder
