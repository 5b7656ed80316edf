"""ReBase datastore and retrieval on the shared pool, in one run:

* embedding throughput while building the datastore (texts/s and tokens/s, time inside the embedder),
* query latency of the FAISS index against exact (brute-force) search over the same vectors,
* recall@10 of the index against exact search,
* end-to-end `retrieve()` latency for the NI tasks in the shared data.

Queries are the demo inputs and outputs of those NI tasks: what ReBase sends to the index.

    python benchmarks/retrieval.py [--pool FILE] [--max-rows N] [--index HNSW32] [--ef-search 128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHARED_DATA, command_line, machine, markdown_table, write_results

import selfguide.rebase.datastore as ds_module
from selfguide import Task
from selfguide.rebase import build_datastore, retrieve
from selfguide.rebase.datastore import embed, evenly_spaced, load_embedder


def _subset(pool: Path, max_rows: int | None, folder: Path) -> tuple[Path, int]:
    """The pool itself, or `max_rows` rows spread evenly over it (the pool is sorted by dataset)."""
    with pool.open(encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())
    if max_rows is None or max_rows >= total:
        return pool, total
    subset = folder / "pool-subset.jsonl"
    with pool.open(encoding="utf-8") as f, subset.open("w", encoding="utf-8") as out:
        lines = (line for line in f if line.strip())
        out.writelines(line for _, line in evenly_spaced(lines, total, max_rows))
    return subset, max_rows


def _timed_embed(log: list):
    """`embed` as the datastore calls it, timed: the build's own embedding time, nothing else."""
    real = ds_module.embed

    def timed(texts, *args, **kwargs):
        start = time.perf_counter()
        vectors = real(texts, *args, **kwargs)
        log.append((len(texts), time.perf_counter() - start, list(texts)))
        return vectors

    return timed


def _exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def _ms(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 3),
        "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 3),
        "mean_ms": round(1000 * statistics.fmean(ordered), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=SHARED_DATA / "datastore" / "pool.jsonl")
    parser.add_argument("--tasks", type=Path, default=SHARED_DATA / "ni" / "tasks")
    parser.add_argument("--max-rows", type=int, default=None, help="evenly spaced rows of the pool (default: all)")
    parser.add_argument("--index", default="HNSW32", help="FAISS factory string")
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--store", type=Path, default=None, help="build here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pool, rows_used = _subset(args.pool, args.max_rows, tmp)
        store_path = args.store or tmp / "store"
        log: list = []
        ds_module.embed = _timed_embed(log)
        start = time.perf_counter()
        store = build_datastore(pool, store_path, max_rows_per_config=None, index_factory=args.index)
        build_seconds = time.perf_counter() - start
        ds_module.embed = embed
        store.set_ef_search(args.ef_search)

        # The cell-text chunks only, not the one call that embeds the dataset descriptions.
        descriptions = store.sources["description"]
        chunks = [entry for entry in log if entry[2] != descriptions]
        embed_seconds = sum(seconds for _, seconds, _ in chunks)
        texts_embedded = sum(n for n, _, _ in chunks)
        tokenizer, max_len = load_embedder(None).tokenizer, load_embedder(None).max_seq_length
        tokens = sum(len(ids) for _, _, texts in chunks for ids in tokenizer(texts, truncation=True, max_length=max_len)["input_ids"])

        tasks = [Task.load(path) for path in sorted(args.tasks.glob("*.json"))]
        query_texts = [t for task in tasks for e in task.examples for t in (e.input, e.output)]
        queries = embed(query_texts)
        vectors = store.text_embeddings()
        k = args.k

        index_single, exact_single = [], []
        for q in queries:
            t0 = time.perf_counter()
            store.search(q[None, :], k)
            index_single.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _exact_top_k(vectors, q[None, :], k)
            exact_single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, index_ids = store.search(queries, k)
        index_batch = time.perf_counter() - t0
        t0 = time.perf_counter()
        exact_ids = _exact_top_k(vectors, queries, k)
        exact_batch = time.perf_counter() - t0
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(index_ids, exact_ids)]))

        retrieve_seconds = {}
        for task in tasks:
            t0 = time.perf_counter()
            retrieve(store, task, 50)
            retrieve_seconds[task.name] = time.perf_counter() - t0

    payload = {
        "machine": machine(),
        "pool": str(args.pool),
        "rows_used": rows_used,
        "datastore": {
            "rows": len(store),
            "distinct_texts": len(vectors),
            "datasets": len(store.sources),
            "index": args.index,
            "ef_search": args.ef_search,
            "build_seconds": round(build_seconds, 1),
        },
        "embedding": {
            "texts": texts_embedded,
            "tokens": tokens,
            "seconds": round(embed_seconds, 1),
            "texts_per_s": round(texts_embedded / embed_seconds, 1) if embed_seconds else None,
            "tokens_per_s": round(tokens / embed_seconds, 1) if embed_seconds else None,
        },
        "queries": len(queries),
        "k": k,
        "latency_single_query": {"faiss": _ms(index_single), "exact": _ms(exact_single)},
        "batch_per_query_ms": {
            "faiss": round(1000 * index_batch / len(queries), 3),
            "exact": round(1000 * exact_batch / len(queries), 3),
        },
        f"recall_at_{k}": round(recall, 4),
        "retrieve_k50_seconds": {name: round(s, 2) for name, s in retrieve_seconds.items()},
        "command": command_line(),
    }
    emb = payload["embedding"]
    lat = payload["latency_single_query"]
    md = [
        "# ReBase retrieval benchmark",
        "",
        f"Pool `{args.pool.name}`: {rows_used} rows used -> {len(store)} datastore rows, {len(vectors)} distinct cell texts, "
        f"{len(store.sources)} datasets. Index `{args.index}` (efSearch {args.ef_search}); exact = brute-force inner product in NumPy. "
        f"Queries: the {len(queries)} demo inputs and outputs of {len(tasks)} NI tasks. Machine: {machine()['cpu_threads']} CPU threads"
        f"{', ' + machine()['cuda'] if machine()['cuda'] else ''}, {machine()['date']}.",
        "",
        markdown_table(
            ["embedder", "texts", "tokens", "seconds", "texts/s", "tokens/s", "whole build (s)"],
            [["all-MiniLM-L6-v2", emb["texts"], emb["tokens"], emb["seconds"], emb["texts_per_s"], emb["tokens_per_s"],
              payload["datastore"]["build_seconds"]]],
        ),
        "",
        markdown_table(
            ["search", "p50 ms / query", "p95 ms / query", "batched ms / query", f"recall@{k} vs exact"],
            [
                ["FAISS " + args.index, lat["faiss"]["p50_ms"], lat["faiss"]["p95_ms"], payload["batch_per_query_ms"]["faiss"], payload[f"recall_at_{k}"]],
                ["exact", lat["exact"]["p50_ms"], lat["exact"]["p95_ms"], payload["batch_per_query_ms"]["exact"], 1.0],
            ],
        ),
        "",
        markdown_table(["task", "retrieve(k=50) s"], [[n, round(s, 2)] for n, s in retrieve_seconds.items()]),
        "",
        f"Command: `{payload['command']}`",
    ]
    write_results("retrieval", payload, "\n".join(md))


if __name__ == "__main__":
    main()
