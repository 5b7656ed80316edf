"""SELF-GUIDE split into shards: each round's batches dealt out to `num_shards` workers, in this process or on Ray.

A shard runs stages (a)-(c) (input generation, input filters, annotation) on its batches, with its own engine and
its own journal; the batch seeds are the unsharded run's, so a shard's work depends only on the seed, its batches
and the pool at the round's start. What needs the whole pool stays on the driver: the duplicate check across
shards, stage (d) (class balance or the output filters), round control and the final balance and cut. The same
seed and shard count give the same rows whether the shards run here or as Ray tasks. A worker killed mid-shard is
retried by Ray and skips the batches its journal already holds.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from datasets.utils import tqdm

from ..errors import ConfigError
from ..journal import Journal
from ..report import FilterReport
from ..task import Task
from .pipeline import SelfGuidePipeline, _seed


@dataclass
class ShardWork:
    """One shard's part of one round: its batches (index, prompts) and what the driver knew at the round's start."""

    shard: int
    round: int
    batches: list[tuple[int, int]]
    pool: list[dict]  # the rows kept so far: low-quality examples and class counts for the prompts
    seen: list[str]  # every input accepted so far (kept or not later): duplicates of them are dropped


def shard_journal(work_dir: Path, shard: int, num_shards: int) -> Path:
    return Path(work_dir) / f"shard-{shard}-of-{num_shards}.jsonl"


def run_shard(task_spec: dict, config, chat: bool, journal_path: str, work: ShardWork, engine=None) -> dict:
    """Stages (a)-(c) on the shard's batches: per batch, the inputs that passed its filters and the labelled rows;
    and the shard's filter report. Without `engine` (a Ray worker), the config's engine is built here and closed."""
    from ..builders.base import build_engine

    own = engine or build_engine(config)
    try:
        report = FilterReport()
        pipeline = SelfGuidePipeline(Task.load(task_spec), own, config, Journal(journal_path), report, progress=False, chat=chat)
        pipeline.input_filter.remember_all(work.seen)
        batches = {}
        for b, size in work.batches:
            rng = random.Random(_seed(config.seed, work.round, b, "prompts"))
            batches[b] = pipeline.annotated_batch(f"r{work.round}/b{b}", rng, size, work.pool, work.round)
        return {"batches": batches, "report": report.to_dict()}
    finally:
        if engine is None:
            own.close()


def local_runner(task_spec: dict, config, chat: bool, engine) -> Callable:
    """Each shard in turn in this process, on one engine: the run a Ray run of the same shards must equal."""

    def run(works: list[ShardWork], journals: list[str]) -> list[dict]:
        return [run_shard(task_spec, config, chat, path, work, engine=engine) for work, path in zip(works, journals)]

    return run


def ray_runner(task_spec: dict, config, chat: bool, address: str, max_retries: int = 3) -> Callable:
    """Each shard a Ray task with its own engine, retried up to `max_retries` times when its worker dies."""
    ray = connect(address)
    remote = ray.remote(num_cpus=1, max_retries=max_retries)(run_shard).options(name="selfguide_shard")

    def run(works: list[ShardWork], journals: list[str]) -> list[dict]:
        return ray.get([remote.remote(task_spec, config, chat, path, work) for work, path in zip(works, journals)])

    return run


def connect(address: str):
    """Ray, started on this machine (`"local"`) or joined at `address` ("auto", "ray://host:10001", ...)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("ray_address: Ray is not installed. Fix: pip install 'selfguide[ray]', or leave ray_address out to run the shards here") from None
    if not ray.is_initialized():
        try:
            _check_reachable(address)
            ray.init(address=None if address == "local" else address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError, OSError) as e:
            raise ConfigError(
                f"ray_address: cannot reach a Ray cluster at {address!r} ({type(e).__name__}: {e}). Fix: start one there "
                "(`ray start --head`) or correct the address; ray_address='local' starts Ray on this machine"
            ) from None
    return ray


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Raise OSError when nothing listens at a host:port address: ray.init waits minutes on one (seen: over 300 s)."""
    if address in ("local", "auto"):
        return  # Ray finds (or refuses) these itself, at once
    target = address.removeprefix("ray://")
    host, colon, port = target.rpartition(":")
    if not colon:
        host, port = target, ""
    port_number = int(port) if port.isdigit() else (10001 if address.startswith("ray://") else 6379)  # Ray Client's, the GCS's
    socket.create_connection((host, port_number), timeout=timeout_s).close()


def run_sharded(task: Task, engine_or_none, config, work_dir: Path, report: FilterReport, chat: bool, progress: bool = True) -> list[dict]:
    """SELF-GUIDE with each round's batches dealt to `config.num_shards` shards: batch b goes to shard b mod n.
    `engine_or_none` runs the shards here; None sends them to Ray at `config.ray_address`."""
    cfg, spec, shards = config, task.to_dict(), config.num_shards
    if engine_or_none is None:
        runner = ray_runner(spec, cfg, chat, cfg.ray_address)
    else:
        runner = local_runner(spec, cfg, chat, engine_or_none)
    # The driver's pipeline: its filter sees every shard's inputs, and it holds stage (d) and the final steps. It makes
    # no model call, so it has no journal: a resumed run replays the shards' journals and merges them again.
    driver = SelfGuidePipeline(task, _NoCalls(), cfg, None, report, progress=False, chat=False)
    rows: list[dict] = []
    seen: list[str] = []
    journals = [str(shard_journal(work_dir, s, shards)) for s in range(shards)]
    bar = tqdm(total=cfg.num_examples, desc=f"SELF-GUIDE rows ({shards} shards)", unit="row", disable=not progress)
    try:
        for r in range(cfg.max_rounds):
            if len(rows) >= cfg.num_examples:
                break
            sizes = driver.batch_sizes(len(rows))
            works = [ShardWork(s, r, [(b, n) for b, n in enumerate(sizes) if b % shards == s], list(rows), list(seen)) for s in range(shards)]
            busy = [w for w in works if w.batches]
            results = {w.shard: out for w, out in zip(busy, runner(busy, [journals[w.shard] for w in busy]))}
            for out in results.values():
                for stage, counts in out["report"].items():
                    report.add(stage, counts["in"], counts["out"], counts.get("dropped"))
            for b in range(len(sizes)):
                kept, annotated = results[b % shards]["batches"][b]
                if not kept:
                    continue
                if len(rows) >= cfg.num_examples:  # made in parallel with the batches that filled the pool
                    report.add("shard_merge", len(annotated), 0, {"pool_full": len(annotated)})
                    continue
                new = driver.post_filter(_cross_shard_unique(driver, kept, annotated, seen, report), rows)
                rows.extend(new)
                bar.update(min(len(new), max(0, cfg.num_examples - bar.n)))
    finally:
        bar.close()
    return driver.finish(rows)


def _cross_shard_unique(driver: SelfGuidePipeline, kept: list[str], annotated: list[dict], seen: list[str], report: FilterReport) -> list[dict]:
    """The labelled rows whose input no earlier batch of any shard accepted (a shard saw only its own batches)."""
    drops: dict[str, int] = {}
    fresh = set()
    for text in kept:
        reason = driver.input_filter.accept(text)
        if reason:
            drops[reason] = drops.get(reason, 0) + 1
        else:
            fresh.add(text)
            seen.append(text)
    unique = [row for row in annotated if row["input"] in fresh]
    report.add("shard_merge", len(annotated), len(unique), {f"{k}_across_shards": v for k, v in drops.items()})
    return unique


class _NoCalls:
    """The driver's stand-in engine: it builds prompts and filters, and must never call a model."""

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(t.split()) for t in texts)

    def __getattr__(self, name):
        raise AttributeError(f"the sharded run's driver calls no model ({name}); the shards do")
