import subprocess
import sys

import pytest
import torch

from selfguide import student
from selfguide.errors import InputNotFoundError
from selfguide.student import load_student, resolve_dtype, resolve_student


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache of this test's own; `cache(repo_id)` stores a model's config.json in it, as a download would."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def cache(repo_id: str) -> None:
        repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
        (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")

    return cache


def test_local_folder_and_cached_hub_id_pass_through(tiny_model_dir, hub_cache):
    assert resolve_student(str(tiny_model_dir)) == str(tiny_model_dir)
    hub_cache("org/some-model")
    assert resolve_student("org/some-model") == "org/some-model"


def test_a_hub_id_that_cannot_be_found_fails_at_once_naming_model(hub_cache, monkeypatch):
    from huggingface_hub import constants

    # Offline (or with no route to the Hub, as here) from_pretrained retried for about a minute, then raised
    # an OSError naming no field. Online, the Hub answers that no such repository exists.
    with pytest.raises(InputNotFoundError, match=r"^model: 'nobody-here/no-such-model-3f9c' is (not in the local Hub cache|no model on the Hub)"):
        resolve_student("nobody-here/no-such-model-3f9c")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputNotFoundError, match="HF_HUB_OFFLINE is set. Fix: check the name, or pass a local folder"):
        resolve_student("gemma-3-270m")
    hub_cache("gemma-3-270m")
    assert resolve_student("gemma-3-270m") == "gemma-3-270m", "a bare name is a Hub id, found in the cache offline"


def test_bad_model_paths_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file .* does not exist"):
        resolve_student(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_student(str(tmp_path))
    for missing in (str(tmp_path / "gone"), "./gone", "~/gone", "runs/exp1/final"):
        with pytest.raises(FileNotFoundError, match=f"model: folder {missing} does not exist"):
            resolve_student(missing)


def test_dtype_resolution():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    if not torch.cuda.is_available():
        # bf16 matmuls cost QLoRA 22x on an AVX2 CPU (qlora_compute_dtype.md) and ran faster with native bf16
        # (qlora_compute_dtype_avx512bf16.md): a CPU gets bf16 only with native bf16 instructions.
        assert resolve_dtype("auto") is (torch.bfloat16 if student.native_bf16_flags() else torch.float32)
    else:
        assert resolve_dtype("auto") is (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


@pytest.mark.parametrize("dtype", ["bf16", "nn", "int8", "Float32"])
def test_dtype_outside_the_choices_is_refused(dtype):
    with pytest.raises(ValueError, match=r"dtype: .* is not one of .*Fix"):
        resolve_dtype(dtype)


def test_load_student_checks_dtype_before_resolving_the_model(monkeypatch):
    def resolve(model):
        raise AssertionError("resolved (and maybe converted) the student before checking dtype")

    monkeypatch.setattr(student, "resolve_student", resolve)
    with pytest.raises(ValueError, match="dtype: 'bf16'"):
        student.load_student("org/some-model", dtype="bf16")


_CONVERT = "from selfguide.student import resolve_student; print(resolve_student(None))"


@pytest.mark.slow
def test_two_processes_convert_the_embedded_student_once(tmp_path):
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path / "hf")}
    procs = [subprocess.Popen([sys.executable, "-c", _CONVERT], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and outs[0].startswith(str(tmp_path / "hf" / "selfguide" / "models"))
    models = tmp_path / "hf" / "selfguide" / "models"
    assert [p.name for p in models.iterdir() if p.is_dir()] == [outs[0].rsplit("/", 1)[1]], "no temporary folder left behind"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(outs[0])
    assert not getattr(model, "is_quantized", False) and model.config.model_type.startswith("gemma3")


def test_offline_the_student_loads_without_hub_kernels(tiny_model_dir, monkeypatch):
    """transformers loads with Hub kernels unless told otherwise; on a GPU without the Hub that fetch raised a
    ValueError on every load (benchmarks/results/cuda_7b_shape.md), so offline the model keeps its own layers."""
    import huggingface_hub

    hub = sys.modules[huggingface_hub.is_offline_mode.__module__]
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    online, _ = load_student(str(tiny_model_dir), dtype="float32", device="cpu")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    offline, _ = load_student(str(tiny_model_dir), dtype="float32", device="cpu")
    assert online.use_kernels, "transformers' default: this test means nothing once it changes"
    assert not offline.use_kernels
