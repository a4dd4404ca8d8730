"""Soprano models on the Hugging Face hub and in its local cache: download, verify, list, clean up.

Why this exists: ``snapshot_download`` alone gives no bounded retries, no checksums and no record
of what was checked. Here each file is fetched with ``hf_hub_download`` (so it lands in the
standard cache layout that ``resolve_model_dir``, ``hf`` and ``scan_cache_dir`` read), retried
with exponential backoff on transient failures, checked against the hub's file metadata (sha256
of LFS files, git blob sha1 of small files, sizes), and recorded in a manifest,
``<repo folder>/soprano-manifests/<commit>.json``, so ``verify_cached`` works without network.
A file that fails its check is removed again through the cache API, and ``refs/<revision>`` is
written only once every file checked out, so the loader never picks a half-fetched snapshot.
Listing and cleanup are limited to Soprano's models (the catalogue, or anything fetched by
``download``): the hub cache is shared with other programs, whose models are not ours to delete.

Out of scope: the command line (``soprano/cli/download.py``, ``list_models.py``, ``cache.py``
print what these functions return), loading a model (``model/loader.py``), uploads, login.
"""
import fnmatch
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors are the transient ones
from huggingface_hub import HfApi, constants, hf_hub_download, scan_cache_dir
from huggingface_hub.errors import CacheNotFound, HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import tqdm as hf_tqdm

from .errors import SopranoError
from .model.files import DEFAULT_MODEL_ID, MODEL_FILES

logger = logging.getLogger(__name__)

MANIFEST_DIR = "soprano-manifests"
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
MAX_BACKOFF_S = 60.0
_NO_NETWORK_HINT = ("without network, copy a hub cache holding the model from another machine "
                    "and point --cache-dir at it, or give serve/generate a local model "
                    "directory with --model-path")

# States of a model in the cache, as `list` and `cache` show them. partial: not a loadable file
# set (all of MODEL_FILES, or a .gguf), or a file the manifest lists is missing or has the
# wrong size; verified: loadable and every file checked at download time; complete: the rest
# (e.g. fetched by another tool, or with --no-verify).
NOT_DOWNLOADED, PARTIAL, COMPLETE, VERIFIED = "not-downloaded", "partial", "complete", "verified"


class HubUnreachableError(SopranoError):
    """The hub (or the --hf-endpoint mirror) did not answer, after all retries."""


class DownloadError(SopranoError):
    """The hub answered, but not with what was asked for (no such repo, revision or file)."""


class VerificationError(SopranoError):
    """A file's size or checksum differs from the hub's metadata."""


class NotCachedError(SopranoError):
    """The model, or the metadata needed to check it offline, is not in the cache."""


@dataclass(frozen=True)
class KnownModel:
    repo_id: str
    layout: str         # "safetensors" (the published HF layout) or "gguf"
    description: str
    patterns: tuple     # files `download` fetches when --files is not given


_HF_LAYOUT = tuple(MODEL_FILES) + ("*.json",)  # what resolve_model_dir fetches, no more
CATALOGUE = (
    KnownModel("ekwek/Soprano-1.1-80M", "safetensors", "Soprano 1.1, 80M parameters (default)",
               _HF_LAYOUT),
    KnownModel("ekwek/Soprano-80M", "safetensors", "Soprano 1.0, 80M parameters (D=512 decoder)",
               _HF_LAYOUT),
    KnownModel("WalkingCat/Soprano-1.1-80M-GGUF", "gguf",
               "community GGUF conversion of Soprano 1.1 (audio.cpp)", ("*.gguf",)),
    KnownModel("hans00/Soprano-1.1-80M-GGUF", "gguf",
               "community GGUF conversion of Soprano 1.1 (backbone + codec files)", ("*.gguf",)),
)
_KNOWN = {m.repo_id: m for m in CATALOGUE}


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub describes it: LFS files carry a sha256, small files their git blob id."""
    name: str
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None

    @classmethod
    def from_sibling(cls, sibling) -> "RemoteFile":
        if sibling.lfs is not None:
            return cls(sibling.rfilename, sibling.lfs.size, sha256=sibling.lfs.sha256)
        return cls(sibling.rfilename, sibling.size, git_sha1=sibling.blob_id)

    @classmethod
    def from_json(cls, name: str, meta: dict) -> "RemoteFile":
        return cls(name, meta.get("size"), meta.get("sha256"), meta.get("git_sha1"))

    def to_json(self) -> dict:
        keys = ("size", "sha256", "git_sha1")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class DownloadResult:
    repo_id: str
    commit: str
    path: Path          # the snapshot directory, usable as a --model-path
    files: tuple
    size: int
    verified: bool


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


def _storage(cache: Path, repo_id: str) -> Path:
    return cache / repo_folder_name(repo_id=repo_id, repo_type="model")


# ---- download ------------------------------------------------------------------------------

class _NoProgress(hf_tqdm):
    """huggingface_hub's bar, always off: its own switch is process-wide, this is per call."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


