"""Session-wide fixtures: generated checkpoints, loaded engines and live servers.

Checkpoints and engines are built once per run. Live servers are real ``soprano-tts serve``
subprocesses on free loopback ports: ``server`` (one per test module, the common flags) and
``start_server`` (a factory, for tests that need other flags or their own process to signal).
Plain helper code (WebSocket session, audio comparisons) is in helpers.py.
"""
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, settings

# SERVER_MAX_NEW_TOKENS is also imported from here by test_server_synthesis.py
from helpers import CLI, SERVER_MAX_NEW_TOKENS, free_port
from soprano.testing import write_checkpoint

# The flags every module's ``server`` runs with, on top of the factory's base flags. Two workers
# and four KV-cache slots: sixteen concurrent sessions exercise the job queue, and a test that stops
# or drops sessions sees slots come back.
SERVER_FLAGS = ("--workers", "2", "--tts-inflight", "4")

# Hypothesis (tests/test_fuzz.py): a few hundred examples per target keep the suite fast;
# HYPOTHESIS_PROFILE=soak runs 10 000 per in-process target (the issue 16 target). No deadline:
# two CPU cores shared with other work make single examples slow now and then.
settings.register_profile("default", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("soak", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Directory of a random-weight checkpoint with small shapes (fast to load and run)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


@pytest.fixture(scope="session")
def real_ckpt(tmp_path_factory):
    """Directory of a random-weight checkpoint with the real model's shapes."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "real", "real")


@pytest.fixture(scope="session")
def tiny_tts(tiny_ckpt):
    """``SopranoTTS`` on ``tiny_ckpt``, on CPU."""
    from soprano import SopranoTTS
    return SopranoTTS(tiny_ckpt, device="cpu")


@pytest.fixture(scope="session")
def real_tts(real_ckpt):
    """``SopranoTTS`` on ``real_ckpt``, on CPU."""
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


# --- live servers ------------------------------------------------------------------------------
class LiveServer:
    """A ``soprano-tts serve`` subprocess on 127.0.0.1:``port``, healthy once constructed."""

    def __init__(self, ckpt, flags, log_path):
        self.port = free_port()
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--model-path", str(ckpt), "--device", "cpu",
                 "--max-new-tokens", str(SERVER_MAX_NEW_TOKENS), *flags],
                stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def stderr(self) -> str:
        """What the server has written to stderr so far."""
        return self.log_path.read_text()

    def _wait_healthy(self, timeout=60.0):
        """Poll ``/healthz`` until it answers 200 ``ok``; meanwhile only 503 (loading) is right."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before it was "
                                   f"healthy; stderr:\n{self.stderr()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert (r.status, r.read()) == (200, b"ok")
                    return
            except urllib.error.HTTPError as e:
                assert e.code == 503, f"/healthz answered {e.code} while loading"
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet
            time.sleep(0.1)
        raise RuntimeError(f"server not healthy after {timeout:.0f} s; stderr:\n{self.stderr()}")

    def stop(self, timeout=30.0) -> int:
        """SIGTERM, then the exit status (0 for a clean drain); kills it if it hangs."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server ignored SIGTERM for {timeout:.0f} s; stderr:\n"
                                 f"{self.stderr()}") from None


@pytest.fixture(scope="session")
def start_server(tiny_ckpt, tmp_path_factory):
    """Factory for live servers with flags of their own: ``start_server(*flags, ckpt=tiny_ckpt)``
    returns a healthy ``LiveServer`` (``.port``, ``.proc``, ``.stop()``, ``.stderr()``).

    Base flags: loopback, a free port, ``--device cpu``, ``--max-new-tokens``
    ``SERVER_MAX_NEW_TOKENS``; ``flags`` come after them, so a repeated option wins. The caller
    stops its servers (``assert s.stop() == 0``) or signals ``s.proc`` itself; any left running
    (a test that failed half-way) are killed at the end of the session.
    """
    started = []

    def start(*flags, ckpt=None) -> LiveServer:
        log = tmp_path_factory.mktemp("server") / "stderr.log"
        s = LiveServer(ckpt if ckpt is not None else tiny_ckpt, flags, log)
        started.append(s)
        return s
    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


@pytest.fixture(scope="module")
def server(start_server):
    """Port of a live server on the tiny checkpoint with ``SERVER_FLAGS``, shared by the tests
    of one module; at the end it must drain and exit 0 on SIGTERM."""
    s = start_server(*SERVER_FLAGS)
    yield s.port
    assert s.stop() == 0, s.stderr()
