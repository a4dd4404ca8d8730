"""The clients in examples/ and ``soprano.client``, each against the real server on loopback.

The examples run as the user would run them (a subprocess with host, port, text, output path)
and the WAV each saves must hold exactly the audio the engine makes for the text. The Node test
installs examples/node_modules with ``npm ci`` when it is missing, so ``pytest tests`` alone
suffices wherever node and npm are installed. ``expected`` (conftest) is the engine's own int16
audio for a text, which every client must reproduce within 2 LSB.
"""
import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest

from helpers import SENTENCE, assert_same_audio
from soprano.client import StreamClient, StreamClosed, StreamError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def read_wav(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    assert int.from_bytes(raw[4:8], "little") == len(raw) - 8  # RIFF size covers the file
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 32000)
        assert w.getcomptype() == "NONE"
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert len(raw) == 44 + 2 * len(pcm)  # a plain header, no trailing junk
    return pcm


def run_example(cmd, port, text, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, "127.0.0.1", str(port), text, str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def check_example(cmd, port, expected, tmp_path):
    """The saved WAV holds the engine's audio; an error message ends the run with status 1."""
    out = tmp_path / "out.wav"
    proc = run_example(cmd, port, SENTENCE, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Chunk 1: ") and f"Audio saved to {out}" in proc.stdout
    assert_same_audio(read_wav(out), expected(SENTENCE))
    out.unlink()
    proc = run_example(cmd, port, "", out)
    assert proc.returncode == 1 and "server error: 'text' is empty" in proc.stderr
    assert not out.exists()


def test_python_example(server, expected, tmp_path):
    check_example([sys.executable, str(EXAMPLES / "python_client.py")], server, expected,
                  tmp_path)


@pytest.fixture(scope="module")
def node():
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (EXAMPLES / "node_modules" / "ws").is_dir() and shutil.which("npm"):
        subprocess.run(["npm", "ci", "--prefix", str(EXAMPLES), "--no-audit", "--no-fund"],
                       cwd=ROOT, capture_output=True, timeout=300)
    if not (EXAMPLES / "node_modules" / "ws").is_dir():
        pytest.fail("examples/node_modules is missing and `npm ci --prefix examples` could not "
                    "install it: run that command (needs npm and the npm registry)")
    return shutil.which("node")


def test_node_example(server, expected, node, tmp_path):
    check_example([node, str(EXAMPLES / "node_client.js")], server, expected, tmp_path)


# --- soprano.client ---------------------------------------------------------------------------
def url(port):
    return f"ws://127.0.0.1:{port}/v1/stream"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def speak_all(client, text):
    chunks = [chunk async for chunk in client.speak(text)]
    return chunks, np.concatenate([c.pcm for c in chunks])


def test_client_speak_yields_chunks_with_headers(server, expected):
    async def go():
        async with StreamClient(url(server)) as c:
            assert uuid.UUID(c.session_id).version == 4
            first, audio = await speak_all(c, SENTENCE)
            assert [x.chunk_id for x in first] == list(range(1, len(first) + 1))
            assert all(x.header == {"chunk_id": x.chunk_id, "sample_rate": 32000,
                                    "channels": 1, "format": "pcm_s16le"} for x in first)
            assert all(x.pcm.dtype == np.int16 and x.pcm.ndim == 1 for x in first)
            assert_same_audio(audio, expected(SENTENCE))
            second, audio = await speak_all(c, SENTENCE)  # the session lives on
            assert second[0].chunk_id == len(first) + 1
            assert_same_audio(audio, expected(SENTENCE))
    run(go())


def test_client_config_applies_or_raises(server, expected):
    async def go():
        async with StreamClient(url(server)) as c:
            await c.config(speed=1.0, min_chars=10, max_delay_ms=5000)
            with pytest.raises(StreamError, match="'speed' must be in 0.5..2.0"):
                await c.config(speed=9)
            with pytest.raises(StreamError, match="must not exceed 'max_chars'"):
                await c.config(min_chars=500, max_chars=100)
            with pytest.raises(StreamError, match="unknown config field"):
                await c.config(colour="blue")
            _, audio = await speak_all(c, SENTENCE)
            assert_same_audio(audio, expected(SENTENCE))
    run(go())


def test_client_stop_ends_speak_and_session_stays_in_step(server, expected):
    long_text = " ".join([SENTENCE] * 8)

    async def go():
        async with StreamClient(url(server)) as c:
            got = []
            async for chunk in c.speak(long_text):
                got.append(chunk)
                start = time.monotonic()
                await c.stop()
                assert time.monotonic() - start < 1.0
            assert len(got) == 1  # nothing after stop()
            await c.stop()  # nothing left to stop: a no-op
            # leaving speak() early without stop(): the next call stops it first
            async for _ in c.speak(long_text):
                break
            _, audio = await speak_all(c, SENTENCE)
            assert_same_audio(audio, expected(SENTENCE))
            # stop() after the last chunk, when the flush's done is already on its way: both
            # that done and the stop's must be consumed, or the next speak() ends at once
            heard = 0
            async for chunk in c.speak(SENTENCE):
                heard += len(chunk.pcm)
                if heard == len(expected(SENTENCE)):
                    await asyncio.sleep(0.2)
                    await c.stop()
            _, audio = await speak_all(c, SENTENCE)
            assert_same_audio(audio, expected(SENTENCE))
    run(go())


def test_client_raises_server_errors_and_session_lives_on(server, expected):
    async def go():
        async with StreamClient(url(server)) as c:
            with pytest.raises(StreamError, match="'text' is empty"):
                await speak_all(c, "")
            with pytest.raises(StreamError, match="at most 10000 per message"):
                await speak_all(c, "word " * 2001)
            _, audio = await speak_all(c, SENTENCE)
            assert_same_audio(audio, expected(SENTENCE))
        async with StreamClient(url(server)) as c:
            with pytest.raises(StreamClosed) as closed:  # over the WebSocket size limit
                await speak_all(c, "x" * 70_000)
            assert closed.value.code == 1009
    run(go())


# --- the examples against a server with API keys -----------------------------------------------
KEY = "sk-example-0123456789"


@pytest.fixture(scope="module")
def keyed_port(start_server):
    s = start_server("--api-key", KEY)
    yield s.port
    assert s.stop() == 0, s.stderr()


def check_example_key(cmd, port, expected, tmp_path, refused_text):
    """The key from --api-key or SOPRANO_API_KEY (the flag wins) opens the stream; none, or a
    wrong one, ends the run with status 1 and the 401 on stderr, saving nothing."""
    out = tmp_path / "out.wav"

    def run_with(args, key_env):
        env = {k: v for k, v in os.environ.items() if k != "SOPRANO_API_KEY"}
        if key_env is not None:
            env["SOPRANO_API_KEY"] = key_env
        return subprocess.run([*cmd, *args, "127.0.0.1", str(port), SENTENCE, str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)

    for args, key_env in ((["--api-key", KEY], None), ([], KEY), (["--api-key", KEY], "wrong")):
        proc = run_with(args, key_env)
        assert proc.returncode == 0, proc.stderr
        assert_same_audio(read_wav(out), expected(SENTENCE))
        out.unlink()
    for args, key_env in (([], None), (["--api-key", "wrong"], KEY)):
        proc = run_with(args, key_env)
        assert proc.returncode == 1 and refused_text in proc.stderr, proc.stderr
        assert not out.exists()


def test_python_example_sends_its_api_key(keyed_port, expected, tmp_path):
    check_example_key([sys.executable, str(EXAMPLES / "python_client.py")], keyed_port,
                      expected, tmp_path, "server refused the connection: HTTP 401")


def test_node_example_sends_its_api_key(keyed_port, expected, node, tmp_path):
    check_example_key([node, str(EXAMPLES / "node_client.js")], keyed_port, expected, tmp_path,
                      "Unexpected server response: 401")