@contextmanager
def _download_timeout(seconds: float):
    """huggingface_hub reads the file-transfer timeout from this constant at each request and
    takes no argument for it, so set it for the length of one download only."""
    old = constants.HF_HUB_DOWNLOAD_TIMEOUT
    constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds
    try:
        yield
    finally:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = old


def _is_transient(error: BaseException | None) -> bool:
    """Network trouble and 5xx/429 answers are worth another try; a 404 is not. The hub wraps
    some of them (a failed file lookup becomes LocalEntryNotFoundError), so follow the causes."""
    while error is not None:
        if isinstance(error, httpx2.TransportError):
            return True
        if isinstance(error, HfHubHTTPError) and error.response is not None \
                and error.response.status_code in TRANSIENT_STATUS:
            return True
        error = error.__cause__
    return False


def _reason(error: BaseException) -> str:
    """One line saying what went wrong: the HTTP answer or network error itself, found under
    the hub's wrappers (a failed lookup is re-raised as LocalEntryNotFoundError from it)."""
    while error.__cause__ is not None and not isinstance(
            error, (HfHubHTTPError, httpx2.TransportError)):
        error = error.__cause__
    text = " ".join(str(error).split()) or "no details"
    if len(text) > 300:  # the hub's messages go on with advice that does not apply here
        text = text[:300].rsplit(". ", 1)[0] + "."
    return f"{type(error).__name__}: {text}"


def _with_retries(what: str, call, retries: int, backoff: float, endpoint: str):
    """Run ``call``, retrying transient failures ``retries`` times, waiting backoff * 2**n."""
    for attempt in range(retries + 1):
        try:
            return call()
        except OfflineModeIsEnabled as e:
            raise HubUnreachableError(f"{what}: HF_HUB_OFFLINE is set, so the hub is not "
                                      f"asked; unset it to download, or {_NO_NETWORK_HINT}") from e
        except Exception as e:  # classified here; anything not transient goes up unchanged
            if not _is_transient(e):
                raise
            if attempt == retries:
                raise HubUnreachableError(
                    f"{what}: the hub at {endpoint} failed {retries + 1} attempt(s) "
                    f"({_reason(e)}). Check the network and --hf-endpoint; "
                    f"{_NO_NETWORK_HINT}") from e
            delay = min(backoff * 2 ** attempt, MAX_BACKOFF_S)
            logger.warning("%s failed (%s); retry %d/%d in %.1f s",
                           what, _reason(e), attempt + 1, retries, delay)
            time.sleep(delay)


