"""Soprano models in the local hub cache: where it is, what is in it, checks and cleanup offline.

The cache is huggingface_hub's standard layout (read through its ``scan_cache_dir``), shared with
other programs, so listing and cleanup are limited to Soprano's models: the catalogue, or
anything ``download`` fetched (it leaves a manifest). Other programs' models are not ours to
delete. Nothing here uses the network.
"""
import time
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, scan_cache_dir
from huggingface_hub.errors import CacheNotFound
from huggingface_hub.file_download import repo_folder_name

from ..model.files import DEFAULT_MODEL_ID, MODEL_FILES
from ..model.locate import gguf_problem
from .catalogue import CATALOGUE, KNOWN
from .errors import NotCachedError
from .manifest import MANIFEST_DIR, RemoteFile, file_problem, manifest_path, read_manifest

# States of a model in the cache, as `list` and `cache` show them. partial: not a loadable file
# set (all of MODEL_FILES, or GGUF files whose headers hold a backbone and its decoder), or a
# file the manifest lists is missing or has the wrong size; verified: loadable and every file checked at download time; complete: the rest
# (e.g. fetched by another tool, or with --no-verify).
NOT_DOWNLOADED, PARTIAL, COMPLETE, VERIFIED = "not-downloaded", "partial", "complete", "verified"


@dataclass(frozen=True)
class CachedRevision:
    """One cached commit of a repo, with the state `list` reports for it."""
    repo_id: str
    commit: str
    refs: tuple
    path: Path
    files: tuple        # names relative to the snapshot, '/'-separated
    size: int
    last_modified: float
    last_accessed: float
    state: str
    soprano: bool       # a catalogue model or one fetched by `download`: ours to list and clean


@dataclass(frozen=True)
class CacheScan:
    cache_dir: Path
    size: int           # bytes on disk, blobs shared by revisions counted once
    revisions: tuple    # CachedRevision, sorted by repo id then newest first
    incomplete_size: int    # bytes in *.incomplete files left by interrupted downloads
    warnings: tuple     # repos the hub's scanner could not read, one message each


@dataclass(frozen=True)
class ModelRow:
    repo_id: str
    layout: str
    description: str
    state: str
    size: int | None
    commit: str | None
    path: str | None


def cache_root(cache_dir=None) -> Path:
    return Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve()


def repo_storage(cache: Path, repo_id: str) -> Path:
    """The repo's folder in the cache (refs/, snapshots/, blobs/ and our manifests)."""
    return cache / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_snapshot(repo_id: str, revision: str = "main", cache_dir=None) -> Path | None:
    """The snapshot directory ``revision`` (a branch or a commit) points at, or None."""
    storage = repo_storage(cache_root(cache_dir), repo_id)
    ref = storage / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def verify_cached(repo_id: str = DEFAULT_MODEL_ID, *, revision: str = "main",
                  cache_dir=None) -> tuple:
    """Check a cached model's files against the metadata recorded when they were downloaded,
    without network. Returns (snapshot path, {file name: problem or None})."""
    cache = cache_root(cache_dir)
    snapshot = cached_snapshot(repo_id, revision, cache)
    if snapshot is None:
        raise NotCachedError(f"{repo_id}@{revision} is not in the cache at {cache}; fetch it "
                             f"with `soprano-tts download {repo_id}`")
    commit = snapshot.name
    manifest = read_manifest(repo_storage(cache, repo_id), commit)
    if manifest is None:
        raise NotCachedError(
            f"{repo_id}@{commit[:12]} is cached at {snapshot} but was not fetched by "
            f"`soprano-tts download`, so no hub checksums were recorded for it; run "
            f"`soprano-tts download {repo_id}` once to check it against the hub and record them")
    results = {name: file_problem(snapshot / name, RemoteFile.from_json(name, meta))
               for name, meta in sorted(manifest["files"].items())}
    return snapshot, results


