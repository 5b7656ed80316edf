"""Generated tokens per second of SELF-GUIDE synthesis on three engines, each beside its bare engine, in one run.

For each engine the pipeline runs once with its engine recording every `generate` call; the bare engine
then replays exactly those calls (same prompts, sampling settings and seeds). The ratio is the share of
engine speed the pipeline keeps after prompt building, filters, votes and journaling (target >= 0.9).

  transformers  the embedded student dequantized, in process (`engine="transformers"`, dtype auto)
  llama.cpp     the same GGUF in process through llama-cpp-python (`engine="llama.cpp"`), one stream
  server        llama.cpp's own server (`llama-server`, continuous batching) with --parallel slots, reached
                with `base_url=` and as many concurrent requests as slots

The server's calls are also replayed one at a time through the in-process llama.cpp engine: the server's
tokens/s over that single stream, on the same calls (target >= 2x). Every count of tokens uses one
tokenizer (the student's), so the three engines are measured alike.

    bash benchmarks/build_llama_server.sh                    # once: builds llama-server from llama-cpp-python's sdist
    python benchmarks/synthesis_throughput.py --server-bin /path/to/llama-server [--parallel 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from common import command_line, machine, markdown_table, write_results

from selfguide import Task
from selfguide.builders.selfguide import SelfGuideConfig
from selfguide.engines import Engine, OpenAIEngine, SamplingParams, TransformersEngine
from selfguide.engines.llamacpp_engine import LlamaCppEngine
from selfguide.journal import Journal
from selfguide.report import FilterReport
from selfguide.student import _embedded_gguf, dtype_choice, load_student, native_bf16_flags
from selfguide.synthesis.pipeline import SelfGuidePipeline

DEFAULT_TASK = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rewrite_task.json"


class Recording(Engine):
    """An engine that passes every call to `inner`, keeping the call and counting the tokens it generated."""

    def __init__(self, inner: Engine, count):
        self.inner, self.count = inner, count
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self.tokens = 0

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        out = self.inner.generate(prompts, params)
        self.tokens += self.count([t for samples in out for t in samples])
        return out

    def score(self, prompts, continuations):
        return self.inner.score(prompts, continuations)

    def count_tokens(self, texts):
        return self.inner.count_tokens(texts)


def replay(engine: Engine, calls, count) -> tuple[float, int]:
    start, tokens = time.perf_counter(), 0
    for prompts, params in calls:
        tokens += count([t for samples in engine.generate(prompts, params) for t in samples])
    return time.perf_counter() - start, tokens


def measure(name: str, engine: Engine, task: Task, config, count) -> dict:
    """The pipeline through a recording engine, then the bare engine on the same calls."""
    engine.generate(["warm-up"], SamplingParams(max_new_tokens=8))
    recording = Recording(engine, count)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        rows = SelfGuidePipeline(task, recording, config, Journal(Path(tmp) / "j.jsonl"), FilterReport(), progress=False).run()
        pipeline_s = time.perf_counter() - start
    pipeline_tokens = recording.tokens
    bare_s, bare_tokens = replay(engine, recording.calls, count)
    print(f"{name}: pipeline {pipeline_tokens / pipeline_s:.1f} tok/s, bare {bare_tokens / bare_s:.1f} tok/s", flush=True)
    return {"rows_kept": len(rows), "engine_calls": len(recording.calls), "calls": recording.calls,
            "pipeline": {"seconds": pipeline_s, "generated_tokens": pipeline_tokens, "tokens_per_s": pipeline_tokens / pipeline_s},
            "bare": {"seconds": bare_s, "generated_tokens": bare_tokens, "tokens_per_s": bare_tokens / bare_s},
            "ratio_pipeline_over_bare": (pipeline_tokens / pipeline_s) / (bare_tokens / bare_s)}


def start_server(binary: str, gguf: Path, parallel: int, threads: int, ctx_per_slot: int, log: Path):
    port = 8000 + os.getpid() % 1000
    command = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--parallel", str(parallel),
               "--ctx-size", str(ctx_per_slot * parallel), "--threads", str(threads), "--cont-batching", "--no-webui"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc, base_url, command
        except OSError:  # refused, or 503 while the model loads
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama-server did not come up within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=str(DEFAULT_TASK))
    parser.add_argument("--num-examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of every engine")
    parser.add_argument("--server-bin", default=None, help="llama.cpp's llama-server; without it the server rows are left out")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server slots, and concurrent requests")
    parser.add_argument("--name", default="synthesis_throughput", help="results file stem")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    task = Task.load(args.task)
    gguf = _embedded_gguf()
    config = SelfGuideConfig(name="bench", task=args.task, num_examples=args.num_examples, seed=args.seed,
                             label_strategy="vote", prompts_per_batch=args.batch_size)
    model, tokenizer = load_student(None)
    count = lambda texts: sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])  # noqa: E731
    results = {"transformers": measure("transformers", TransformersEngine(model, tokenizer, batch_size=args.batch_size), task, config, count)}
    del model
    llama = LlamaCppEngine.from_pretrained(str(gguf), n_threads=args.threads, seed=args.seed)
    results["llama.cpp"] = measure("llama.cpp", llama, task, config, count)
    if args.server_bin:
        with tempfile.TemporaryDirectory() as tmp:
            proc, base_url, command = start_server(args.server_bin, gguf, args.parallel, args.threads, 2048, Path(tmp) / "server.log")
            try:
                server = OpenAIEngine(base_url, model="student", concurrency=args.parallel)
                results["server"] = measure("server", server, task, config, count)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        single_s, single_tokens = replay(llama, results["server"]["calls"], count)
        results["server"]["single_stream_llama_cpp"] = {"seconds": single_s, "generated_tokens": single_tokens,
                                                         "tokens_per_s": single_tokens / single_s}
        results["server"]["ratio_over_single_stream"] = results["server"]["bare"]["tokens_per_s"] / (single_tokens / single_s)
        results["server"]["command"] = " ".join(command[:1] + ["-m", "<embedded GGUF>"] + command[3:])
    for r in results.values():
        r["engine_calls"] = len(r.pop("calls"))

    rows = []
    for name, r in results.items():
        rows.append([name, "pipeline", f"{r['pipeline']['seconds']:.1f}", r["pipeline"]["generated_tokens"], f"{r['pipeline']['tokens_per_s']:.1f}", ""])
        rows.append([name, "bare engine, same calls", f"{r['bare']['seconds']:.1f}", r["bare"]["generated_tokens"], f"{r['bare']['tokens_per_s']:.1f}",
                     f"**{r['ratio_pipeline_over_bare']:.3f}** pipeline/bare"])
    if "server" in results:
        s = results["server"]["single_stream_llama_cpp"]
        rows.append(["llama.cpp", "single stream, the server's calls", f"{s['seconds']:.1f}", s["generated_tokens"], f"{s['tokens_per_s']:.1f}",
                     f"server/single stream **{results['server']['ratio_over_single_stream']:.2f}x**"])
    m = machine()
    md = "\n".join([
        "# SELF-GUIDE synthesis throughput on three engines",
        "",
        f"Task `{task.name}` ({task.type}), {args.num_examples} rows requested, label_strategy vote, the embedded Gemma 3 270M "
        f"(transformers: dequantized, {dtype_choice('auto')}; llama.cpp and server: the Q4_K_M GGUF), {args.threads} threads each"
        + (f", llama-server with {args.parallel} slots and {args.parallel} concurrent requests" if args.server_bin else "")
        + f". CPU flags with native bf16: {', '.join(native_bf16_flags()) or 'none'}. Targets: pipeline/bare >= 0.9 on each engine; "
        "server >= 2x single-stream llama.cpp on the same calls.",
        "",
        markdown_table(["engine", "run", "seconds", "generated tokens", "tokens/s", "ratio"], rows),
        "",
        f"Load average (1 min) at the end: {m['load_average_1m']:.2f}. One run; each ratio compares two phases run back to back. "
        f"Command: `{command_line()}`.",
    ])
    write_results(args.name, {"task": task.name, "settings": vars(args), "dtype_transformers": dtype_choice("auto"),
                              "cpu_bf16_flags": native_bf16_flags(), "results": results, "machine": m}, md)


if __name__ == "__main__":
    main()
