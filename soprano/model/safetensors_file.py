"""A safetensors file's tensors, each read on demand with plain reads into memory the process
owns, so that a loaded model holds its weights once.

The safetensors package maps the file, and a mapped page stays in the process's RSS as long as
any tensor of the file is alive. The loader fuses q|k|v and gate|up into new tensors, while the
backbone's other matrices are used as they are, so the fused matrices' source pages, touched
while copying, stayed resident beside the copies (~100 MB of a Soprano-1.1 bf16 process). It
offers no read into memory of our own without the whole file in memory at once. Read here, a
tensor's bytes pass through the page cache only; a loader that drops the parts it fuses holds
each weight once, and its peak is the model plus one layer's parts.

Format: an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets relative to the end of the header; an optional ``__metadata__``), the data,
little-endian as the hosts Soprano runs on (x86-64, ARM64). Looking a tensor up gives a torch
tensor; ``read_bytes`` gives its bytes without torch (the torch-free engine's read).
"""
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import ModelFileError

# bytes per element of each dtype this reader reads (torch's dtype: ``_torch_dtype``)
ITEMSIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
             "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


def _torch_dtype(name: str):
    import torch
    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
            "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn,
            "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
            "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32,
            "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool}[name]
# A header larger than this is not a model's: refuse it before reading it into memory.
MAX_HEADER_BYTES = 100 << 20


class SafetensorsFile(Mapping):
    """name -> tensor, read from ``path`` on each lookup (shapes and names from the header
    alone). A malformed or truncated file is a ModelFileError naming it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise ValueError("shorter than its 8-byte header length")
                n = int.from_bytes(prefix, "little")
                if n > MAX_HEADER_BYTES:
                    raise ValueError(f"a header of {n} bytes")
                raw = f.read(n)
                if len(raw) < n:
                    raise ValueError(f"the header needs {n} bytes, {len(raw)} follow")
                header = json.loads(raw)
            size = self.path.stat().st_size
        except ModelFileError:
            raise
        except (OSError, ValueError, RecursionError) as e:
            raise self._unreadable(e) from e
        if not isinstance(header, dict):
            raise self._unreadable("its header is not a JSON object")
        header.pop("__metadata__", None)
        self._data_start = 8 + n
        self._entries = {}
        for name, entry in header.items():
            self._entries[name] = self._entry(name, entry, size - self._data_start)

    def _unreadable(self, why) -> ModelFileError:
        return ModelFileError(self.path, f"not a readable safetensors file ({why}); it may be "
                                         "truncated: download it again")

    def _entry(self, name: str, entry, data_bytes: int) -> tuple:
        """(itemsize or None where the dtype is one this reader lacks, shape, offset, byte
        count, dtype name)."""
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise ModelFileError(self.path, f"tensor '{name}' needs dtype, shape and "
                                            "data_offsets")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(entry["dtype"], str) and isinstance(shape, list)
                and all(type(d) is int and d >= 0 for d in shape) and isinstance(offsets, list)
                and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ModelFileError(self.path, f"tensor '{name}': dtype must be a name, shape a "
                                            "list of sizes and data_offsets two integers")
        begin, end = offsets
        itemsize = ITEMSIZES.get(entry["dtype"])
        if not 0 <= begin <= end or (itemsize is not None
                                     and end - begin != math.prod(shape) * itemsize):
            raise ModelFileError(self.path, f"tensor '{name}': {entry['dtype']} {shape} "
                                            f"does not fit its bytes {begin}..{end}")
        if end > data_bytes:
            raise self._unreadable(f"tensor '{name}' ends at byte {end} of the data, which "
                                   f"has {data_bytes}")
        return itemsize, tuple(shape), begin, end - begin, entry["dtype"]

    def shape(self, name: str) -> tuple | None:
        entry = self._entries.get(name)
        return None if entry is None else entry[1]

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def dtype_name(self, name: str) -> str:
        return self._entries[name][4]

    def nbytes(self, name: str) -> int:
        return self._entries[name][3]

    def read_bytes(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """Tensor ``name``'s bytes, into ``out`` (uint8, its size) or a new array."""
        itemsize, shape, begin, nbytes, dtype_name = self._entries[name]
        if itemsize is None:  # refused when read, so that a file may carry tensors nobody reads
            raise ModelFileError(self.path, f"tensor '{name}': dtype {dtype_name!r} is not "
                                            "supported")
        raw = np.empty(nbytes, np.uint8) if out is None else out
        try:
            with open(self.path, "rb") as f:
                f.seek(self._data_start + begin)
                got = f.readinto(raw) if nbytes else 0
        except OSError as e:
            raise self._unreadable(e) from e
        if got != nbytes:
            raise self._unreadable(f"tensor '{name}' has {got} of its {nbytes} bytes")
        return raw

    def __getitem__(self, name: str):
        """The tensor, in memory torch allocated."""
        import torch
        _, shape, _, nbytes, dtype_name = self._entries[name]
        raw = torch.empty(nbytes, dtype=torch.uint8)
        self.read_bytes(name, raw.numpy())
        return raw.view(_torch_dtype(dtype_name)).reshape(shape)
