"""One CPU thread count for the whole process: --threads / SOPRANO_THREADS / SopranoTTS(threads=)
set it for the native kernels and torch, and it holds in every thread (the server steps and
decodes on threads of its own)."""
import os
import subprocess
import threading

import pytest
import torch

from helpers import CLI
from soprano import SopranoTTS
from soprano.errors import SopranoError
from soprano.ops import native, native_gguf
from soprano.runtime.threads import configure_threads, physical_cores, requested_threads
from test_ops_quant_linear import quantized

pytestmark = pytest.mark.skipif(not native.has_cpu(), reason="soprano._C not built")


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    before = (native.num_threads(), torch.get_num_threads())
    monkeypatch.delenv("SOPRANO_THREADS", raising=False)
    yield
    native.set_num_threads(before[0])
    torch.set_num_threads(before[1])


def in_other_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_the_count_holds_in_threads_started_later():
    """OpenMP's own setting is per thread: a server thread would have used every CPU."""
    native.set_num_threads(1)
    assert in_other_thread(native.num_threads) == 1
    native.set_num_threads(3)
    assert in_other_thread(native.num_threads) == 3


def test_a_thread_s_own_count_holds_for_that_thread_only():
    native.set_num_threads(2)

    def own():
        native.set_thread_threads(1)
        mine = native.num_threads()
        native.set_thread_threads(0)
        return mine, native.num_threads()

    assert in_other_thread(own) == (1, 2)
    native.set_thread_threads(3)
    try:
        assert native.num_threads() == 3 and in_other_thread(native.num_threads) == 2
    finally:
        native.set_thread_threads(0)
    with pytest.raises(ValueError, match="set_thread_threads: n must be >= 0, got -1"):
        native.set_thread_threads(-1)


@pytest.mark.parametrize("count,workers,each", [(2, 2, 1), (2, 1, 2), (8, 3, 2), (1, 4, 1)])
def test_decoder_workers_share_the_process_s_threads(count, workers, each):
    from soprano.server.decoder_pool import DecoderPool
    native.set_num_threads(count)
    seen, lock = [], threading.Lock()

    def take(budget):
        with lock:
            seen.append(native.num_threads())
        return None

    pool = DecoderPool(None, 4, 1, workers, take, lambda *a: None)
    for t in pool.threads:
        t.join(timeout=10)
    assert seen == [each] * workers
    assert native.num_threads() == count  # the caller's own count is untouched


def test_default_is_the_physical_cores(monkeypatch):
    cores = physical_cores()
    assert 1 <= cores <= os.cpu_count()
    assert requested_threads() == cores
    monkeypatch.setenv("SOPRANO_THREADS", "1")
    assert requested_threads() == 1
    assert requested_threads(2) == 2  # the argument wins


@pytest.mark.parametrize("env,threads,message", [
    ("two", None, "SOPRANO_THREADS must be an integer >= 1, got 'two'"),
    ("0", None, "SOPRANO_THREADS must be >= 1, got 0"),
    (None, 0, "threads must be >= 1, got 0"),
])
def test_bad_counts_are_clear_errors(monkeypatch, env, threads, message):
    if env is not None:
        monkeypatch.setenv("SOPRANO_THREADS", env)
    with pytest.raises(ValueError, match=message):
        configure_threads(threads)


def test_sopranotts_sets_kernels_and_torch(tiny_ckpt, monkeypatch):
    tts = SopranoTTS(tiny_ckpt, device="cpu", threads=1)
    assert tts.threads == native.num_threads() == torch.get_num_threads() == 1
    monkeypatch.setenv("SOPRANO_THREADS", "nope")
    with pytest.raises(SopranoError, match="SOPRANO_THREADS must be an integer"):
        SopranoTTS(tiny_ckpt, device="cpu")


def test_results_do_not_depend_on_the_count():
    """Each output feature is computed by one thread: 1 or 2 threads give the same bits."""
    w = quantized(torch.randn(512, 512), "Q4_K")
    x = torch.randn(3, 512)
    native.set_num_threads(1)
    one = native_gguf.quant_linear_cpu(x, w)
    native.set_num_threads(2)
    assert torch.equal(native_gguf.quant_linear_cpu(x, w), one)


def test_cli_flag_and_environment_are_validated():
    for args, env, message in [(["--threads", "0"], {}, "--threads: must be in 1..4096, got 0"),
                               ([], {"SOPRANO_THREADS": "x"}, "SOPRANO_THREADS")]:
        out = subprocess.run([*CLI, "generate", "hi", *args],
                             capture_output=True, text=True, env={**os.environ, **env})
        assert out.returncode == 2 and message in out.stderr, out.stderr
