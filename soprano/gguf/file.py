"""One GGUF file opened for reading, with every problem reported as a ``ModelFileError``.

PyPI ``gguf``'s ``GGUFReader`` memory-maps the file and parses its header, but a bad file
surfaces as a bare ``ValueError`` from deep inside numpy (a truncated file fails a reshape, an
unknown tensor type fails an enum lookup). ``GGUFFile`` checks what the reader leaves implicit
(the magic, each tensor's type and that its bytes lie inside the file, types we can read) before
handing out metadata and tensors, so a user sees the file and the problem in one line.
"""
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFileError

GGUF_MAGIC = b"GGUF"
# Weight types soprano-tts reads: 32/16-bit floats and the quantizations it dequantizes.
READABLE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                  "Q4_K", "Q5_K", "Q6_K")


@dataclass(frozen=True)
class GGUFTensor:
    """A tensor as stored: ``shape`` in torch order (ggml lists dimensions fastest first),
    ``data`` the memory-mapped bytes (floats for F32/F16, raw blocks otherwise), which start at
    byte ``offset`` of the file."""
    name: str
    type_name: str
    shape: tuple[int, ...]
    data: np.ndarray
    offset: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class _Problem(Exception):
    """What is wrong with a file, found while its header is parsed."""


def _checked_reader():
    """``gguf.GGUFReader`` that checks each tensor's type and extent before mapping it (the
    reader itself fails there with a numpy reshape or enum error that names nothing)."""
    import gguf

    class CheckedReader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            for field in fields:
                _, name_data, _, dims, raw_dtype, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                try:
                    qtype = gguf.GGMLQuantizationType(int(raw_dtype[0]))
                except ValueError:
                    raise _Problem(f"tensor '{name}' has type id {int(raw_dtype[0])}, unknown to "
                                   "gguf-py (a newer llama.cpp type?)") from None
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                end = int(start_offs + offset[0]) + int(np.prod(dims, dtype=np.int64)) \
                    * size // block
                if end > len(self.data):
                    raise _Problem(f"truncated: tensor '{name}' ends at byte {end}, the file "
                                   f"has {len(self.data)}; download it again")
            super()._build_tensors(start_offs, fields)

    return CheckedReader


class GGUFFile:
    """Metadata and tensors of one GGUF file; the tensors stay memory-mapped."""

    def __init__(self, path):
        import gguf
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise ModelFileError(self.path, f"cannot read: {e.strerror or e}") from e
        if magic != GGUF_MAGIC:
            raise ModelFileError(self.path, f"not a GGUF file (starts with {magic!r}, "
                                            "expected b'GGUF')")
        try:
            reader = _checked_reader()(self.path, "r")
        except _Problem as e:
            raise ModelFileError(self.path, str(e)) from None
        except (ValueError, KeyError, IndexError, TypeError, OverflowError) as e:
            raise ModelFileError(self.path, f"corrupt GGUF header ({e}); download it "
                                            "again") from e
        self.fields = reader.fields
        self.tensors: dict[str, GGUFTensor] = {}
        for t in reader.tensors:
            self.tensors[t.name] = GGUFTensor(t.name, t.tensor_type.name,
                                              tuple(int(d) for d in reversed(t.shape)), t.data,
                                              int(t.data_offset))

    @property
    def architecture(self) -> str:
        return self.get("general.architecture", str)

    def has(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, kind=None, default=...):
        """The value of metadata ``key`` (arrays as lists), checked against ``kind``: int,
        float, str, bool or list."""
        field = self.fields.get(key)
        if field is None:
            if default is not ...:
                return default
            raise ModelFileError(self.path, f"metadata key '{key}' is missing")
        value = field.contents()
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not None and not isinstance(value, kind) or (
                kind is int and isinstance(value, bool)):
            raise ModelFileError(self.path, f"metadata key '{key}' holds {value!r}, "
                                            f"expected a {kind.__name__}")
        return value

    def drop_metadata(self) -> None:
        """Free the parsed metadata once its values have been read: gguf-py keeps every array
        element as a numpy array of its own, ~20 MB for an 8192-token vocabulary. Tensors stay
        readable; ``get`` then finds nothing."""
        self.fields = {}

    def read_into(self, t: GGUFTensor, out: memoryview) -> None:
        """``t``'s bytes read into ``out`` (its size) with plain file reads: pages of the map
        that a copy touches count in the process's resident set (and its peak) until the map is
        closed, which for a whole model is as much again as its weights."""
        with open(self.path, "rb") as f:
            f.seek(t.offset)
            got = f.readinto(out)
        if got != out.nbytes:
            raise ModelFileError(self.path, f"truncated: tensor '{t.name}' ends past the end of "
                                            "the file; download it again")

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> GGUFTensor:
        """Tensor ``name``, checked for a readable type and (given) its torch-order shape;
        a shape differing only by leading/trailing 1s (ggml drops them) is accepted."""
        t = self.tensors.get(name)
        if t is None:
            raise ModelFileError(self.path, f"tensor '{name}' is missing")
        if t.type_name not in READABLE_TYPES:
            raise ModelFileError(self.path, f"tensor '{name}' has type {t.type_name}, which "
                                            f"soprano-tts does not read (it reads "
                                            f"{', '.join(READABLE_TYPES)})")
        if shape is not None and _squeezed(t.shape) != _squeezed(shape):
            raise ModelFileError(self.path, f"tensor '{name}' has shape {t.shape}, expected "
                                            f"{tuple(shape)}")
        return t


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def open_gguf(path) -> GGUFFile:
    """``GGUFFile(path)``, parsed once while the file is unchanged: finding a model's files and
    loading them read the same headers several times, and parsing one (its 8192-token
    vocabulary above all) takes ~0.15 s. ``close_gguf_files`` drops them after a load: a kept
    map would keep every page the load read resident."""
    st = os.stat(path)
    return _open_cached(os.path.realpath(path), st.st_size, st.st_mtime_ns, Path(path))


@functools.lru_cache(maxsize=4)
def _open_cached(real: str, size: int, mtime_ns: int, path: Path) -> GGUFFile:
    return GGUFFile(path)


def close_gguf_files() -> None:
    _open_cached.cache_clear()
