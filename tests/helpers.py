"""Plain helper code shared by several test modules.

Not a test module (pytest collects only ``test_*.py``) and holds no fixtures: those are in
conftest.py, which starts the live servers these helpers talk to. Test modules import from here,
never from each other.
"""
import asyncio
import base64
import json
import os
import socket
import struct
import sys
import time
import uuid

import numpy as np
from tornado.websocket import websocket_connect

from soprano.server.protocol import decode_frame

# What the live-server tests pass to `serve --max-new-tokens`, and what conftest's ``expected``
# synthesizes with: random weights rarely emit EOS, so every sentence runs to this bound.
SERVER_MAX_NEW_TOKENS = 10

# This interpreter for a child process. -P (Python 3.11+): the working directory, a source tree
# whose soprano has no compiled _C unless installed with -e, must not shadow the installed
# package in the child (CI installs it non-editable and runs the tests from the checkout).
PYTHON = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else [])]
# The console entry point, run as a user runs it but with this interpreter.
CLI = [*PYTHON, "-c", "from soprano.cli import main; raise SystemExit(main())"]

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


# --- a WebSocket on a plain socket ---------------------------------------------------------------
class RawWebSocket:
    """A ``/v1/stream`` client on a plain socket, for what a library client will not do: never
    read (``rcvbuf`` shrinks the receive buffer), send invalid UTF-8, send nothing, send an
    ``Origin``. Frames go out with an all-zero mask (valid, and the payload stays as is)."""

    def __init__(self, port, headers=(), rcvbuf=None, path="/v1/stream"):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", *headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed during the handshake: {self.buf!r}")
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split()[1])  # 101 when upgraded

    def send(self, payload, opcode=0x1):
        data = payload.encode() if isinstance(payload, str) else payload
        n = len(data)
        length = (bytes([0x80 | n]) if n < 126 else
                  bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                  bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(bytes([0x80 | opcode]) + length + b"\0\0\0\0" + data)

    def _read(self, n, deadline):
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout=30.0):
        """The next frame as (opcode, payload); EOFError when the server closed TCP."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._read(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", self._read(2, deadline))
        elif n == 127:
            (n,) = struct.unpack(">Q", self._read(8, deadline))
        return b0 & 0x0F, self._read(n, deadline)

    def until_close(self, timeout=30.0):
        """Messages up to the close frame: (text messages, binary frames, close code, reason);
        close code None (and why in reason) when none came."""
        deadline = time.monotonic() + timeout
        texts, frames = [], 0
        while True:
            try:
                opcode, data = self.recv(deadline - time.monotonic())
            except (EOFError, ConnectionError):
                return texts, frames, None, "TCP closed without a close frame"
            except TimeoutError:
                return texts, frames, None, f"no close frame within {timeout} s"
            if opcode == 0x8:
                code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else None
                return texts, frames, code, data[2:].decode()
            if opcode == 0x1:
                texts.append(json.loads(data))
            elif opcode == 0x2:
                frames += 1

    def close(self):
        self.sock.close()


async def speaks(ws, text: str, want) -> None:
    """Send ``text`` and a flush on ``ws``: the reply is ``want``'s audio and one ``done``."""
    await send(ws, type="text", text=text)
    await send(ws, type="flush")
    _, audio, messages = await collect(ws)
    assert messages == [{"type": "done"}]
    assert_same_audio(audio, want)


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


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
