"""Every touch of another library's private API, each behind a version guard.

Each function here reads or changes something a library does not promise to keep. Each names the
newest release line it was checked on (`CHECKED_BELOW`); on a newer one it raises
`UncheckedVersionError`, saying which library moved and how to get back to a checked version, rather
than guess at internals that may have changed. Importing this module also installs `quiet_bitsandbytes`,
a plain logging filter (no private API).
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from importlib import metadata
from typing import Callable, Optional

from .errors import SelfGuideError

# The release lines each patch below was checked on: the first version that was not.
CHECKED_BELOW = {"datasets": "6", "transformers": "6", "bitsandbytes": "0.51"}


class UncheckedVersionError(SelfGuideError, RuntimeError):
    """An installed library is newer than the one a patch of its private API was checked on."""


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution (`llama-cpp-python`, `torch`, ...), or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def installed_versions(distributions) -> dict[str, str]:
    """The installed version of each distribution that is installed."""
    return {d: v for d in distributions if (v := installed_version(d))}


def require_checked(distribution: str, what: str) -> None:
    """Raise before `what` touches `distribution`'s internals when the installed version is newer than checked."""
    from packaging.version import Version

    below = CHECKED_BELOW[distribution]
    version = installed_version(distribution)
    if version is not None and Version(version) >= Version(below):
        raise UncheckedVersionError(
            f"{distribution}: version {version} is installed, but {what} relies on its private API and was checked "
            f"only below {below}. Fix: pip install '{distribution}<{below}', or a selfguide release checked on {distribution} {version}"
        )


# -- bitsandbytes' start-up message ---------------------------------------------------------------

_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_the_kernel_message(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_KERNEL_MESSAGE)


def quiet_bitsandbytes() -> None:
    """Drop the warning bitsandbytes logs at import on CPUs with AVX512-BF16 when its optional `kernels` download
    is refused: every command would open with it, and bitsandbytes falls back to its own CPU kernel. Other
    warnings of that logger pass. Idempotent."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if _not_the_kernel_message not in logger.filters:
        logger.addFilter(_not_the_kernel_message)


quiet_bitsandbytes()


# -- datasets ----------------------------------------------------------------------------------------


def answer_dataset_names(module_for: Callable[[str], Optional[tuple[str, str]]]) -> None:
    """Make `load_dataset(name)` load our builder module for the names `module_for` answers.

    `module_for(name)` gives (module, hash) for a name of ours, None for any other. datasets 5 has no
    loading scripts, and its packaged modules look for data files in the working directory, so our
    names are answered in `datasets.load.dataset_module_factory`, before that lookup. Idempotent.
    """
    require_checked("datasets", "the load_dataset('selfguide' / 'rebase') hook")
    from datasets import load

    original = load.dataset_module_factory
    if getattr(original, "selfguide_hook", False):
        return

    def dataset_module_factory(path, *args, **kwargs):
        found = module_for(path) if isinstance(path, str) else None
        if found is None:
            return original(path, *args, **kwargs)
        module, module_hash = found
        return load.DatasetModule(module, module_hash, {"dataset_name": path})

    dataset_module_factory.selfguide_hook = True
    load.dataset_module_factory = dataset_module_factory


def dataset_fingerprint(dataset) -> str:
    """The fingerprint datasets keeps for a Dataset's content and history (a private attribute)."""
    require_checked("datasets", "a datastore source's fingerprint")
    return dataset._fingerprint


# -- transformers ------------------------------------------------------------------------------------


def drop_gguf_quantizer(model) -> None:
    """After a GGUF load: the weights are dequantized to plain tensors, but transformers leaves the GGUF
    quantizer attached, which blocks `save_pretrained`."""
    require_checked("transformers", "saving a model loaded from a GGUF file")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# -- bitsandbytes ------------------------------------------------------------------------------------


