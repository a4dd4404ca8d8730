"""What each downloaded file should be, whether it is, and the record that lets us check later.

The hub's file metadata (sha256 of LFS files, git blob sha1 of small files, sizes) is only
available online, so ``download`` writes what it checked to
``<repo folder>/soprano-manifests/<commit>.json``; ``verify_cached`` and the cache states read
it back without network. The manifest sits inside the repo folder so it is deleted with it.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MANIFEST_DIR = "soprano-manifests"


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


def record(storage: Path, repo_id: str, revision: str, commit: str, endpoint: str,
           remote: RemoteFile, verified: bool) -> None:
    """Add one file's hub metadata to the commit's manifest (written atomically)."""
    manifest = read_manifest(storage, commit) or {
        "format": 1, "repo_id": repo_id, "commit": commit, "files": {}}
    manifest.update(revision=revision, endpoint=endpoint,
                    updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest["files"][remote.name] = dict(remote.to_json(), verified=verified)
    path = manifest_path(storage, commit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_manifest(storage: Path, commit: str) -> dict | None:
    try:
        return json.loads(manifest_path(storage, commit).read_text())
    except (OSError, ValueError):
        return None


def manifest_path(storage: Path, commit: str) -> Path:
    return storage / MANIFEST_DIR / f"{commit}.json"
