"""Session-wide fixtures: generated checkpoints and loaded engines, built once per run."""
import pytest

SERVER_MAX_NEW_TOKENS = 10  # what the live-server tests pass to `serve --max-new-tokens`

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


@pytest.fixture(scope="session")
def expected(tiny_tts):
    """int16 PCM a test server must send for a chunk of text (greedy, same token bound)."""
    from soprano.audio import to_int16
    cache = {}

    def pcm(text):
        if text not in cache:
            cache[text] = to_int16(tiny_tts.infer(text, max_new_tokens=SERVER_MAX_NEW_TOKENS))
        return cache[text]
    return pcm
