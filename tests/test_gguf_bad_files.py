"""Bad GGUF files: each gives one clear error naming the file and the problem, in the API and
as one line (no traceback) from the CLI."""
import re
import shutil
import subprocess

import gguf
import numpy as np
import pytest

from soprano import SopranoTTS
from soprano.errors import ModelFileError, ModelNotFoundError
from soprano.gguf.writer import convert

from gguf_files import rewrite_gguf
from helpers import CLI


@pytest.fixture(scope="module")
def good(tiny_ckpt, tmp_path_factory):
    return convert(tiny_ckpt, tmp_path_factory.mktemp("good") / "tiny.gguf", "f32")


@pytest.fixture
def model(good, tmp_path):
    """A copy of the converted tiny model: (backbone, decoder) paths in tmp_path."""
    shutil.copy(good.backbone, tmp_path / "tiny.gguf")
    shutil.copy(good.decoder, tmp_path / "mmproj-tiny.gguf")
    return tmp_path / "tiny.gguf", tmp_path / "mmproj-tiny.gguf"


def damaged(path, **changes):
    tmp = path.with_suffix(".tmp")
    rewrite_gguf(path, tmp, **changes)
    tmp.replace(path)
    return path


def cli_error(path) -> str:
    r = subprocess.run([*CLI, "generate", "-m", str(path), "--text", "Hi there.", "-o",
                        str(path.parent / "out.wav")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("soprano-tts generate: error: "), r.stderr
    return lines[-1]


def check(path, error_path, pattern, kind=ModelFileError):
    with pytest.raises(kind, match=pattern) as e:
        SopranoTTS(path, device="cpu")
    assert str(error_path) in str(e.value)
    line = cli_error(path)
    assert str(error_path) in line
    assert re.search(pattern, line)


def test_wrong_magic(model):
    backbone, _ = model
    backbone.write_bytes(b"GGML" + backbone.read_bytes()[4:])
    check(backbone, backbone, r"not a GGUF file \(starts with b'GGML', expected b'GGUF'\)")


def test_truncated(model):
    backbone, _ = model
    data = backbone.read_bytes()
    backbone.write_bytes(data[:len(data) * 2 // 3])
    check(backbone, backbone, r"truncated: tensor '[\w.]+' ends at byte \d+, the file has "
                              r"\d+; download it again")


def test_unsupported_tensor_type(model):
    backbone, _ = model
    q2k = np.zeros((512, 512 // 256 * 84), np.uint8)  # Q2_K: 84 bytes per 256 values
    damaged(backbone, replace={"blk.1.attn_q.weight": (q2k, gguf.GGMLQuantizationType.Q2_K)})
    check(backbone, backbone, r"tensor 'blk.1.attn_q.weight' has type Q2_K, which soprano-tts "
                              r"does not read \(it reads F32, F16, BF16, Q8_0")


def test_missing_tensor(model):
    _, decoder = model
    damaged(decoder, drop={"a.gen.wav.up.blk.5.gamma"})
    check(decoder.parent / "tiny.gguf", decoder,
          r"tensor for 'decoder.convnext.5.gamma' is missing")


def test_wrong_shape(model):
    backbone, _ = model
    damaged(backbone, replace={"blk.0.attn_k.weight": (np.zeros((256, 512), np.float32), None)})
    check(backbone, backbone,
          r"tensor 'blk.0.attn_k.weight' has shape \(256, 512\), expected \(128, 512\)")


def test_decoder_of_another_backbone(model):
    _, decoder = model
    damaged(decoder, replace={"a.gen.wav.input.weight": (np.zeros((768, 256), np.float32),
                                                         None)})
    check(decoder.parent / "tiny.gguf", decoder,
          r"this decoder takes hidden states of size 256 but the backbone gives 512: they are "
          r"not one model")


def test_gguf_of_another_architecture(model):
    backbone, _ = model
    damaged(backbone, arch="llama")
    check(backbone, backbone, r"a GGUF of architecture 'llama', which is neither a Soprano "
                              r"backbone \(qwen3\) nor a Soprano decoder")


def test_unknown_decoder_tensor(model):
    _, decoder = model
    damaged(decoder, add={"a.gen.wav.extra.weight": (np.zeros((4, 32), np.float32), None)})
    check(decoder.parent / "tiny.gguf", decoder, r"tensor 'a.gen.wav.extra.weight' is not part "
                                                 r"of a Soprano decoder in llama.cpp's layout")


def test_decoder_given_as_the_model(model):
    _, decoder = model
    check(decoder, decoder, r"is a decoder GGUF: pass the backbone GGUF with --model-path")


def test_backbone_without_a_decoder(model):
    backbone, decoder = model
    decoder.unlink()
    with pytest.raises(ModelNotFoundError, match="has a backbone GGUF but no decoder"):
        SopranoTTS(backbone, device="cpu")
    assert "--decoder-path" in cli_error(backbone)


def test_several_backbones_in_a_directory(model):
    backbone, _ = model
    shutil.copy(backbone, backbone.parent / "other.gguf")
    with pytest.raises(ModelNotFoundError, match=r"holds several backbone GGUFs \(other.gguf, "
                                                 r"tiny.gguf\): choose one with --model-path"):
        SopranoTTS(backbone.parent, device="cpu")
