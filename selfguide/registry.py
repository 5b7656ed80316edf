"""Make `load_dataset("selfguide", ...)` and `load_dataset("rebase", ...)` work after `import selfguide`.

datasets 5 has no loading scripts; its packaged modules (json, csv, ...) are looked up by name before
any local folder, so registering ours there works from any working directory. Packaged modules also
scan the working directory for data files, which would make an empty folder an error and a folder
with files a different cache key; our builders take no data files, so that scan is skipped for them.
"""

from __future__ import annotations

import hashlib
from importlib.util import find_spec
from pathlib import Path

BUILDERS = {
    "selfguide": "selfguide.builders.selfguide",
    "rebase": "selfguide.builders.rebase",
}


def _code_hash(module_name: str) -> str:
    """Hash of the builder and the method code it runs, so a code change never reuses a stale cache."""
    package_dir = Path(find_spec("selfguide").origin).parent
    files = sorted(package_dir.rglob("*.py"))
    builder = find_spec(module_name)
    if builder is not None and builder.origin:
        files.append(Path(builder.origin))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def register_builders() -> None:
    from datasets import load
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    for name, module in BUILDERS.items():
        if find_spec(module) is not None:
            _PACKAGED_DATASETS_MODULES[name] = (module, _code_hash(module))

    factory = load.PackagedDatasetModuleFactory
    if getattr(factory.get_module, "_selfguide", False):
        return
    original = factory.get_module

    def get_module(self):
        if self.name in BUILDERS:
            module_path, code_hash = _PACKAGED_DATASETS_MODULES[self.name]
            return load.DatasetModule(module_path, code_hash, {"dataset_name": self.name})
        return original(self)

    get_module._selfguide = True
    factory.get_module = get_module
