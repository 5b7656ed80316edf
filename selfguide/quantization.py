"""4-bit loading for QLoRA: the bitsandbytes check and the one quantisation setting the project uses."""

from __future__ import annotations

from typing import Optional

import torch
from .errors import SelfGuideError
from .patches import keep_4bit_trainable, trainable_4bit_layout  # noqa: F401  (the recipe and callbacks import them from here)


class MissingBitsandbytesError(SelfGuideError, ImportError):
    pass


def require_bitsandbytes() -> None:
    """Fail before any model is loaded when 4-bit is asked for and bitsandbytes cannot be imported."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # a broken install raises more than ImportError (missing native library, ...)
        raise MissingBitsandbytesError(
            f"4-bit QLoRA needs bitsandbytes, which cannot be imported ({type(e).__name__}: {e}). "
            "Fix: `pip install bitsandbytes`, or train without quantisation: the recipe's `--load_in_4bit false`"
        ) from None


def nf4_config(quant_type: str = "nf4", double_quant: bool = True, compute_dtype: Optional[torch.dtype] = None):
    """QLoRA's setting: nf4 weights and quantised quantisation constants.

    The matmuls run in `compute_dtype`; None picks bf16 (fp16 without bf16) on a GPU and float32 on
    the CPU. On a CPU without native bf16 (AVX2 only) a QLoRA step of the embedded student took 22x
    longer in bf16 (benchmarks/results/qlora_compute_dtype.md): torch has no fast bf16 matmul there.
    """
    from transformers import BitsAndBytesConfig

    from .student import resolve_dtype

    require_bitsandbytes()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype or resolve_dtype("auto"),
    )


def quantization_summary(config) -> dict:
    """What a model card says about a BitsAndBytesConfig."""
    return {
        "bits": 4,
        "quant_type": config.bnb_4bit_quant_type,
        "double_quant": config.bnb_4bit_use_double_quant,
        "compute_dtype": str(config.bnb_4bit_compute_dtype).replace("torch.", ""),
        "library": "bitsandbytes",
    }
