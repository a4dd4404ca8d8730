"""Plain helper code shared by several test modules.

Not a test module (pytest collects only ``test_*.py``) and holds no fixtures: those are in
conftest.py, which starts the live servers these helpers talk to. Test modules import from here,
never from each other.
"""
import asyncio
import json
import socket
import sys
import uuid

import numpy as np
from tornado.websocket import websocket_connect

from soprano.server.protocol import decode_frame

# What the live-server tests pass to `serve --max-new-tokens`, and what conftest's ``expected``
# synthesizes with: random weights rarely emit EOS, so every sentence runs to this bound.
SERVER_MAX_NEW_TOKENS = 10

# The console entry point, run as a user runs it but with this interpreter.
# -P (Python 3.11+): the working directory, a source tree whose soprano has no compiled _C unless
# installed with -e, must not shadow the installed package in the child.
CLI = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-c",
       "from soprano.cli import main; raise SystemExit(main())"]

SENTENCE = "Hello there, this is the streaming server speaking to you."


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a /v1/stream WebSocket session --------------------------------------------------------------
async def connect(port):
    """Open a session on ``ws://127.0.0.1:port/v1/stream``; checks its ``ready`` message."""
    ws = await websocket_connect(f"ws://127.0.0.1:{port}/v1/stream")
    ready = json.loads(await ws.read_message())
    assert ready["type"] == "ready"
    assert uuid.UUID(ready["session_id"]).version == 4
    return ws


async def send(ws, **msg):
    await ws.write_message(json.dumps(msg))


async def collect(ws, timeout=60.0):
    """Frames and JSON messages until ``done``: (headers, pcm int16, messages)."""
    headers, pcm, messages = [], [], []
    while True:
        m = await asyncio.wait_for(ws.read_message(), timeout)
        assert m is not None, "socket closed before done"
        if isinstance(m, bytes):
            h, data = decode_frame(m)
            headers.append(h)
            pcm.append(np.frombuffer(data, "<i2"))
        else:
            messages.append(json.loads(m))
            if messages[-1]["type"] == "done":
                audio = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
                return headers, audio, messages


# --- audio ---------------------------------------------------------------------------------------
def assert_same_audio(got, want):
    """Same length, and every int16 sample within 2 LSB."""
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 2


def autocorr_pitch_hz(x: np.ndarray, rate: int = 32000, lo_hz=25.0, hi_hz=500.0) -> float:
    """Pitch as a tracker reads it: the strongest autocorrelation lag in 2..40 ms."""
    x = np.asarray(x, np.float64) - np.mean(x)
    r = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * len(x))) ** 2)[:len(x)]
    lo, hi = int(rate / hi_hz), int(rate / lo_hz)
    return rate / (lo + int(np.argmax(r[lo:hi])))


def with_total_samples(flac: bytes, n: int) -> bytes:
    """A streamed FLAC with STREAMINFO's 36-bit sample count (0: unknown) set to ``n``, as a
    seekable writer would leave it: python-soundfile reads to the end only when it is known."""
    fields = int.from_bytes(flac[18:26], "big")
    return flac[:18] + ((fields >> 36 << 36) | n).to_bytes(8, "big") + flac[26:]