def keep_4bit_trainable(model) -> list:
    """Stop bitsandbytes from ever repacking this model's 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, a Linear4bit in eval mode repacks its weight, once and for good, into a
    layout for an inference kernel (gemv_4bit) that has no backward. A model trained after any
    evaluation pass (the Trainer's evaluation loss, a generation) would then silently lose the
    gradient that flows through every frozen 4-bit layer into the LoRA weights below it. Returns the
    layers it changed.
    """
    bnb = sys.modules.get("bitsandbytes")  # a model with 4-bit layers has imported it
    four_bit = [m for m in model.modules() if bnb is not None and isinstance(m, bnb.nn.Linear4bit)]
    if four_bit:
        require_checked("bitsandbytes", "keeping 4-bit weights trainable on a CPU")
    layers = [m for m in four_bit if getattr(m, "support_avx512bf16_for_cpu", False)]  # absent before the CPU repack
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return layers


@contextmanager
def trainable_4bit_layout(model):
    """`keep_4bit_trainable` for the length of a block: evaluating a model someone else is training."""
    layers = keep_4bit_trainable(model)
    try:
        yield model
    finally:
        for layer in layers:
            layer.support_avx512bf16_for_cpu = True


# -- trl ---------------------------------------------------------------------------------------------

CHECKED_BELOW.setdefault("trl", "2")


def project_completion_tokens_only() -> None:
    """Make TRL's fused LM head project only the positions that carry a label on the CPU too.

    On Triton devices TRL projects just those; elsewhere it projects every position, so that compiled
    backends (Neuron) see fixed tile shapes. Nothing is compiled on the CPU, and with the embedded
    student's 262k-token vocabulary the prompt positions were most of a QLoRA step: 2.8x shorter steps
    on 214-token classification prompts, same loss. Process-wide and idempotent.
    """
    require_checked("trl", "the compact LM head on a CPU")
    from trl.trainer import utils as trl_utils

    choose = getattr(trl_utils, "_use_triton", None)
    if choose is None:
        raise UncheckedVersionError(
            f"trl: version {installed_version('trl')} has no trl.trainer.utils._use_triton, which the compact LM head on a "
            "CPU replaces. Fix: pip install 'trl>=1.0,<2', or a selfguide release checked on this trl"
        )
    if getattr(choose, "selfguide_patch", False):
        return

    def compact_on_cpu(device) -> bool:
        return device.type == "cpu" or choose(device)

    compact_on_cpu.selfguide_patch = True
    trl_utils._use_triton = compact_on_cpu


# -- llama-cpp-python ------------------------------------------------------------------------------------

CHECKED_BELOW.setdefault("llama-cpp-python", "0.4")


def llama_logits_at_every_position(llm, tokens: list[int], n_past: int):
    """The logits after each of `tokens` (float64, one row per token), decoded after the first `n_past` cached tokens,
    whose cache is kept and anything cached after them dropped.

    `Llama.eval` keeps the logits of a batch's last token only, unless the model was loaded with `logits_all`, which
    projects every prompt token onto the vocabulary and holds n_ctx x vocab floats; so the tokens go through the
    Llama's own context and batch (`_ctx`, `_batch`), asking for logits at every position.
    """
    import numpy as np

    require_checked("llama-cpp-python", "scoring a continuation in process")
    if not (hasattr(llm, "_ctx") and hasattr(llm, "_batch")):
        raise UncheckedVersionError(
            f"llama-cpp-python: version {installed_version('llama-cpp-python')} has no Llama._ctx/_batch, which scoring "
            "in process decodes through. Fix: pip install 'llama-cpp-python<0.4', or score with engine='transformers'"
        )
    llm._ctx.kv_cache_seq_rm(0, n_past, -1)
    rows = []
    for start in range(0, len(tokens), llm.n_batch):
        chunk = tokens[start : start + llm.n_batch]
        llm._batch.set_batch(chunk, n_past=n_past + start, logits_all=True)
        llm._ctx.decode(llm._batch)
        rows.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), llm.n_vocab())).astype(np.float64))
    return np.concatenate(rows)

