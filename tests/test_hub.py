"""soprano.hub, and the loader fetching through it, against a real HTTP server on 127.0.0.1 that
answers like the model hub.

``FakeHub`` serves the endpoints huggingface_hub uses for a download: the model-info API
(``/api/models/{repo}[/revision/{rev}]``, file metadata with ``?blobs=true``) and
``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag``; LFS files answer
with a 302 to a second server (the "CDN") carrying ``X-Linked-Etag`` (the sha256) and
``X-Linked-Size``, as the real hub does. Knobs make it fail, stall or corrupt on purpose.
It is imported by test_cli_download.py too. Files are small fakes (download never parses them).
"""
import functools
import hashlib
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from huggingface_hub import hf_hub_download, scan_cache_dir

from soprano import hub
from soprano.errors import ModelNotFoundError
from soprano.model.files import MODEL_FILES
from soprano.model.loader import resolve_model_dir

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


@pytest.fixture
def fake_hub():
    fake = FakeHub()
    fake.add(REPO, tiny_checkpoint())
    yield fake
    fake.close()


def fetch(fake, cache, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0.05)
    kw.setdefault("timeout", 5)
    return hub.download(kw.pop("repo_id", REPO), endpoint=fake.url, cache_dir=cache, **kw)


def cached_files(cache) -> dict:
    """{(repo id, commit): sorted file names} as the hub's cache scanner sees them."""
    return {(repo.repo_id, rev.commit_hash): sorted(f.file_name for f in rev.files)
            for repo in scan_cache_dir(cache).repos for rev in repo.revisions}


def test_download_verifies_and_lands_where_the_loader_looks(fake_hub, tmp_path):
    files = tiny_checkpoint()
    result = fetch(fake_hub, tmp_path)
    assert result.verified and set(result.files) == set(files)
    assert result.size == sum(map(len, files.values()))
    for name, data in files.items():
        assert (result.path / name).read_bytes() == data
    # LFS bytes came from the "CDN" after the hub's redirect, small files from the hub itself.
    assert {p.rsplit("/", 1)[1] for _, _, p in fake_hub.requests("GET", "/cdn/")} == {
        "model.safetensors", "decoder.pth"}
    assert fake_hub.requests("GET", "/api/models/")[0][2] == f"/api/models/{REPO}/revision/main"
    assert resolve_model_dir(REPO, cache_dir=tmp_path, download=False) == result.path
    snapshot, problems = hub.verify_cached(REPO, cache_dir=tmp_path)
    assert snapshot == result.path and set(problems) == set(files)
    assert not any(problems.values())


def use_fake_hub(monkeypatch, fake):
    """Point the loader's downloads at ``fake``: it calls ``hub.download`` with the default
    endpoint, which huggingface_hub fixes at import time from $HF_ENDPOINT."""
    monkeypatch.setattr(hub, "download", functools.partial(
        hub.download, endpoint=fake.url, progress=False, backoff=0.05, timeout=5))


def test_loader_downloads_through_the_hub_then_resolves_offline(fake_hub, tiny_ckpt, tmp_path,
                                                               monkeypatch):
    files = {p.name: p.read_bytes() for p in Path(tiny_ckpt).iterdir()}
    fake_hub.add("test-org/Soprano-Written", files)
    use_fake_hub(monkeypatch, fake_hub)
    path = resolve_model_dir("test-org/Soprano-Written", cache_dir=tmp_path)
    assert path.parents[1] == tmp_path / "models--test-org--Soprano-Written"
    assert {p.name for p in path.iterdir()} == set(MODEL_FILES) | {
        n for n in files if n.endswith(".json")}
    for name in MODEL_FILES:
        assert (path / name).read_bytes() == files[name]
    _, problems = hub.verify_cached("test-org/Soprano-Written", cache_dir=tmp_path)
    assert set(MODEL_FILES) <= set(problems) and not any(problems.values())

    requests = len(fake_hub.log)
    monkeypatch.setattr(hub, "download", lambda *a, **kw: pytest.fail("cached: no download"))
    assert resolve_model_dir("test-org/Soprano-Written", cache_dir=tmp_path) == path
    assert resolve_model_dir("test-org/Soprano-Written", cache_dir=tmp_path,
                             download=False) == path
    assert len(fake_hub.log) == requests


