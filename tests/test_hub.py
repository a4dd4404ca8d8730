"""soprano.hub, and the loader fetching through it, against a real HTTP server on 127.0.0.1 that
answers like the model hub.

The fake hub (``fake_hub.py``, shared with test_cli_download.py) serves the endpoints
huggingface_hub uses for a download; knobs make it fail, stall or corrupt on purpose.
"""
import functools
import os
import time
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, scan_cache_dir

from fake_hub import REPO, FakeHub, sha256, tiny_checkpoint
from soprano import hub
from soprano.errors import ModelNotFoundError
from soprano.model.files import MODEL_FILES
from soprano.model.resolve import resolve_model_dir

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


def test_a_name_that_does_not_resolve_fails_at_once(tmp_path, monkeypatch):
    """No DNS means no network here: retrying with backoff would only make the user wait."""
    import socket

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    start = time.monotonic()
    with pytest.raises(hub.HubUnreachableError,
                       match=r"cannot be reached \(ConnectError.*--model-path") as e:
        hub.download(REPO, endpoint="http://hub.example", cache_dir=tmp_path, retries=3,
                     progress=False)
    assert time.monotonic() - start < 1.0
    assert "\n" not in str(e.value)
