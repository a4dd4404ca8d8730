"""The server when things go wrong: a failing model step or decoder, clients that vanish or never
read, SIGTERM under load, model files taken away. Each test runs a real server (subprocess, tiny
checkpoint); faults inside it are injected through ``soprano.server.faults`` (an environment
variable the child inherits), so the server's own error paths run.
"""
import asyncio
import json
import shutil
import signal
import socket
import struct
import time
import urllib.request

import pytest

from helpers import (SENTENCE, RawWebSocket, assert_same_audio, collect, connect, rss_bytes, send,
                     speaks)
from soprano.audio import to_int16
from soprano.server.faults import ENV
from soprano.server.openai_request import MAX_INPUT_CHARS
from soprano.server.session import MAX_BUFFERED_CHARS

MB = 1 << 20
MARKER = "kaboom"
DOOMED = f"This sentence says {MARKER} and takes the model down."


def metrics(port) -> dict:
    """Every unlabelled sample and every error kind of ``/metrics``, by name."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def flush(ws, text):
    await send(ws, type="text", text=text)
    await send(ws, type="flush")
    return await collect(ws)


@pytest.mark.parametrize("place, inflight, logged", [
    ("step", "1", "synthesis step failed"), ("decode", "4", "audio decoding failed")])
def test_model_failure_errors_its_session_only_and_the_server_serves_on(
        start_server, expected, monkeypatch, place, inflight, logged):
    """A session asking for the marked text gets one error, then done; two sessions speaking at
    the same time get their exact audio; the failed session then speaks normally, and so does a
    new one. A failing model step fails every job in its batch, so there it runs with one place
    (--tts-inflight 1): the others wait for it and are served after. The decoder decodes one
    job's windows per call, so there all three synthesize together (four places)."""
    monkeypatch.setenv(ENV, f"{place}={MARKER}")
    live = start_server("--tts-inflight", inflight)
    other = "Another session asks for its own words."

    async def go():
        doomed, a, b = await connect(live.port), await connect(live.port), await connect(live.port)
        results = await asyncio.gather(flush(doomed, DOOMED), flush(a, SENTENCE),
                                       flush(b, other))
        assert results[0][2] == [
            {"type": "error", "message": f"synthesis failed: injected fault in the {place}"},
            {"type": "done"}]
        for (headers, audio, messages), text in zip(results[1:], [SENTENCE, other]):
            assert messages == [{"type": "done"}]
            assert [h["chunk_id"] for h in headers] == list(range(1, len(headers) + 1))
            assert_same_audio(audio, expected(text))
        await speaks(doomed, SENTENCE, expected(SENTENCE))
        fresh = await connect(live.port)
        await speaks(fresh, SENTENCE, expected(SENTENCE))
        for ws in (doomed, a, b, fresh):
            ws.close()
    asyncio.run(go())
    m = metrics(live.port)
    assert m['soprano_errors_total{kind="synthesis"}'] == 1
    assert (m["soprano_jobs_inflight"], m["soprano_jobs_queued"]) == (0, 0)
    assert live.stop() == 0, live.stderr()
    assert logged in live.stderr()  # with its traceback