def download(repo_id: str = DEFAULT_MODEL_ID, *, revision: str = "main", cache_dir=None,
             files=None, endpoint: str | None = None, retries: int = 3, timeout: float = 300.0,
             progress: bool = True, verify: bool = True, backoff: float = 1.0) -> DownloadResult:
    """Fetch ``repo_id`` at ``revision`` into the hub cache, checking each file as it lands.

    ``files``: names or glob patterns (default: the catalogue's files for known models, else
    every file). ``timeout``: seconds each request may wait for the server. A file that fails
    its check is deleted from the cache and VerificationError names it; a cached file that fails
    is fetched once more first (the copy on disk was damaged, not necessarily the hub's).
    """
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    cache = cache_root(cache_dir)
    api = HfApi(endpoint=endpoint)
    try:
        info = _with_retries(
            f"looking up {repo_id}",
            lambda: api.model_info(repo_id, revision=revision, files_metadata=True,
                                   timeout=timeout),
            retries, backoff, endpoint)
    except OSError as e:  # the hub's HTTP and metadata errors; their text spans lines
        raise DownloadError(f"{repo_id}@{revision}: the hub at {endpoint} says: "
                            f"{_reason(e)}") from e
    remote = {s.rfilename: RemoteFile.from_sibling(s) for s in info.siblings or ()}
    names = _select(repo_id, remote, files)
    storage = _storage(cache, repo_id)
    snapshot = storage / "snapshots" / info.sha

    def fetch(name):
        try:
            return Path(_with_retries(
                f"fetching {repo_id}/{name}",
                lambda: hf_hub_download(repo_id, name, revision=info.sha, cache_dir=cache,
                                        endpoint=endpoint, etag_timeout=timeout,
                                        tqdm_class=None if progress else _NoProgress),
                retries, backoff, endpoint))
        except OSError as e:  # a 404, a truncated transfer, a server that is not a hub
            raise DownloadError(f"{repo_id}/{name}: {_reason(e)}") from e

    with _download_timeout(timeout):
        for name in names:
            expected = remote[name]
            was_cached = (snapshot / name).is_file()
            path = fetch(name)
            problem = file_problem(path, expected) if verify else None
            if problem and was_cached:
                logger.warning("%s: the cached copy is damaged (%s); fetching it again",
                               name, problem)
                _discard(cache, repo_id, info.sha, name)
                path = fetch(name)
                problem = file_problem(path, expected)
            if problem:
                _discard(cache, repo_id, info.sha, name)
                raise VerificationError(
                    f"{name} from {repo_id}@{info.sha[:12]}: {problem}; the file was removed "
                    "from the cache again. Retry the download; if it fails the same way, the "
                    "file on the hub (or the mirror) is broken")
            _record(storage, repo_id, revision, info.sha, endpoint, expected, verify)
            logger.info("%s: %d bytes%s", name, path.stat().st_size,
                        ", checked against the hub's metadata" if verify else "")
    _write_ref(storage, revision, info.sha)
    return DownloadResult(repo_id, info.sha, snapshot, tuple(names),
                          sum(remote[n].size or 0 for n in names), verify)


def _select(repo_id: str, remote: dict, files) -> list:
    if files:
        patterns, explicit = files, True
    elif repo_id in _KNOWN:
        patterns, explicit = _KNOWN[repo_id].patterns, False
    else:
        return sorted(remote)
    chosen = []
    for pattern in patterns:
        matches = sorted(fnmatch.filter(remote, pattern))
        if explicit and not matches:
            raise DownloadError(f"{repo_id} has no file matching '{pattern}' "
                                f"(it has: {', '.join(sorted(remote))})")
        chosen += [m for m in matches if m not in chosen]
    if not chosen:
        raise DownloadError(f"{repo_id} holds none of {', '.join(patterns)}; pass --files")
    return chosen


def file_problem(path: Path, expected: RemoteFile) -> str | None:
    """What is wrong with ``path`` compared with the hub's metadata, or None when it matches."""
    if not path.is_file():
        return "file is missing"
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"size is {size} bytes, the hub says {expected.size}"
    if expected.sha256:
        digest = _hash_file(path, hashlib.sha256())
        if digest != expected.sha256:
            return f"sha256 is {digest}, the hub says {expected.sha256}"
    elif expected.git_sha1:
        # A git blob id is sha1 over "blob <size>\0" + content: what the hub lists for
        # files that are not in LFS.
        digest = _hash_file(path, hashlib.sha1(f"blob {size}\0".encode()))
        if digest != expected.git_sha1:
            return f"git blob sha1 is {digest}, the hub says {expected.git_sha1}"
    else:
        return "the hub gave no checksum for it (use --no-verify to accept it unchecked)"
    return None


def _hash_file(path: Path, hasher) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _discard(cache: Path, repo_id: str, commit: str, name: str) -> None:
    """Delete one file's snapshot entry and blob through the hub's cache API; when the snapshot
    is left empty, delete the revision too, so no half-written revision stays behind."""
    scan = scan_cache_dir(cache)
    revision = _find_revision(scan, repo_id, commit)
    if revision is None:
        return
    target = revision.snapshot_path / name
    bad = [f for f in revision.files if f.file_path == target]
    scan.delete_files(*bad).execute()
    if len(bad) == len(revision.files):
        scan_cache_dir(cache).delete_revisions(commit).execute()


