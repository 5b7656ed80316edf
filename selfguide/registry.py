"""Make `load_dataset("selfguide", ...)` and `load_dataset("rebase", ...)` work after `import selfguide`.

Our builders read no data files, so their names are answered before datasets looks for any: from any
working directory, empty or not, and never from the Hub (the hook itself is in patches.py).
"""

from __future__ import annotations

import ast
import hashlib
from importlib.util import find_spec, resolve_name
from pathlib import Path

from .patches import answer_dataset_names

BUILDERS = {
    "selfguide": "selfguide.builders.selfguide",
    "rebase": "selfguide.builders.rebase",
}


def _imported_files(module_name: str) -> list[Path]:
    """The module's file and those of every selfguide module it imports, directly or not (read, not run).

    Only code that can change what a builder writes keys its cache: an edit to the CLI or the
    evaluation leaves synthesized data reusable, which a tuning run across code edits relies on.
    """
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [module_name]
    while todo:
        name = todo.pop()
        if name in seen or name.partition(".")[0] != "selfguide":
            continue
        seen.add(name)
        try:
            spec = find_spec(name)
        except (ImportError, ValueError):  # `from .x import Name` names an attribute, not a module
            continue
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue
        path = Path(spec.origin)
        files.add(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.append(package)  # importing a module runs its packages' __init__ first
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
                todo += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return sorted(files)


def _code_hash(module_name: str) -> str:
    """Hash of the builder and the code it runs, so a code change never reuses a stale cache."""
    digest = hashlib.sha256()
    for f in _imported_files(module_name):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def _module_for(name: str):
    return (BUILDERS[name], _code_hash(BUILDERS[name])) if name in BUILDERS else None


def register_builders() -> None:
    answer_dataset_names(_module_for)
