"""Load the student for finetuning from TRL's `ModelConfig`: QLoRA (4-bit nf4 base), LoRA or every weight.

TRL's `get_quantization_config` gives the 4-bit setting, with its matmuls in `resolve_dtype(dtype)` ("auto":
bf16 on a GPU or a CPU with native bf16, float32 on other CPUs, where bf16 was 22x slower); peft's
`prepare_model_for_kbit_training` readies the 4-bit base.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

from .errors import ConfigError
from .patches import keep_4bit_trainable
from .quantization import require_bitsandbytes
from .student import offline_load_kwargs, resolve_dtype


def finetuning_method(model_args) -> str:
    """What the card calls the run: "qlora", "lora" or "full"."""
    if model_args.load_in_4bit:
        return "qlora"
    return "lora" if model_args.use_peft else "full"


def check_model_args(model_args) -> None:
    """The combinations TRL's flags allow that this recipe cannot train, refused before any model loads."""
    if model_args.load_in_8bit:
        raise ConfigError("load_in_8bit: 8-bit bases are not supported here. Fix: use --load_in_4bit (QLoRA) or --load_in_4bit false")
    if model_args.load_in_4bit and not model_args.use_peft:
        raise ConfigError(
            "load_in_4bit: a 4-bit base cannot be trained without an adapter. Fix: add --use_peft for QLoRA, or for "
            "full finetuning pass both --use_peft false and --load_in_4bit false"
        )
    if model_args.load_in_4bit:
        require_bitsandbytes()
    resolve_dtype(model_args.dtype)  # a ConfigError naming the field for an unknown dtype


def quantization_config(model_args):
    """TRL's 4-bit config (None without --load_in_4bit), computing in `resolve_dtype(dtype)`: TRL passes the
    dtype string itself, and "auto" is no dtype to bitsandbytes."""
    from trl import get_quantization_config

    resolved = copy.copy(model_args)
    resolved.dtype = str(resolve_dtype(model_args.dtype)).removeprefix("torch.")
    return get_quantization_config(resolved)


def weights_dtype(model_args, device: torch.device) -> torch.dtype:
    """The dtype of the weights that are not 4-bit. Trained weights stay float32 under "auto" (mixed precision
    is the trainer's `bf16`); a frozen LoRA base on an accelerator takes half precision, which costs the updates nothing."""
    if model_args.dtype != "auto":
        return resolve_dtype(model_args.dtype)
    if finetuning_method(model_args) == "lora" and device.type != "cpu":
        return resolve_dtype("auto")
    return torch.float32


def load_model(model_args, path: str, training_args):
    """The model and tokenizer from `path` (the resolved student), and the quantization config (or None).
    `training_args.model_init_kwargs` are used here and cleared: SFTTrainer would warn that it ignores them."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quant = quantization_config(model_args)
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "trust_remote_code": training_args.trust_remote_code,
        "dtype": weights_dtype(model_args, training_args.device),
        **offline_load_kwargs(),
        **(training_args.model_init_kwargs or {}),
    }
    training_args.model_init_kwargs = None
    if quant is not None:
        # Each process holds its own quantised copy on its own device.
        kwargs.update(quantization_config=quant, device_map={"": training_args.device})
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quant is not None:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
        keep_4bit_trainable(model)
    return model, tokenizer, quant


def adapter_summary(model_args) -> Optional[dict]:
    """The card's line on the LoRA adapter; None for full finetuning."""
    if not model_args.use_peft:
        return None
    targets = model_args.lora_target_modules
    return {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout,
            "target_modules": targets if isinstance(targets, str) else ", ".join(targets or ["peft's default for the model"])}