def _find_revision(scan, repo_id: str, commit: str):
    for repo in scan.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            for revision in repo.revisions:
                if revision.commit_hash == commit:
                    return revision
    return None


def _record(storage: Path, repo_id: str, revision: str, commit: str, endpoint: str,
            remote: RemoteFile, verified: bool) -> None:
    """Add one file's hub metadata to the commit's manifest (written atomically)."""
    manifest = _read_manifest(storage, commit) or {
        "format": 1, "repo_id": repo_id, "commit": commit, "files": {}}
    manifest.update(revision=revision, endpoint=endpoint,
                    updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest["files"][remote.name] = dict(remote.to_json(), verified=verified)
    path = storage / MANIFEST_DIR / f"{commit}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_manifest(storage: Path, commit: str) -> dict | None:
    try:
        return json.loads((storage / MANIFEST_DIR / f"{commit}.json").read_text())
    except (OSError, ValueError):
        return None


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    """Point refs/<revision> at the commit, as hf_hub_download would have: it only does so
    when given a branch name, and we pass the commit so every file comes from one commit."""
    if revision == commit:
        return
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = storage / f".ref.{os.getpid()}.tmp"  # outside refs/, which the scanner reads whole
    tmp.write_text(commit)
    os.replace(tmp, ref)


# ---- offline verification -----------------------------------------------------------------

def verify_cached(repo_id: str = DEFAULT_MODEL_ID, *, revision: str = "main",
                  cache_dir=None) -> tuple:
    """Check a cached model's files against the metadata recorded when they were downloaded,
    without network. Returns (snapshot path, {file name: problem or None})."""
    cache = cache_root(cache_dir)
    storage = _storage(cache, repo_id)
    ref = storage / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        raise NotCachedError(f"{repo_id}@{revision} is not in the cache at {cache}; fetch it "
                             f"with `soprano-tts download {repo_id}`")
    manifest = _read_manifest(storage, commit)
    if manifest is None:
        raise NotCachedError(
            f"{repo_id}@{commit[:12]} is cached at {snapshot} but was not fetched by "
            f"`soprano-tts download`, so no hub checksums were recorded for it; run "
            f"`soprano-tts download {repo_id}` once to check it against the hub and record them")
    results = {name: file_problem(snapshot / name, RemoteFile.from_json(name, meta))
               for name, meta in sorted(manifest["files"].items())}
    return snapshot, results


# ---- listing --------------------------------------------------------------------------------

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
                repo.repo_id in _KNOWN or has_manifests))
    revisions.sort(key=lambda r: (r.repo_id.lower(), -r.last_modified))
    incomplete = sum(f.size_on_disk for f in scan.incomplete_files)
    return CacheScan(cache, scan.size_on_disk, tuple(revisions), incomplete,
                     tuple(str(w) for w in scan.warnings))


def _state(storage: Path, commit: str, snapshot: Path, names: tuple) -> str:
    """The revision's state (see the state constants); checks sizes, not checksums."""
    usable = set(MODEL_FILES) <= set(names) or any(n.endswith(".gguf") for n in names)
    manifest = _read_manifest(storage, commit)
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
    for repo_id in [m.repo_id for m in CATALOGUE] + sorted(set(by_repo) - set(_KNOWN)):
        known, rev = _KNOWN.get(repo_id), by_repo.get(repo_id)
        if rev is None:
            rows.append(ModelRow(repo_id, known.layout, known.description, NOT_DOWNLOADED,
                                 None, None, None))
            continue
        layout = known.layout if known else (
            "gguf" if any(n.endswith(".gguf") for n in rev.files) else "safetensors")
        rows.append(ModelRow(repo_id, layout, known.description if known else "in the cache",
                             rev.state, rev.size, rev.commit, str(rev.path)))
    return rows


# ---- cleanup --------------------------------------------------------------------------------

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
        (_storage(cache, rev.repo_id) / MANIFEST_DIR / f"{rev.commit}.json").unlink(
            missing_ok=True)
    return stale
