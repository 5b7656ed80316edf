"""1 vs 2 Ray workers, side by side in one run: sharded SELF-GUIDE synthesis and datastore embedding.

Each setting runs in a fresh process that starts its own local Ray with as many CPUs as workers (`ray.init(num_cpus=W)`),
so W shards (or embedder actors) run at once, one thread each. Every setting builds from scratch (a fresh cache and
datastore folder), so the times include each worker's model load, as a cluster's cold start does.

  synthesis  load_dataset("selfguide", task=..., num_shards=2, prompts_per_batch=4, ray_address="local") on the embedded
             student: batches of 4 prompts, so each round has several for each shard
  embedding  build_datastore(<rows of ../shared/data/datastore/pool.jsonl>, ray_address="local", num_workers=W)

    python benchmarks/scale_out.py                  # the shipped demo task, 32 rows; 2,000 pool rows
    python benchmarks/scale_out.py --workers 1 2 4  # on a bigger machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, command_line, machine, markdown_table, write_results

from selfguide.commands import demo_task_path

SYNTHESIS = """
import json, sys, time, ray
ray.init(num_cpus=int(sys.argv[1]), log_to_driver=False, include_dashboard=False)
from datasets import load_dataset
import selfguide
t = time.perf_counter()
ds = load_dataset("selfguide", task=sys.argv[2], num_examples=int(sys.argv[3]), num_shards=2, prompts_per_batch=4, ray_address="local", cache_dir=sys.argv[4])
print(json.dumps({"seconds": time.perf_counter() - t, "rows": ds["train"].num_rows, "inputs": list(ds["train"]["input"])}))
"""

EMBEDDING = """
import json, sys, time, ray
ray.init(num_cpus=int(sys.argv[1]), log_to_driver=False, include_dashboard=False)
from selfguide.rebase import build_datastore
t = time.perf_counter()
store = build_datastore(sys.argv[2], sys.argv[3], index_factory="Flat", chunk_size=256, ray_address="local", num_workers=int(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(store.texts)}))
"""


def run(script: str, *argv) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode:
        raise SystemExit(f"a setting failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def driver_filter_seconds(sizes: list[int]) -> dict[int, float]:
    """Seconds the driver's duplicate check takes to accept `n` distinct candidates: each is compared with every
    input accepted before it (word-trigram Jaccard), so the time grows with the square of the rows."""
    import random

    from selfguide.synthesis.input_filters import InputFilter

    rng, words = random.Random(0), [f"w{i}" for i in range(5000)]
    out = {}
    for n in sizes:
        texts = [" ".join(rng.choices(words, k=15)) for _ in range(n)]
        check = InputFilter(gold_inputs=texts[:3], instruction="Write a sentence.", length_floor=100.0, check_format=False)
        start = time.perf_counter()
        for t in texts:
            check.accept(t)
        out[n] = time.perf_counter() - start
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--task", default=str(demo_task_path()))
    p.add_argument("--num-examples", type=int, default=32)
    p.add_argument("--pool-rows", type=int, default=2000)
    p.add_argument("--filter-sizes", type=int, nargs="+", default=[1000, 2000, 4000], help="candidates for the driver's duplicate check")
    p.add_argument("--name", default="scale_out")
    args = p.parse_args()

    pool = SHARED_DATA / "datastore" / "pool.jsonl"
    results = {"synthesis": {}, "embedding": {}, "load_average_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "pool_rows.jsonl"
        with pool.open() as f:
            rows.write_text("".join(line for _, line in zip(range(args.pool_rows), f)))
        for w in args.workers:
            results["synthesis"][w] = run(SYNTHESIS, w, args.task, args.num_examples, Path(tmp) / f"cache-{w}")
            results["embedding"][w] = run(EMBEDDING, w, rows, Path(tmp) / f"store-{w}")
            print(w, {k: v[w]["seconds"] for k, v in results.items() if isinstance(v, dict)}, flush=True)
    results["driver_filter_seconds"] = driver_filter_seconds(args.filter_sizes)
    first = args.workers[0]
    same_rows = all(results["synthesis"][w]["inputs"] == results["synthesis"][first]["inputs"] for w in args.workers)
    for r in results["synthesis"].values():
        r.pop("inputs")
    table = []
    for stage, unit in (("synthesis", "rows/s"), ("embedding", "texts/s")):
        base = results[stage][first]["rows"] / results[stage][first]["seconds"]
        for w in args.workers:
            r = results[stage][w]
            rate = r["rows"] / r["seconds"]
            table.append([stage, w, r["rows"], f"{r['seconds']:.1f}", f"{rate:.2f} {unit}", f"{rate / base:.2f}"])
    payload = {"machine": machine(), "command": command_line(), "settings": vars(args), "results": results, "same_rows": same_rows}
    md = "\n".join([
        f"# Scale-out on Ray: {' vs '.join(map(str, args.workers))} workers, one run",
        "",
        f"This machine: {os.cpu_count()} CPUs; load average {results['load_average_before']:.2f} before, "
        f"{payload['machine']['load_average_1m']:.2f} after. Synthesis: `{Path(args.task).name}`, {args.num_examples} rows, "
        f"2 shards of 4-prompt batches, the embedded student; embedding: the first {args.pool_rows} rows of the shared pool, all-MiniLM-L6-v2. "
        f"Each setting a fresh process, Ray and cache, so model loads are counted. The synthesized rows are "
        f"{'the same' if same_rows else 'NOT the same'} for every worker count (the same seed and shards).",
        "",
        markdown_table(["stage", "workers", "rows", "seconds", "rate", f"vs {first} worker"], table),
        "",
        "The driver's duplicate check across shards (one process, whatever the workers), seconds to accept n distinct inputs:",
        "",
        markdown_table(["candidates", "seconds", "per candidate (ms)"],
                       [[n, f"{t:.2f}", f"{1000 * t / n:.3f}"] for n, t in results["driver_filter_seconds"].items()]),
        "",
        "How the work grows with tasks, rows and nodes: `scale_out_model.md`.",
        "",
        f"Command: `{payload['command']}`",
    ])
    write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
