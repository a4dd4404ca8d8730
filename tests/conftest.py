"""Session-wide fixtures: generated checkpoints and loaded engines, built once per run."""
import pytest

from soprano.testing import write_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


@pytest.fixture(scope="session")
def real_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "real", "real")


@pytest.fixture(scope="session")
def tiny_tts(tiny_ckpt):
    from soprano import SopranoTTS
    return SopranoTTS(tiny_ckpt, device="cpu")


@pytest.fixture(scope="session")
def real_tts(real_ckpt):
    from soprano import SopranoTTS
    return SopranoTTS(real_ckpt, device="cpu")
