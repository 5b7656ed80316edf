"""Shared pieces of the ReBase tests: the fixture datastore and a scripted OpenAI-compatible server.

The scripted server stands in for the teacher model only: it speaks the real HTTP protocol on
loopback, so the engine, builder and transformation code under test run unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional, Union

import datasets
import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from tests.sft_helpers import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "datastore"
TOPICS = ["world", "sports", "business", "tech"]
HEADLINES = [
    ("Leaders meet in Geneva to discuss the ceasefire", 0),
    ("Late goal sends the home side into the cup final", 1),
    ("Shares slide as the central bank raises rates", 2),
    ("New phone chip promises twice the battery life", 3),
    ("Floods displace thousands along the river delta", 0),
    ("Veteran sprinter wins gold in her final season", 1),
]


def news_dataset() -> datasets.Dataset:
    features = datasets.Features({"headline": datasets.Value("string"), "topic": datasets.ClassLabel(names=TOPICS)})
    return datasets.Dataset.from_dict(
        {"headline": [h for h, _ in HEADLINES], "topic": [t for _, t in HEADLINES]}, features=features
    )


def write_parquet(folder: Path) -> Path:
    rows = json.loads((FIXTURES / "trivia.json").read_text())
    path = folder / "trivia.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def fixture_sources(folder: Path) -> list:
    from selfguide.rebase import Source

    return [
        FIXTURES / "reviews.jsonl",
        str(FIXTURES / "recipes.csv"),
        write_parquet(folder),
        Source(news_dataset(), name="news_topics", description="News headlines labelled with their topic", license="CC-BY-4.0"),
    ]


_STORES: dict[str, object] = {}


def fixture_store(root: Path):
    """The datastore of the four fixture sources, built once per test session."""
    from selfguide.rebase import build_datastore

    key = str(root)
    if key not in _STORES:
        folder = root / "rebase-fixture-store"
        folder.mkdir(exist_ok=True)
        _STORES[key] = build_datastore(fixture_sources(folder), folder / "store", chunk_size=16)
    return _STORES[key]


# A reply is the completion text, or (status, headers, body) for an HTTP-level answer.
Reply = Union[str, tuple]


class ScriptedServer:
    """/v1/models and /v1/completions on 127.0.0.1, answering with `respond(prompt, body)`."""

    def __init__(self, respond: Callable[[str, dict], Reply], model: str = "scripted-teacher", choices_per_request: int = 1):
        self.respond, self.model, self.choices_per_request = respond, model, choices_per_request
        self.requests: list[dict] = []
        self.headers: list[dict] = []  # each request's HTTP headers, names in lower case
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload, headers=None):
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path != "/v1/completions":
                    self._send(404, {"error": "not found"})
                    return
                reply = server.respond(body["prompt"], body)
                if isinstance(reply, tuple):
                    self._send(*reply)
                    return
                n = min(body.get("n", 1), server.choices_per_request)
                self._send(200, {"object": "text_completion", "choices": [{"index": i, "text": reply} for i in range(n)]})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def source_record(prompt: str) -> dict:
    """The JSON record a transformation prompt asks the model to rewrite (the last one it shows)."""
    line = [line for line in prompt.splitlines() if line.startswith("Source record: ")][-1]
    return json.loads(line[len("Source record: ") :])


def copying_teacher(prompt: str, body: dict) -> str:
    """A teacher that turns a record into {"input": its first text, "output": its label}, as a continuation."""
    record = source_record(prompt)
    text = next(v for v in record.values() if isinstance(v, str) and len(v.split()) > 3)
    label = record.get("label", "positive")
    return json.dumps(text)[1:] + ', "output": ' + json.dumps(label) + "}"


@contextlib.contextmanager
def real_llama_server(log_dir: Path, ready_within: float = 120, logits_all: Optional[bool] = None, port: Optional[int] = None):
    """A llama-cpp-python server with the embedded student's GGUF on a free loopback port, stopped on exit.

    `logits_all` sets `--logits_all`, which echo with logprobs (scoring) needs; None leaves the server's
    default (true in llama-cpp-python 0.3.x's server, though `Llama()` itself defaults to false). `port`: a given
    one, so a server started again answers at the same base_url."""
    pytest.importorskip("llama_cpp.server", reason="needs the 'server' extra: pip install 'llama-cpp-python[server]'")
    from selfguide.student import _embedded_gguf

    port = port or free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(_embedded_gguf()), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--n_threads", str(min(4, os.cpu_count() or 1))]
    if logits_all is not None:
        command += ["--logits_all", str(logits_all).lower()]
    # llama.cpp logs a lot: into a file, since an unread pipe fills up and stalls the server.
    log = log_dir / "llama-server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(base_url + "/v1/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:  # refused or not answering yet (URLError is an OSError)
                pass
            assert time.monotonic() < deadline, f"llama_cpp.server did not come up within {ready_within} s"
            time.sleep(0.5)
        yield base_url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


_BUILD_SCRIPT = """
import sys
from selfguide.rebase import build_datastore
build_datastore(sys.argv[1:-1], sys.argv[-1], chunk_size=1)
"""


def kill_build_mid_embedding(sources: list[str], target: Path, chunks_done: int = 3) -> set[int]:
    """Start `build_datastore(sources, target, chunk_size=1)` in a process, SIGKILL it once `chunks_done` chunks are
    embedded, and return the chunks it finished."""
    chunks = target / ".build" / "embeddings"
    proc = subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, *sources, str(target)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(chunks.glob("*[0-9].npy"))) < chunks_done:
            assert proc.poll() is None, "the build ended before it could be interrupted"
            assert time.monotonic() < deadline, "the build never got to embedding"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return {int(f.name.split(".")[0]) for f in chunks.glob("*[0-9].npy")}