def test_loader_errors_from_the_hub_are_one_line(fake_hub, tmp_path, monkeypatch):
    use_fake_hub(monkeypatch, fake_hub)
    with pytest.raises(ModelNotFoundError, match="soprano-tts download nobody/nothing") as err:
        resolve_model_dir("nobody/nothing", cache_dir=tmp_path)
    assert "\n" not in str(err.value) and "RepositoryNotFound" not in str(err.value)
    assert isinstance(err.value.__cause__, hub.DownloadError)
    fetch(fake_hub, tmp_path, files=["*.json"])  # a cached snapshot without the weights
    with pytest.raises(ModelNotFoundError, match="without model.safetensors, decoder.pth"):
        resolve_model_dir(REPO, cache_dir=tmp_path, download=False)


def test_files_option_picks_files_and_rejects_unknown_names(fake_hub, tmp_path):
    result = fetch(fake_hub, tmp_path, files=["*.json"])
    assert result.files == ("config.json", "tokenizer.json")
    assert hub.scan_cache(tmp_path).revisions[0].state == hub.PARTIAL  # no weights: not usable
    with pytest.raises(hub.DownloadError, match="no file matching 'nope.bin'.*config.json"):
        fetch(fake_hub, tmp_path, files=["nope.bin"])


def test_transient_errors_are_retried_with_growing_waits(fake_hub, tmp_path):
    fake_hub.fail_first = 2
    result = fetch(fake_hub, tmp_path, retries=3, backoff=0.2)
    assert result.verified
    api = [t for t, _, _ in fake_hub.requests("GET", "/api/")]
    assert len(api) == 3
    assert api[1] - api[0] >= 0.2 and api[2] - api[1] >= 0.4


def test_no_retries_fails_cleanly_and_writes_nothing(fake_hub, tmp_path):
    fake_hub.fail_first, fake_hub.fail_status = 1, 500
    with pytest.raises(hub.HubUnreachableError, match=r"failed 1 attempt\(s\).*500"):
        fetch(fake_hub, tmp_path, retries=0)
    assert len(fake_hub.log) == 1
    assert hub.scan_cache(tmp_path).revisions == ()


def test_stalled_server_times_out_within_the_timeout(fake_hub, tmp_path):
    fake_hub.stall_api = 99
    start = time.monotonic()
    with pytest.raises(hub.HubUnreachableError, match="Timeout"):
        fetch(fake_hub, tmp_path, retries=1, timeout=0.5, backoff=0.1)
    elapsed = time.monotonic() - start
    assert len(fake_hub.requests("GET", "/api/")) == 2
    assert 2 * 0.5 <= elapsed < 2 * 0.5 + 3


def test_stalled_transfer_is_resumed_after_the_timeout(fake_hub, tmp_path):
    fake_hub.stall_body = 1  # the first file body stops halfway; huggingface_hub asks again
    result = fetch(fake_hub, tmp_path, timeout=0.5)
    assert result.verified
    gets = [(t, path) for t, method, path in fake_hub.log if method == "GET"
            and not path.startswith("/api/")]
    (stalled, path), (again, same_path) = gets[0], gets[1]
    assert path == same_path
    assert 0.5 <= again - stalled < 0.5 + 3  # huggingface_hub waits 1 s before asking again


def test_corrupted_file_is_rejected_and_removed(fake_hub, tmp_path):
    fake_hub.corrupt = {"model.safetensors"}
    with pytest.raises(hub.VerificationError, match=r"model\.safetensors.*sha256"):
        fetch(fake_hub, tmp_path)
    scan = scan_cache_dir(tmp_path)
    assert not scan.incomplete_files and not scan.warnings
    for (_, _), names in cached_files(tmp_path).items():
        assert "model.safetensors" not in names
    bad_blob = sha256(tiny_checkpoint()["model.safetensors"])
    assert not list((tmp_path / "models--test-org--Soprano-Tiny").rglob(bad_blob + "*"))
    assert not list(tmp_path.rglob("refs/main"))  # the loader must not pick this snapshot up


