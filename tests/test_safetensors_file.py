"""SafetensorsFile: the tensors safetensors itself reads, read into memory of our own (the file
is not left mapped), and a malformed file refused with its name and what is wrong."""
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from soprano import SopranoTTS
from soprano.errors import ModelFileError
from soprano.model.safetensors_file import SafetensorsFile


@pytest.fixture
def tensors():
    gen = torch.Generator().manual_seed(3)
    return {"f32": torch.randn(3, 5, generator=gen), "f16": torch.randn(7, generator=gen).half(),
            "bf16": torch.randn(2, 2, 4, generator=gen).bfloat16(),
            "i64": torch.arange(-4, 5), "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
            "mask": torch.tensor([True, False, True]), "empty": torch.zeros(0, 3),
            "scalar": torch.tensor(2.5)}


def test_reads_what_safetensors_reads(tmp_path, tensors):
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours, theirs = SafetensorsFile(path), load_file(str(path))
    assert sorted(ours) == sorted(theirs) and len(ours) == len(tensors)
    for name, want in theirs.items():
        assert name in ours and ours.shape(name) == tuple(want.shape)
        got = ours[name]
        assert got.dtype == want.dtype and torch.equal(got, want), name
        got.zero_()  # memory of its own: the next read is the file's again
        assert torch.equal(ours[name], want), name
    assert "__metadata__" not in ours and ours.shape("missing") is None


def _maps() -> str:
    return Path(f"/proc/{os.getpid()}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_a_loaded_model_does_not_keep_its_safetensors_file_mapped(tiny_ckpt):
    """The loader fuses q|k|v and gate|up into new tensors: with the file mapped, the pages of
    the parts stayed in the process beside the copies."""
    tts = SopranoTTS(tiny_ckpt, device="cpu")
    path = str(Path(tiny_ckpt).resolve() / "model.safetensors")
    assert path not in _maps()
    assert tts.infer("Hello.", max_new_tokens=4).size > 0


def _write(path: Path, header, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize("header,data,match", [
    (b"{not json", b"", r"not a readable safetensors file \(.*\); it may be truncated"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4,
     r"not a readable safetensors file \(tensor 'a' ends at byte 8 of the data, which has 4\)"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8,
     r"tensor 'a': F32 \[3\] does not fit its bytes 0..8"),
    ({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, b"\0" * 8,
     r"tensor 'a' needs dtype, shape and data_offsets"),
    ({"a": {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 4]}}, b"\0" * 4,
     r"tensor 'a': dtype must be a name, shape a list of sizes and data_offsets two integers"),
    ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
     r"tensor 'a': dtype must be a name"),
    ({"a": {"dtype": "F32", "shape": "12", "data_offsets": [0, 8]}}, b"\0" * 8,
     r"tensor 'a': dtype must be a name"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}', b"\0" * 4,
     r"tensor 'a': dtype must be a name"),
    (b"[" * 100000 + b"]" * 100000, b"", r"not a readable safetensors file"),
    ([1, 2], b"", r"not a readable safetensors file \(its header is not a JSON object\)"),
])
def test_a_malformed_file_is_named_with_what_is_wrong(tmp_path, header, data, match):
    path = _write(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ModelFileError, match=r"bad\.safetensors: " + match):
        SafetensorsFile(path)


def test_a_file_shorter_than_its_header_length_is_named(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x10\0\0")
    with pytest.raises(ModelFileError, match=r"short\.safetensors: not a readable safetensors "
                                             r"file \(shorter than its 8-byte header length\)"):
        SafetensorsFile(path)
    path.write_bytes((1 << 40).to_bytes(8, "little"))
    with pytest.raises(ModelFileError, match=r"a header of 1099511627776 bytes"):
        SafetensorsFile(path)


def test_a_tensor_of_a_dtype_it_lacks_is_refused_only_when_read(tmp_path):
    path = _write(tmp_path / "odd.safetensors",
                  {"odd": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]},
                   "ok": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
                  b"\0" * 8 + b"\0\0\x80\x3f")
    f = SafetensorsFile(path)
    assert f["ok"].tolist() == [1.0] and f.shape("odd") == (1,)
    with pytest.raises(ModelFileError, match=r"odd\.safetensors: tensor 'odd': dtype 'C64' is "
                                             r"not supported"):
        f["odd"]
