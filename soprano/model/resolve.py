"""Where a model named by the user lies: a local directory or file as is, else a hub id's cached
snapshot or its download. Without torch, so that the torch-free engine and the CLI find a model
before deciding which engine loads it.
"""
import os
from pathlib import Path

from ..errors import ModelNotFoundError
from .files import MODEL_FILES

_HF_FILES = tuple(MODEL_FILES) + ("*.json",)


def _snapshot_missing(snapshot: Path | None) -> list[str]:
    """What a cached snapshot lacks to be loadable: nothing when it holds the published files
    or any GGUF (whether those load is the loader's question)."""
    if snapshot is not None and any(snapshot.rglob("*.gguf")):
        return []
    return [f for f in MODEL_FILES if snapshot is None or not (snapshot / f).is_file()]


def resolve_model_dir(model: str | os.PathLike, cache_dir=None, download: bool = True) -> Path:
    """A local directory or file (a backbone GGUF) as is; otherwise a hub id: its cached
    snapshot when that holds the model files (no network), else fetched and checked by
    ``soprano.hub`` unless ``download`` is False. Errors are one line; the hub's own error is
    their ``__cause__`` (shown by -v)."""
    path = Path(model).expanduser()
    if path.is_dir() or path.is_file():
        return path
    if str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
        raise ModelNotFoundError(
            f"model '{model}' is not a directory holding {', '.join(MODEL_FILES)} or GGUF "
            "files, not a .gguf file and not a hub id like 'ekwek/Soprano-1.1-80M'")
    from .. import hub
    from ..hub.catalogue import KNOWN
    snapshot = hub.cached_snapshot(str(model), cache_dir=cache_dir)
    missing = _snapshot_missing(snapshot)
    if not missing:
        return snapshot
    next_steps = (f"fetch it with `soprano-tts download {model}` on a connected machine and copy "
                  "that cache here (or point --cache-dir at it), or pass --model-path DIR (or "
                  "--synthetic to generate without a model)")
    where = (f"not in the local cache at {hub.cache_root(cache_dir)}" if snapshot is None
             else f"cached at {snapshot} without {', '.join(missing)}")
    if not download:
        raise ModelNotFoundError(f"model '{model}' is {where} and downloading is off; "
                                 f"{next_steps}")
    try:
        known = KNOWN.get(str(model))
        return hub.download(str(model), cache_dir=cache_dir,
                            files=list(known.patterns if known else _HF_FILES)).path
    except hub.HubUnreachableError as e:
        raise ModelNotFoundError(f"model '{model}' is {where} and the hub could not be reached "
                                 f"(-v shows why); {next_steps}") from e
    except hub.DownloadError as e:
        raise ModelNotFoundError(f"the hub did not serve model '{model}' or its files "
                                 f"(-v shows why); check the id, or {next_steps}") from e
    except hub.VerificationError as e:
        raise ModelNotFoundError(f"a file of model '{model}' failed its checksum and was "
                                 f"removed again (-v shows which); retry, or {next_steps}") from e