def test_verify_cached_finds_tampering_and_download_repairs_it(fake_hub, tmp_path):
    result = fetch(fake_hub, tmp_path)
    decoder = (result.path / "decoder.pth").resolve()  # the blob behind the snapshot link
    data = bytearray(decoder.read_bytes())
    data[100] ^= 1
    decoder.write_bytes(bytes(data))
    with open(result.path / "config.json", "ab") as f:
        f.write(b" ")
    _, problems = hub.verify_cached(REPO, cache_dir=tmp_path)
    assert "sha256" in problems["decoder.pth"] and "size" in problems["config.json"]
    assert problems["model.safetensors"] is None
    assert hub.scan_cache(tmp_path).revisions[0].state == hub.PARTIAL  # config size is off
    fetch(fake_hub, tmp_path)  # damaged cached files are fetched again
    assert not any(hub.verify_cached(REPO, cache_dir=tmp_path)[1].values())


def test_verify_cached_needs_the_model_and_its_manifest(fake_hub, tmp_path):
    with pytest.raises(hub.NotCachedError, match="not in the cache.*soprano-tts download"):
        hub.verify_cached(REPO, cache_dir=tmp_path)
    for name in tiny_checkpoint():  # fetched by another tool: no checksums were recorded
        hf_hub_download(REPO, name, cache_dir=tmp_path, endpoint=fake_hub.url)
    with pytest.raises(hub.NotCachedError, match="no hub checksums were recorded"):
        hub.verify_cached(REPO, cache_dir=tmp_path)
    assert hub.scan_cache(tmp_path).revisions[0].state == hub.COMPLETE


def test_unknown_repo_is_a_one_line_error(fake_hub, tmp_path):
    with pytest.raises(hub.DownloadError, match="RepositoryNotFoundError") as err:
        fetch(fake_hub, tmp_path, repo_id="nobody/nothing")
    assert "\n" not in str(err.value)


def test_no_server_is_a_clear_error(tmp_path):
    with pytest.raises(hub.HubUnreachableError, match="ConnectError.*--cache-dir.*--model-path"):
        hub.download(REPO, endpoint="http://127.0.0.1:9", cache_dir=tmp_path, retries=0,
                     progress=False)


def age(path, days):
    """Make every blob behind a snapshot look untouched for ``days``."""
    stamp = time.time() - days * 86400
    for link in path.iterdir():
        os.utime(link.resolve(), (stamp, stamp))


def test_cleanup_removes_old_revisions_only(fake_hub, tmp_path):
    fake_hub.add(REPO, tiny_checkpoint(seed=1), branch="v1")
    old = fetch(fake_hub, tmp_path, revision="v1")
    fresh = fetch(fake_hub, tmp_path)
    other = fake_hub.add("other/model", {"README.md": b"x"})
    hf_hub_download("other/model", "README.md", revision=other, cache_dir=tmp_path,
                    endpoint=fake_hub.url)  # another program's model: never ours to delete
    age(old.path, 40)
    age(next((tmp_path / "models--other--model" / "snapshots").iterdir()), 400)
    assert hub.cleanup(30, cache_dir=tmp_path, repo_id="someone/else") == []
    removed = hub.cleanup(30, cache_dir=tmp_path)
    assert [(r.repo_id, r.commit) for r in removed] == [(REPO, old.commit)]
    assert set(cached_files(tmp_path)) == {(REPO, fresh.commit), ("other/model", other)}
    assert not (tmp_path / "models--test-org--Soprano-Tiny" / hub.MANIFEST_DIR /
                f"{old.commit}.json").exists()
    assert hub.verify_cached(REPO, cache_dir=tmp_path)[0] == fresh.path


def test_scan_and_list_report_states_sizes_and_the_catalogue(fake_hub, tmp_path):
    assert [r.state for r in hub.list_models(tmp_path)] == [hub.NOT_DOWNLOADED] * len(
        hub.CATALOGUE)
    result = fetch(fake_hub, tmp_path)
    (rev,) = hub.scan_cache(tmp_path).revisions
    assert (rev.repo_id, rev.commit, rev.refs, rev.state) == (REPO, result.commit, ("main",),
                                                              hub.VERIFIED)
    assert rev.size == result.size and rev.soprano
    rows = {r.repo_id: r for r in hub.list_models(tmp_path)}
    assert {m.repo_id for m in hub.CATALOGUE} < set(rows)
    assert rows["ekwek/Soprano-1.1-80M"].state == hub.NOT_DOWNLOADED
    assert (rows[REPO].state, rows[REPO].size, rows[REPO].layout) == (
        hub.VERIFIED, result.size, "safetensors")
    (result.path / "decoder.pth").unlink()
    assert hub.scan_cache(tmp_path).revisions[0].state == hub.PARTIAL
