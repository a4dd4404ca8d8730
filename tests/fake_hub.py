"""A fake Hugging Face hub on 127.0.0.1, for the download tests (test_hub.py,
test_cli_download.py).

Plain helper code, not a test module. ``FakeHub`` serves the endpoints huggingface_hub uses for
a download: the model-info API (``/api/models/{repo}[/revision/{rev}]``, file metadata with
``?blobs=true``) and ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``,
``ETag``; LFS files answer with a 302 to a second server (the "CDN") carrying ``X-Linked-Etag``
(the sha256) and ``X-Linked-Size``, as the real hub does. Knobs make it fail, stall or corrupt on
purpose. Files are small fakes (download never parses them).
"""
import hashlib
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO = "test-org/Soprano-Tiny"
LFS_SUFFIXES = (".safetensors", ".pth", ".gguf")


def tiny_checkpoint(seed: int = 0) -> dict:
    """A Soprano file set of ~0.5 MB: real-looking JSON, random bytes for the weight files."""
    rng = random.Random(seed)
    return {
        "config.json": json.dumps({"model_type": "qwen3", "hidden_size": 512,
                                   "num_hidden_layers": 2, "seed": seed}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "seed": seed}).encode(),
        "model.safetensors": rng.randbytes(300_000),
        "decoder.pth": rng.randbytes(200_000),
        "README.md": b"# a tiny test model\n",
    }


class FakeHub:
    """Two threaded HTTP servers (hub + CDN) over an in-memory set of repos and commits."""

    def __init__(self):
        self.refs = {}          # (repo_id, branch) -> commit
        self.commits = {}       # commit -> {file name: bytes}
        self.repo_of = {}       # commit -> repo id
        self.log = []           # (time, method, path)
        self.fail_first = 0     # answer this many requests (any) with fail_status
        self.fail_status = 503
        self.stall_api = 0      # stall this many model-info requests: never answer them
        self.stall_body = 0     # stall this many file transfers halfway through the body
        self.corrupt = set()    # file names served with one byte flipped
        self.release = threading.Event()  # lets stalled handler threads end at close()
        self.lock = threading.Lock()
        self.servers = [self._serve() for _ in range(2)]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_port}" for s in self.servers)

    def _serve(self):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server

    def close(self):
        self.release.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def add(self, repo_id: str, files: dict, branch: str = "main") -> str:
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        commit = digest.hexdigest()
        self.commits[commit] = dict(files)
        self.repo_of[commit] = repo_id
        self.refs[(repo_id, branch)] = commit
        return commit

    def commit_of(self, repo_id: str, revision: str) -> str | None:
        if self.repo_of.get(revision) == repo_id:
            return revision
        return self.refs.get((repo_id, revision))

    def requests(self, method: str | None = None, prefix: str = "") -> list:
        return [e for e in self.log if (method is None or e[1] == method)
                and e[2].startswith(prefix)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._handle(body=False)

    def do_GET(self):
        self._handle(body=True)

    def _handle(self, body: bool):
        fake: FakeHub = self.server.hub
        path = unquote(urlsplit(self.path).path)
        with fake.lock:
            fake.log.append((time.monotonic(), self.command, path))
            failing = fake.fail_first > 0
            fake.fail_first -= failing
        if failing:
            return self._reply(fake.fail_status, b"hub is having a bad day", body=body)
        if path.startswith("/api/models/"):
            return self._model_info(fake, path, body)
        if path.startswith("/cdn/"):
            return self._content(fake, path.removeprefix("/cdn/"), body)
        return self._resolve(fake, path, body)

    def _model_info(self, fake, path, body):
        repo_id, _, revision = path.removeprefix("/api/models/").partition("/revision/")
        commit = fake.commit_of(repo_id, revision or "main")
        with fake.lock:
            stall = fake.stall_api > 0
            fake.stall_api -= stall
        if stall:
            fake.release.wait(30)
            return
        if commit is None:
            return self._reply(404, b"Repository not found", body=body,
                               headers={"X-Error-Code": "RepoNotFound"})
        with_blobs = parse_qs(urlsplit(self.path).query).get("blobs") in (["true"], ["True"])
        siblings = []
        for name, data in sorted(fake.commits[commit].items()):
            entry = {"rfilename": name}
            if with_blobs:
                entry.update(size=len(data), blobId=git_sha1(data))
                if is_lfs(name):
                    entry["lfs"] = {"sha256": sha256(data), "size": len(data), "pointerSize": 134}
            siblings.append(entry)
        info = {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit,
                "private": False, "siblings": siblings}
        self._reply(200, json.dumps(info).encode(), body=body,
                    headers={"Content-Type": "application/json"})

    def _resolve(self, fake, path, body):
        repo_part, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        commit = fake.commit_of(repo_part, revision)
        if commit is None:
            return self._reply(404, b"", body=body, headers={"X-Error-Code": "RepoNotFound"})
        data = fake.commits[commit].get(name)
        if data is None:
            return self._reply(404, b"", body=body, headers={"X-Error-Code": "EntryNotFound",
                                                             "X-Repo-Commit": commit})
        if is_lfs(name):  # the hub answers LFS files with a redirect to storage elsewhere
            return self._reply(302, b"", body=body, headers={
                "Location": f"{fake.cdn_url}/cdn/{commit}/{name}", "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{sha256(data)}"', "X-Linked-Size": str(len(data)),
                "ETag": f'"{git_sha1(data)}"'})
        self._send_file(fake, name, data, body, {"X-Repo-Commit": commit,
                                                 "ETag": f'"{git_sha1(data)}"'})

    def _content(self, fake, key, body):
        commit, _, name = key.partition("/")
        data = fake.commits.get(commit, {}).get(name)
        if data is None:
            return self._reply(404, b"", body=body)
        self._send_file(fake, name, data, body, {"ETag": f'"{sha256(data)}"'})

    def _send_file(self, fake, name, data, body, headers):
        headers["Content-Disposition"] = f'inline; filename="{name.rsplit("/", 1)[-1]}";'
        if name in fake.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        with fake.lock:
            stall = body and fake.stall_body > 0
            fake.stall_body -= stall
        if not stall:
            return self._reply(200, data, body=body, headers=headers)
        self.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.wfile.flush()
        fake.release.wait(30)

    def _reply(self, status, payload: bytes, body: bool, headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)
