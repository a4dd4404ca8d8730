"""Soprano models on the Hugging Face hub and in its local cache: download, verify, list, clean up.

``download`` fetches with bounded retries and timeouts and checks every file against the hub's
checksums (``download.py``, ``retry.py``), recording them so ``verify_cached`` works offline
(``manifest.py``); ``cache.py`` finds, lists and cleans up cached models without network. The
loader and the ``download``/``list``/``cache`` commands go through these names, so a model is
fetched and checked the same way whichever asks for it.

Out of scope: the command line (it prints what these functions return), loading a model
(``soprano.model.loader``), uploads, login.
"""
from ..model.files import DEFAULT_MODEL_ID
from .cache import (COMPLETE, NOT_DOWNLOADED, PARTIAL, VERIFIED, CachedRevision, CacheScan,
                    ModelRow, cache_root, cached_snapshot, cleanup, list_models, scan_cache,
                    verify_cached)
from .catalogue import CATALOGUE, KnownModel
from .download import DownloadResult, download
from .errors import DownloadError, HubUnreachableError, NotCachedError, VerificationError
from .manifest import MANIFEST_DIR, RemoteFile, file_problem

__all__ = [
    "CATALOGUE", "COMPLETE", "DEFAULT_MODEL_ID", "MANIFEST_DIR", "NOT_DOWNLOADED", "PARTIAL",
    "VERIFIED", "CacheScan", "CachedRevision", "DownloadError", "DownloadResult",
    "HubUnreachableError", "KnownModel", "ModelRow", "NotCachedError", "RemoteFile",
    "VerificationError", "cache_root", "cached_snapshot", "cleanup", "download",
    "file_problem", "list_models", "scan_cache", "verify_cached",
]
