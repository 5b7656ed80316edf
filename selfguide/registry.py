"""Make `load_dataset("selfguide", ...)` and `load_dataset("rebase", ...)` work after `import selfguide`.

datasets 5 has no loading scripts, and its packaged modules (json, csv, ...) insist on data files
found in the working directory. Our builders read no data files, so their names are answered
before that lookup: from any working directory, empty or not, and never from the Hub.
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
    files += sorted(Path(builder.origin).parent.glob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def register_builders() -> None:
    from datasets import load

    original = load.dataset_module_factory
    if getattr(original, "_selfguide", False):
        return

    def dataset_module_factory(path, *args, **kwargs):
        if path in BUILDERS:
            module = BUILDERS[path]
            return load.DatasetModule(module, _code_hash(module), {"dataset_name": path})
        return original(path, *args, **kwargs)

    dataset_module_factory._selfguide = True
    load.dataset_module_factory = dataset_module_factory
