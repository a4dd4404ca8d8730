"""GGUF models in the hub cache: `list` and `cache` call one usable only when its headers hold a
backbone and its decoder, and `download --verify` loads it."""
import json

import pytest

from fake_hub import FakeHub
from soprano.cli import main
from soprano.gguf.writer import convert

GOOD, BROKEN = "test-org/Soprano-Tiny-GGUF", "test-org/Backbone-Only-GGUF"


@pytest.fixture(scope="module")
def cache(tiny_ckpt, tmp_path_factory):
    """A hub cache holding GOOD (backbone + mmproj) and BROKEN (a backbone alone)."""
    out = convert(tiny_ckpt, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf", "q8_0")
    files = {out.backbone.name: out.backbone.read_bytes(),
             out.decoder.name: out.decoder.read_bytes()}
    fake = FakeHub()
    fake.add(GOOD, files)
    fake.add(BROKEN, {out.backbone.name: files[out.backbone.name]})
    root = tmp_path_factory.mktemp("hub-cache")
    try:
        for repo in (GOOD, BROKEN):
            assert main(["download", repo, "-c", str(root), "--files", "*.gguf",
                         "--hf-endpoint", fake.url, "--no-progress"]) == 0
    finally:
        fake.close()
    return root


def test_list_reports_usable_and_broken_gguf(cache, capsys):
    assert main(["list", "--json", "-c", str(cache)]) == 0
    models = {m["repo_id"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert (models[GOOD]["layout"], models[GOOD]["state"]) == ("gguf", "verified")
    assert models[BROKEN]["state"] == "partial"


def test_verify_loads_a_gguf_model(cache, capsys):
    assert main(["download", GOOD, "--verify", "-c", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "tiny-q8_0.gguf: ok" in out and "loads: ok" in out


def test_verify_refuses_a_backbone_without_decoder(cache, capsys):
    assert main(["download", BROKEN, "--verify", "-c", str(cache)]) == 2
    captured = capsys.readouterr()
    assert "loads: " in captured.out and "has a backbone GGUF but no decoder" in captured.out
    assert "the GGUF model does not load" in captured.err


def test_hub_id_of_a_cached_gguf_repo_loads(cache):
    from soprano import SopranoTTS
    tts = SopranoTTS(GOOD, device="cpu", cache_dir=cache, download=False)
    assert tts.model_files.backbone.name == "tiny-q8_0.gguf"
    assert tts.model_files.decoder.name == "mmproj-tiny-q8_0.gguf"
    assert len(tts.infer("Hi there.", max_new_tokens=8)) > 0
