"""Fetch a model from the hub into the local cache, checking every file as it lands.

``snapshot_download`` alone gives no bounded retries, no checksums and no record of what was
checked. Here each file is fetched with ``hf_hub_download`` (so it lands in the standard cache
layout that the loader, ``hf`` and ``scan_cache_dir`` read), retried on transient failures,
checked against the hub's file metadata and recorded in the manifest. A file that fails its
check is removed again through the cache API, and ``refs/<revision>`` is written only once every
file checked out, so the loader never picks a half-fetched snapshot.
"""
import fnmatch
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download, scan_cache_dir
from huggingface_hub.utils import tqdm as hf_tqdm

from ..model.files import DEFAULT_MODEL_ID
from .cache import cache_root, repo_storage
from .catalogue import KNOWN
from .errors import DownloadError, VerificationError
from .manifest import RemoteFile, file_problem, record
from .retry import reason, with_retries

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadResult:
    repo_id: str
    commit: str
    path: Path          # the snapshot directory, usable as a --model-path
    files: tuple
    size: int
    verified: bool


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
        info = with_retries(
            f"looking up {repo_id}",
            lambda: api.model_info(repo_id, revision=revision, files_metadata=True,
                                   timeout=timeout),
            retries, backoff, endpoint)
    except OSError as e:  # the hub's HTTP and metadata errors; their text spans lines
        raise DownloadError(f"{repo_id}@{revision}: the hub at {endpoint} says: "
                            f"{reason(e)}") from e
    remote = {s.rfilename: RemoteFile.from_sibling(s) for s in info.siblings or ()}
    names = _select(repo_id, remote, files)
    storage = repo_storage(cache, repo_id)
    snapshot = storage / "snapshots" / info.sha

    def fetch(name):
        try:
            return Path(with_retries(
                f"fetching {repo_id}/{name}",
                lambda: hf_hub_download(repo_id, name, revision=info.sha, cache_dir=cache,
                                        endpoint=endpoint, etag_timeout=timeout,
                                        tqdm_class=None if progress else _NoProgress),
                retries, backoff, endpoint))
        except OSError as e:  # a 404, a truncated transfer, a server that is not a hub
            raise DownloadError(f"{repo_id}/{name}: {reason(e)}") from e

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
            record(storage, repo_id, revision, info.sha, endpoint, expected, verify)
            logger.info("%s: %d bytes%s", name, path.stat().st_size,
                        ", checked against the hub's metadata" if verify else "")
    _write_ref(storage, revision, info.sha)
    return DownloadResult(repo_id, info.sha, snapshot, tuple(names),
                          sum(remote[n].size or 0 for n in names), verify)


def _select(repo_id: str, remote: dict, files) -> list:
    if files:
        patterns, explicit = files, True
    elif repo_id in KNOWN:
        patterns, explicit = KNOWN[repo_id].patterns, False
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
