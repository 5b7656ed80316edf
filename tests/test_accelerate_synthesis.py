"""Synthesis inside a 2-process `accelerate launch`: the main process builds the data, the other reuses it.

The recipe builds its dataset inside `TrainingArguments.main_process_first`; the script below does the same
with the builder, so the test holds whatever else the recipe does. Both processes must name one cache
(nothing process-specific in the key), so the second finds the first's rows instead of synthesizing again.
"""

import json
import os
import subprocess

from tests.conftest import FIXTURES
from tests.sft_helpers import REPO, free_port

SCRIPT = """
import json, sys
import torch.distributed as dist
from datasets import load_dataset
from transformers import TrainingArguments
import selfguide  # noqa: F401  (registers the builders)

task, model, cache, out = sys.argv[1:]
args = TrainingArguments(output_dir=out + ".trainer", use_cpu=True, report_to="none")
with args.main_process_first(desc="building the dataset"):
    ds = load_dataset("selfguide", task=task, model=model, cache_dir=cache, num_examples=3, length_window_floor=20.0,
                      format_check=False, max_rounds=3, min_majority=0.2, annotation_samples=2, output_length_filter=False,
                      input_max_new_tokens=16, output_max_new_tokens=8)
with open(f"{out}.{args.process_index}", "w") as f:
    json.dump({"world": args.world_size, "rows": ds["train"].to_list()}, f)
dist.barrier()
dist.destroy_process_group()
"""


def test_two_processes_build_the_data_once(tmp_path, tiny_model_dir):
    script = tmp_path / "build.py"
    script.write_text(SCRIPT)
    cache, out = tmp_path / "cache", tmp_path / "rows"
    # `--cpu` would pick accelerate's single-process launcher; `--multi_gpu` starts torch.distributed workers,
    # which `use_cpu` puts on the CPU (gloo) when the machine has no GPU.
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script),
           str(FIXTURES / "rewrite_task.json"), str(tiny_model_dir), str(cache), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rows.{rank}").read_text()) for rank in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2], "two processes, one process group"
    assert ranks[0]["rows"] and ranks[0]["rows"] == ranks[1]["rows"]
    # One build: one resume journal, each unit of work in it once. A second build under another cache key
    # would have kept a second journal.
    journals = list(cache.glob("selfguide_work/*/journal.jsonl"))
    assert len(journals) == 1, journals
    keys = [json.loads(line)["key"] for line in journals[0].read_text().splitlines()]
    assert keys and len(keys) == len(set(keys))
    assert len(list(cache.glob("selfguide/*/*/*/dataset_info.json"))) == 1
