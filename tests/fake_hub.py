"""A loopback stand-in for the Hub's upload API, for testing the real huggingface_hub client.

It answers what `create_repo` and `upload_folder` call: repo creation, README metadata validation
(by parsing with the client's card classes, a stand-in for the Hub's own rules), preupload (which
files go through LFS), the LFS batch API with basic transfer (a PUT per blob), and the ndjson commit. It
binds 127.0.0.1 only, caps request bodies, and shuts itself down after `lifetime_s` even if a test
forgets to. Files land in `repos[(repo_type, repo_id)]` as bytes; every request is logged with the
Authorization header it carried. The Xet transfer path needs a CAS server, so tests disable Xet
(HF_HUB_DISABLE_XET) and the client falls back to LFS as it does for any server without Xet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".pt")
MAX_BODY = 64 * 1024 * 1024
USER = "tester"


class FakeHub:
    def __init__(self, lifetime_s: float = 300.0):
        self.repos: dict[tuple[str, str], dict[str, bytes]] = defaultdict(dict)
        self.visibility: dict[tuple[str, str], object] = {}  # as each repo was created: "private", "public" or None
        self.blobs: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.failures: dict[str, list[int]] = defaultdict(list)  # endpoint kind -> status codes to answer next
        self.unknown: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail_next(self, kind: str, *statuses: int) -> None:
        """Answer the next requests of `kind` (create, preupload, lfs_batch, lfs_put, commit) with these statuses."""
        self.failures[kind].extend(statuses)

    def attempts(self, kind: str) -> int:
        return sum(1 for r in self.requests if r["kind"] == kind)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    # -- request handling -------------------------------------------------------------------------

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _body(self) -> bytes:
                size = int(self.headers.get("Content-Length") or 0)
                if size > MAX_BODY:
                    raise ValueError("body too large")
                return self.rfile.read(size) if size else b""

            def _send(self, status: int, payload=None) -> None:
                data = json.dumps(payload if payload is not None else {"error": f"status {status}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _dispatch(self, method: str) -> None:
                path = self.path.split("?")[0]
                body = self._body()
                kind, answer = hub._route(method, path, body)
                with hub._lock:
                    hub.requests.append({"kind": kind, "method": method, "path": path, "authorization": self.headers.get("Authorization")})
                    injected = hub.failures[kind].pop(0) if hub.failures[kind] else None
                if injected is not None:
                    return self._send(injected)
                status, payload = answer()
                self._send(status, payload)

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_GET(self):
                self._dispatch("GET")

        return Handler

    def _route(self, method: str, path: str, body: bytes):
        """(kind, answer): the kind is known before answering so failures can be injected per endpoint."""
        if method == "POST" and path == "/api/repos/create":
            return "create", lambda: self._create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return "validate_yaml", lambda: self._validate_yaml(json.loads(body))
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/preupload/[^/]+", path)
        if method == "POST" and m:
            return "preupload", lambda: self._preupload(json.loads(body))
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if method == "POST" and m:
            return "lfs_batch", lambda: self._lfs_batch(json.loads(body))
        m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if method == "PUT" and m:
            return "lfs_put", lambda: self._lfs_put(m.group(1), body)
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commit/[^/]+", path)
        if method == "POST" and m:
            return "commit", lambda: self._commit(m.group(1)[:-1], m.group(2), body)
        self.unknown.append(f"{method} {path}")
        return "unknown", lambda: (404, {"error": f"fake hub: no route for {method} {path}"})

    def _create(self, payload: dict):
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        with self._lock:
            self.repos[(repo_type, repo_id)]
            self.visibility[(repo_type, repo_id)] = payload.get("visibility")
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return 200, {"url": f"{self.url}/{prefix}{repo_id}", "name": repo_id}

    def _validate_yaml(self, payload: dict):
        """The Hub checks a README's metadata before upload; this parses it with the client's own card classes."""
        from huggingface_hub import DatasetCard, ModelCard

        card_class = DatasetCard if payload.get("repoType") == "dataset" else ModelCard
        try:
            card_class(payload["content"])
        except ValueError as e:
            return 400, {"errors": [{"message": str(e)}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, payload: dict):
        files = [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular", "shouldIgnore": False}
            for f in payload["files"]
        ]
        return 200, {"files": files}

    def _lfs_batch(self, payload: dict):
        objects = [
            {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}}
            for o in payload["objects"]
        ]
        return 200, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, oid: str, body: bytes):
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "content does not match its oid"}
        with self._lock:
            self.blobs[oid] = body
        return 200, {}

    def _commit(self, repo_type: str, repo_id: str, body: bytes):
        files: dict[str, bytes] = {}
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.blobs:
                    return 400, {"error": f"LFS object {value['oid']} was never uploaded"}
                files[value["path"]] = self.blobs[value["oid"]]
        with self._lock:
            self.repos[(repo_type, repo_id)].update(files)
        oid = hashlib.sha1(body).hexdigest()
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return 200, {"commitUrl": f"{self.url}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