def reset(sock: socket.socket) -> None:
    """Close with an RST and no close frame: SO_LINGER on with a zero timeout."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_client_vanishing_mid_stream_frees_its_session_and_job_within_a_second(
        start_server, expected):
    """--max-sessions 1 and --tts-inflight 1: a client reset while its audio streams must give
    both places back at once, or the next client is refused (1013) or never served."""
    live = start_server("--max-sessions", "1", "--tts-inflight", "1")
    ws = RawWebSocket(live.port)
    assert json.loads(ws.recv()[1])["type"] == "ready"
    ws.send(json.dumps({"type": "text", "text": " ".join([SENTENCE] * 4)}))
    ws.send('{"type":"flush"}')
    assert ws.recv()[0] == 0x2  # audio is flowing
    m = metrics(live.port)
    assert (m["soprano_sessions_open"], m["soprano_jobs_inflight"]) == (1, 1)
    reset(ws.sock)
    gone = time.monotonic()
    while True:
        m = metrics(live.port)
        if (m["soprano_sessions_open"], m["soprano_jobs_inflight"]) == (0, 0):
            break
        assert time.monotonic() - gone < 1.0, m
        time.sleep(0.02)
    print(f"session and job freed {1000 * (time.monotonic() - gone):.0f} ms after the reset")

    async def next_client():
        ws = await connect(live.port)
        await speaks(ws, SENTENCE, expected(SENTENCE))
        ws.close()
    asyncio.run(next_client())
    assert live.stop() == 0, live.stderr()


def largest_send_buffer() -> int:
    """The most bytes the kernel lets one TCP socket buffer for sending (tcp_wmem's maximum)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def hog_text(sentence_pcm, max_chars: int) -> str:
    """SENTENCE repeated for three times the audio the kernel could buffer for a socket
    (``sentence_pcm``: its int16 audio), so a client that reads none of it cannot be served
    whole; within ``max_chars``, or the test says it cannot be."""
    count = -(-3 * largest_send_buffer() // sentence_pcm.nbytes)
    text = " ".join([SENTENCE] * count)
    assert len(text) <= max_chars, (
        f"{sentence_pcm.nbytes} bytes of audio a sentence: too little to outgrow the socket's "
        f"buffers within {max_chars} characters")
    return text


HOG_TOKENS = 64  # per sentence: the hog's server runs with this --max-new-tokens


def test_client_asking_for_audio_and_never_reading_is_bounded_and_harms_no_one(
        start_server, tiny_tts):
    """A client with a 4 KiB receive buffer flushes long text and reads nothing: the server
    parks its job (it stops generating once 16 frames wait unwritten) or, where the model ran
    ahead of the decoder, closes it at the 64-frame bound (1008); either way it stays within a
    memory bound while another session on the same server is served exactly, again and again.

    The hog asks for three times the audio the kernel could buffer for its socket, measured on
    this machine (hog_text): 30 fixed flushes had fitted in the buffers of a machine whose model
    stopped sooner or whose buffers were larger, and the hog was then simply served."""
    live = start_server("--tts-inflight", "2", "--max-new-tokens", str(HOG_TOKENS))
    want = to_int16(tiny_tts.infer(SENTENCE, max_new_tokens=HOG_TOKENS))

    async def other():
        ws = await connect(live.port)
        for _ in range(3):
            await speaks(ws, SENTENCE, want)
        ws.close()
    asyncio.run(other())  # warm: the allocator's and KV cache's pages are in
    before = rss_bytes(live.proc.pid)
    hog = RawWebSocket(live.port, rcvbuf=4096)
    hog.send(json.dumps({"type": "text", "text": hog_text(want, MAX_BUFFERED_CHARS)}))
    hog.send('{"type":"flush"}')
    asyncio.run(other())
    time.sleep(0.5)
    during = rss_bytes(live.proc.pid)
    print(f"server RSS {before / MB:.1f} MB before, {during / MB:.1f} MB with the hog")
    assert during - before < 32 * MB
    m = metrics(live.port)
    assert m["soprano_jobs_inflight"] + m['soprano_errors_total{kind="not_reading"}'] == 1
    reset(hog.sock)
    time.sleep(0.5)
    assert metrics(live.port)["soprano_jobs_inflight"] == 0
    assert live.stop() == 0, live.stderr()


def test_sigterm_under_load_delivers_every_submitted_flush_then_closes_1001(
        start_server, expected):
    """Six sessions flush at once (four places, two jobs queued); SIGTERM once the server
    holds all six: each still gets its whole audio and done, then a 1001 close, and the server
    exits 0 within its 10 s drain."""
    live = start_server("--tts-inflight", "4")
    texts = [f"Session {word} flushed just before the server was told to stop."
             for word in "one two three four five six".split()]

    async def go():
        sessions = [await connect(live.port) for _ in texts]
        for ws, text in zip(sessions, texts):
            await send(ws, type="text", text=text)
            await send(ws, type="flush")
        while True:  # the server holds all six jobs: running or queued
            m = metrics(live.port)
            if m["soprano_jobs_inflight"] + m["soprano_jobs_queued"] == len(texts):
                break
            await asyncio.sleep(0.01)
        live.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        results = await asyncio.gather(*(collect(ws) for ws in sessions))
        for ws, text, (headers, audio, messages) in zip(sessions, texts, results):
            assert messages == [{"type": "done"}]
            assert [h["chunk_id"] for h in headers] == list(range(1, len(headers) + 1))
            assert_same_audio(audio, expected(text))
            assert await ws.read_message() is None
            assert ws.close_code == 1001
        return signalled, time.monotonic()
    signalled, closed = asyncio.run(go())
    assert live.proc.wait(timeout=15) == 0
    print(f"drained and closed {closed - signalled:.1f} s after SIGTERM, exited "
          f"{time.monotonic() - signalled:.1f} s after")
    assert closed - signalled < 10.5


def test_model_files_removed_after_start_do_not_break_sessions(start_server, expected,
                                                               tiny_ckpt, tmp_path):
    """Everything the server needs is read at start: with its model directory moved away and
    then deleted, an open session and a new one still speak, and /healthz stays ok."""
    model = tmp_path / "model"
    shutil.copytree(tiny_ckpt, model)
    live = start_server(ckpt=model)

    async def go():
        ws = await connect(live.port)
        await speaks(ws, SENTENCE, expected(SENTENCE))
        model.rename(tmp_path / "moved")
        await speaks(ws, SENTENCE, expected(SENTENCE))
        shutil.rmtree(tmp_path / "moved")
        await speaks(ws, SENTENCE, expected(SENTENCE))
        fresh = await connect(live.port)
        await speaks(fresh, "A new session after the files are gone.",
                     expected("A new session after the files are gone."))
        ws.close()
        fresh.close()
    asyncio.run(go())
    with urllib.request.urlopen(f"http://127.0.0.1:{live.port}/healthz", timeout=10) as r:
        assert r.read() == b"ok"
    assert live.stop() == 0, live.stderr()


def served_after_the_hog_lost_its_place(port: int, want) -> None:
    """The next client gets its exact audio (the place came back), and the hog is counted once
    as not reading, with no job left in flight."""
    async def other():
        ws = await connect(port)
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        _, audio, messages = await collect(ws, timeout=120)
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, want)
        ws.close()
    asyncio.run(other())
    m = metrics(port)
    assert (m['soprano_errors_total{kind="not_reading"}'], m["soprano_jobs_inflight"]) == (1, 0)


@pytest.mark.slow  # the real-shape checkpoint: ~20 s of synthesis before the hog stalls
def test_client_that_stops_reading_loses_its_place_after_the_write_timeout(start_server,
                                                                           real_ckpt, real_tts):
    """With one place (--tts-inflight 1) a client that asks for audio and never reads would hold
    it for as long as it stays connected: once the kernel's socket buffers are full its job is
    parked mid-sentence with 16 frames unwritten, under the 64-frame bound, and everyone else
    waits. --write-timeout 1: its session is closed (1008, metrics kind not_reading) once a frame
    has waited 1 s for it, and its place goes to the next session, served exactly. Real shapes:
    with the tiny checkpoint the model runs so far ahead of the decoder that the 64-frame bound
    closes the hog first. The hog's text (jobs of up to 2000 characters) is three times the audio
    the buffers could take in (hog_text), so it cannot finish by itself."""
    live = start_server("--tts-inflight", "1", "--write-timeout", "1", "--max-new-tokens", "100",
                        ckpt=real_ckpt)
    want = to_int16(real_tts.infer(SENTENCE, max_new_tokens=100))
    hog = RawWebSocket(live.port, rcvbuf=4096)
    assert json.loads(hog.recv()[1])["type"] == "ready"
    hog.send(json.dumps({"type": "config", "min_chars": 1000, "max_chars": 2000}))
    hog.send(json.dumps({"type": "text", "text": hog_text(want, MAX_BUFFERED_CHARS)}))
    hog.send('{"type":"flush"}')
    time.sleep(0.5)

    served_after_the_hog_lost_its_place(live.port, want)
    # Its close frame (1008) waits behind the audio it never read; Tornado drops the TCP
    # connection 5 s after sending it, and the session is gone.
    closed = time.monotonic()
    while metrics(live.port)["soprano_sessions_open"] != 0:
        assert time.monotonic() - closed < 7
        time.sleep(0.1)
    reset(hog.sock)
    assert "Traceback" not in live.stderr(), live.stderr()
    assert live.stop() == 0, live.stderr()


@pytest.mark.slow  # the real-shape checkpoint, as above
def test_speech_client_that_stops_reading_loses_its_place_after_the_write_timeout(
        start_server, real_ckpt, real_tts):
    """The same over HTTP: a POST /v1/audio/speech for more audio than the socket's buffers
    take in (hog_text) from a client that reads none of it holds the one place until a chunk has
    waited --write-timeout for it; then its connection is closed (metrics kind not_reading) and
    the next client is served exactly."""
    live = start_server("--tts-inflight", "1", "--write-timeout", "1", "--max-new-tokens", "100",
                        ckpt=real_ckpt)
    want = to_int16(real_tts.infer(SENTENCE, max_new_tokens=100))
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", live.port))
    body = json.dumps({"model": "tts-1", "input": hog_text(want, MAX_INPUT_CHARS),
                       "voice": "alloy", "response_format": "pcm"}).encode()
    hog.sendall(f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body)
    time.sleep(0.5)

    served_after_the_hog_lost_its_place(live.port, want)
    reset(hog)
    assert "Traceback" not in live.stderr(), live.stderr()
    assert live.stop() == 0, live.stderr()
