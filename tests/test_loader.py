"""Loading checkpoints: both decoder variants, and clear errors for broken or missing files."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from soprano import SopranoTTS
from soprano.errors import ModelFileError, ModelNotFoundError
from soprano.model.loader import load_decoder
from soprano.model.resolve import resolve_model_dir
from soprano.ops import OpTable
from soprano.testing import write_checkpoint
from upstream import run_upstream


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_ckpt, dst)
    return dst


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json",
                                  "decoder.pth"])
def test_missing_file_is_named(ckpt_copy, name):
    (ckpt_copy / name).unlink()
    with pytest.raises(ModelFileError, match=f"{name}: file is missing"):
        SopranoTTS(ckpt_copy, device="cpu")


def test_truncated_safetensors_is_named(ckpt_copy):
    path = ckpt_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ModelFileError, match="model.safetensors: not a readable safetensors"):
        SopranoTTS(ckpt_copy, device="cpu")


def test_truncated_decoder_is_named(ckpt_copy):
    path = ckpt_copy / "decoder.pth"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ModelFileError, match="decoder.pth: not a readable decoder state dict"):
        SopranoTTS(ckpt_copy, device="cpu")


def test_wrong_shape_names_file_and_tensor(ckpt_copy):
    path = ckpt_copy / "model.safetensors"
    sd = load_file(str(path))
    sd["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(256, 512)
    save_file(sd, str(path))
    with pytest.raises(ModelFileError, match=r"model.safetensors: tensor "
                       r"'model.layers.1.self_attn.k_proj.weight' has shape \(256, 512\), "
                       r"expected \(128, 512\)"):
        SopranoTTS(ckpt_copy, device="cpu")


def test_missing_tensor_is_named(ckpt_copy):
    path = ckpt_copy / "decoder.pth"
    sd = torch.load(str(path), weights_only=True)
    del sd["decoder.convnext.3.gamma"]
    torch.save(sd, str(path))
    with pytest.raises(ModelFileError, match="decoder.pth: tensor 'decoder.convnext.3.gamma' "
                                             "is missing"):
        SopranoTTS(ckpt_copy, device="cpu")


def test_bad_config_value_is_named(ckpt_copy):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    cfg["num_hidden_layers"] = "many"
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="config.json: key 'num_hidden_layers' has a bad"):
        SopranoTTS(ckpt_copy, device="cpu")


def test_not_a_directory_nor_hub_id():
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        resolve_model_dir("./no/such/dir")


def test_hub_id_offline_says_how_to_get_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="soprano-tts download ekwek/Soprano-1.1-80M"):
        resolve_model_dir("ekwek/Soprano-1.1-80M", cache_dir=tmp_path)


def test_hub_id_missing_from_the_cache_without_download(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not in the local cache.*downloading is off.*"
                       "soprano-tts download ekwek/Soprano-1.1-80M") as err:
        resolve_model_dir("ekwek/Soprano-1.1-80M", cache_dir=tmp_path, download=False)
    assert "\n" not in str(err.value) and "huggingface-cli" not in str(err.value)


def test_fp32_and_fp16_decoder_storage_agree(ckpt_copy):
    path = ckpt_copy / "decoder.pth"
    sd = torch.load(str(path), weights_only=True)
    ref = load_decoder(ckpt_copy, 512, OpTable("cpu", torch.float32))
    torch.save({k: v.half() if k != "head.istft.window" else v for k, v in sd.items()}, str(path))
    half = load_decoder(ckpt_copy, 512, OpTable("cpu", torch.float32))
    h = torch.randn(1, 512, 6)
    rounded = {k: v.half().float() if k != "head.istft.window" else v for k, v in sd.items()}
    torch.save(rounded, str(path))
    # fp16 matmul weights stay fp16 on CPU (read natively, half the bytes); the same values
    # stored as fp32 go through torch: equal up to fp32 summation order.
    assert half.w.blocks[0].w1.dtype == half.w.head_weight.dtype == torch.float16
    same_values = load_decoder(ckpt_copy, 512, OpTable("cpu", torch.float32))(h)
    assert torch.allclose(half(h), same_values, rtol=1e-5, atol=1e-5 * same_values.abs().max())
    assert half(h).shape == ref(h).shape == (1, 2048 * 5)


UPSTREAM_DECODER_JOB = """
import torch
from soprano.vocos.decoder import SopranoDecoder
sd = torch.load(inputs['path'], weights_only=True)
dim, _, k = sd['decoder.embed.weight'].shape
dec = SopranoDecoder(decoder_dim=dim)
# upstream 0.2.0 hard-codes a k=1 embed; Soprano-80M's decoder has k=3 with padding 1
dec.decoder.embed = torch.nn.Conv1d(512, dim, kernel_size=k, padding=k // 2)
dec.load_state_dict({n: t.float() for n, t in sd.items()})
with torch.no_grad():
    out_arrays['audio'] = dec(torch.from_numpy(arrays['hidden'])).numpy()
"""


def test_d512_k3_decoder_matches_upstream_modules(tmp_path):
    ckpt = write_checkpoint(tmp_path / "m80", "real-80m", num_hidden_layers=1)
    decoder = load_decoder(tmp_path / "m80", 512, OpTable("cpu", torch.float32))
    assert decoder.dim == 512 and decoder.w.embed_weight.shape[-1] == 3
    hidden = np.random.default_rng(0).normal(size=(2, 512, 9)).astype(np.float32)
    _, out = run_upstream(UPSTREAM_DECODER_JOB, {"path": f"{ckpt}/decoder.pth"},
                          {"hidden": hidden})
    ours = decoder(torch.from_numpy(hidden)).numpy()
    assert ours.shape == out["audio"].shape == (2, 2048 * 8)
    assert np.abs(ours - out["audio"]).max() <= 1e-4
