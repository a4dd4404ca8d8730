"""A state dict saved by ``torch.save`` (the published ``decoder.pth``), read into numpy without
torch, for the torch-free engine.

The file is a zip: ``<name>/data.pkl`` pickles the dict, each tensor a call to
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storage is a
persistent id ``('storage', <torch.XStorage>, key, location, numel)`` naming the entry
``<name>/data/<key>`` that holds its bytes. The unpickler here resolves exactly those names and
refuses every other one, so, like ``torch.load(weights_only=True)``, it runs no code of the
file's. Tensors are read one at a time, each once, into memory the caller may give (the whole
dict held in memory beside the loader's copies had a 121 MB fp32 decoder take 230 MB).
"""
import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelFileError

# storage class -> the numpy dtype of its elements (bf16 as its bits)
_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16,
             "BFloat16Storage": np.uint16, "DoubleStorage": np.float64}
# numpy dtype -> the GGUF/safetensors name the torch-free loader goes by
TYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
              np.dtype(np.uint16): "BF16", np.dtype(np.float64): "F64"}


class _Storage:
    """A storage named by the pickle: the archive entry holding its elements, read on demand."""

    def __init__(self, archive: zipfile.ZipFile, entry: str, dtype):
        self.archive, self.entry, self.dtype = archive, entry, np.dtype(dtype)


class LazyTensor:
    """A tensor of the state dict, not read yet: ``read()`` reads its storage's bytes (straight
    into ``out`` when it is the whole storage in order, as in a saved state dict)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset = storage, offset
        self.shape, self.stride = tuple(size), tuple(stride)
        self.dtype = storage.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor, contiguous, in ``out`` (uint8 of its bytes) or a new array."""
        out = np.empty(self.nbytes, np.uint8) if out is None else out
        result = out.view(self.dtype).reshape(self.shape)
        info = self.storage.archive.getinfo(self.storage.entry)
        dense = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        if self.offset == 0 and info.file_size == self.nbytes and (
                self.stride == dense or self.nbytes == 0):
            with self.storage.archive.open(info) as f:
                if f.readinto(out) != self.nbytes:
                    raise ValueError(f"storage {self.storage.entry} is truncated")
            return result
        data = np.frombuffer(self.storage.archive.read(info), self.dtype)
        span = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1
        if min(self.shape, default=1) > 0 and span > data.size:
            raise ValueError(f"a tensor of size {self.shape} runs past its storage")
        result[...] = np.lib.stride_tricks.as_strided(
            data[self.offset:], self.shape, tuple(s * data.itemsize for s in self.stride))
        return result


def _rebuild_tensor(storage, offset, size, stride, *_):
    return LazyTensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGES:
            return name
        raise pickle.UnpicklingError(f"'{module}.{name}' is not part of a plain state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and pid[1] in _STORAGES):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return _Storage(self.archive, f"{self.prefix}/data/{pid[2]}", _STORAGES[pid[1]])


class StateDictFile:
    """The tensors of a state dict ``torch.save`` wrote to ``path``, by name, each read when
    asked (``LazyTensor``); a file that is not one is a ModelFileError naming it."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(self.path, "file is missing")
        try:
            self.archive = zipfile.ZipFile(self.path)
            pickles = [n for n in self.archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError("no single data.pkl in the archive")
            with self.archive.open(pickles[0]) as f:
                sd = _Unpickler(f, self.archive, pickles[0][:-len("/data.pkl")]).load()
        except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, KeyError, EOFError,
                TypeError, OSError) as e:
            raise ModelFileError(self.path, f"not a readable decoder state dict ({e})") from e
        if not isinstance(sd, dict) or not all(isinstance(v, LazyTensor) for v in sd.values()):
            raise ModelFileError(self.path, f"expected a state dict of tensors, found "
                                            f"{type(sd).__name__}")
        self.tensors: dict[str, LazyTensor] = dict(sd)

    def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        try:
            return self.tensors[name].read(out)
        except (KeyError, ValueError, zipfile.BadZipFile, OSError) as e:
            raise ModelFileError(self.path, f"tensor '{name}' cannot be read ({e})") from e


def read_state_dict(path) -> dict[str, np.ndarray]:
    """name -> array (contiguous; bf16 as uint16 bits) of every tensor of ``path``."""
    f = StateDictFile(path)
    return {name: f.read(name) for name in f.tensors}