def scan_cache(cache_dir=None) -> CacheScan:
    """Every cached model revision with its size, ages and state (no network)."""
    cache = cache_root(cache_dir)
    try:
        scan = scan_cache_dir(cache)
    except CacheNotFound:
        return CacheScan(cache, 0, (), 0, ())
    revisions = []
    for repo in scan.repos:
        if repo.repo_type != "model":
            continue
        has_manifests = (repo.repo_path / MANIFEST_DIR).is_dir()
        for rev in repo.revisions:
            names = tuple(sorted(f.file_path.relative_to(rev.snapshot_path).as_posix()
                                 for f in rev.files))
            accessed = max((f.blob_last_accessed for f in rev.files),
                           default=rev.last_modified)
            revisions.append(CachedRevision(
                repo.repo_id, rev.commit_hash, tuple(sorted(rev.refs)), rev.snapshot_path,
                names, rev.size_on_disk, rev.last_modified, accessed,
                _state(repo.repo_path, rev.commit_hash, rev.snapshot_path, names),
                repo.repo_id in KNOWN or has_manifests))
    revisions.sort(key=lambda r: (r.repo_id.lower(), -r.last_modified))
    incomplete = sum(f.size_on_disk for f in scan.incomplete_files)
    return CacheScan(cache, scan.size_on_disk, tuple(revisions), incomplete,
                     tuple(str(w) for w in scan.warnings))


def _state(storage: Path, commit: str, snapshot: Path, names: tuple) -> str:
    """The revision's state (see the state constants); checks sizes, not checksums."""
    usable = set(MODEL_FILES) <= set(names) or (any(n.endswith(".gguf") for n in names)
                                                and gguf_problem(snapshot) is None)
    manifest = read_manifest(storage, commit)
    if manifest is None:
        return COMPLETE if usable else PARTIAL
    for name, meta in manifest["files"].items():
        path = snapshot / name
        if not path.is_file() or meta.get("size") not in (None, path.stat().st_size):
            return PARTIAL
    if not usable:
        return PARTIAL
    return VERIFIED if all(m.get("verified") for m in manifest["files"].values()) else COMPLETE


def list_models(cache_dir=None) -> list:
    """The catalogue plus every other Soprano model in the cache, one row per model: its
    `main` revision when cached (else the newest cached revision)."""
    scan = scan_cache(cache_dir)
    by_repo = {}
    for rev in scan.revisions:
        if rev.soprano and (rev.repo_id not in by_repo or "main" in rev.refs):
            by_repo[rev.repo_id] = rev
    rows = []
    for repo_id in [m.repo_id for m in CATALOGUE] + sorted(set(by_repo) - set(KNOWN)):
        known, rev = KNOWN.get(repo_id), by_repo.get(repo_id)
        if rev is None:
            rows.append(ModelRow(repo_id, known.layout, known.description, NOT_DOWNLOADED,
                                 None, None, None))
            continue
        layout = known.layout if known else (
            "gguf" if any(n.endswith(".gguf") for n in rev.files) else "safetensors")
        rows.append(ModelRow(repo_id, layout, known.description if known else "in the cache",
                             rev.state, rev.size, rev.commit, str(rev.path)))
    return rows


def cleanup(max_age_days: float, *, cache_dir=None, repo_id: str | None = None,
            now: float | None = None) -> list:
    """Delete Soprano model revisions not used (read or written) for ``max_age_days``, through
    the hub's cache API; ``repo_id`` limits it to one model. Returns the deleted revisions."""
    now = time.time() if now is None else now
    cutoff = now - max_age_days * 86400
    stale = [rev for rev in scan_cache(cache_dir).revisions
             if rev.soprano and (repo_id is None or rev.repo_id == repo_id)
             and max(rev.last_accessed, rev.last_modified) < cutoff]
    if not stale:
        return []
    cache = cache_root(cache_dir)
    scan_cache_dir(cache).delete_revisions(*(r.commit for r in stale)).execute()
    for rev in stale:  # a repo folder that survives keeps its other revisions' manifests only
        manifest_path(repo_storage(cache, rev.repo_id), rev.commit).unlink(missing_ok=True)
    return stale
