"""A ``soprano-tts serve`` subprocess for the server benchmarks (load.py, soak.py).

Both need the same things: a free loopback port, the console entry point run with this
interpreter, ``/healthz`` polled until the model is in, the server's memory and open files
watched while it runs, SIGTERM at the end, and WebSocket sessions opened with the API key the
server was given. Sampling reads ``/proc/<pid>`` (Linux): ``VmRSS`` and the entries of ``fd``.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

# -P (Python 3.11+): the working directory, a source tree whose soprano has no compiled _C unless
# installed with -e, must not shadow the installed package in the child.
CLI = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-c",
       "from soprano.cli import main; raise SystemExit(main())"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Server:
    """``soprano-tts serve`` on 127.0.0.1 with ``flags``; a thread samples its RSS and open fds
    every ``sample_every`` seconds into ``samples`` ((seconds since start, RSS bytes, fds))."""

    def __init__(self, model: str, flags, log_path: str, api_key: str | None = None,
                 sample_every: float = 1.0):
        self.port, self.api_key = free_port(), api_key
        self.log = open(log_path, "w")
        keys = ["--api-key", api_key] if api_key else []
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--model-path",
             model, "--device", "cpu", "--log", "warning", *keys, *map(str, flags)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.samples: list[tuple[float, int, int]] = []
        self.sample_every = sample_every
        self.started = time.monotonic()
        self.sampling = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    @property
    def peak_rss(self) -> int:
        return max((rss for _, rss, _ in self.samples), default=0)

    def _sample(self) -> None:
        pid = self.proc.pid
        while self.sampling:
            try:
                self.samples.append((time.monotonic() - self.started, rss_bytes(pid),
                                     open_fds(pid)))
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                return  # exited
            time.sleep(self.sample_every)

    def wait_healthy(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz") as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            return r.read().decode()

    def log_tail(self) -> str:
        with open(self.log.name) as f:  # the server writes to the file itself, unbuffered here
            return f.read()[-4000:]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.sampling = False
            self.log.close()

    def auth_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def connect(self):
        """A ``/v1/stream`` session, the key (if any) in its Authorization header."""
        request = HTTPRequest(f"ws://127.0.0.1:{self.port}/v1/stream",
                              headers=self.auth_headers())
        return await websocket_connect(request)


class ChunkIds:
    """A session's ``chunk_id``s: each frame must carry the one after the last; ``gaps`` counts
    the ids skipped and ``repeats`` those that went backwards or came twice."""

    def __init__(self):
        self.last = self.gaps = self.repeats = 0

    def see(self, chunk_id: int) -> None:
        if chunk_id <= self.last:
            self.repeats += 1
        else:
            self.gaps += chunk_id - self.last - 1
        self.last = max(self.last, chunk_id)
