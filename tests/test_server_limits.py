"""The server against hostile clients: what one client may cost it, and how it says no.

Real servers (tiny checkpoint, subprocesses); clients on plain sockets (``RawWebSocket``, raw
HTTP) where a library client would not misbehave. Memory is the server's RSS from /proc, read
before and after, and must stay within a bound however much a client sends.
"""
import asyncio
import json
import os
import socket
import time
import urllib.request

import pytest
from tornado.websocket import websocket_connect

from helpers import RawWebSocket, SENTENCE, connect, rss_bytes, speaks
from soprano.server.app import CLOSE_FULL, CLOSE_IDLE
from soprano.server.openai_request import MAX_BODY_BYTES
from soprano.server.protocol import ECHO_CHARS
from soprano.server.session import CLOSE_NOT_READING, MAX_QUEUED_MESSAGES

MB = 1 << 20


def test_client_that_never_reads_is_closed_and_memory_stays_bounded(start_server, expected):
    """600 messages with a 60 000-character unknown type (each echoed in an error) and 20 000
    flushes (each answered done) from a client that reads nothing: the server closes it with
    1008 once its queue is over the bound, echoes are truncated, and RSS does not follow what
    the client sent (36 MB). No rate limit, so every message reaches the queue."""
    live = start_server("--max-messages-per-second", "0")
    before = rss_bytes(live.proc.pid)
    ws = RawWebSocket(live.port, rcvbuf=4096)
    big = json.dumps({"type": "x" * 60_000})
    try:
        for _ in range(600):
            ws.send(big)
        for _ in range(20_000):
            ws.send('{"type":"flush"}')
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed by the server while we were still sending: what we want
    time.sleep(1.0)
    during = rss_bytes(live.proc.pid)
    texts, _, code, reason = ws.until_close(timeout=15)
    ws.close()
    time.sleep(0.5)
    after = rss_bytes(live.proc.pid)
    print(f"server RSS: {before / MB:.1f} MB before, {during / MB:.1f} MB while the client "
          f"sent, {after / MB:.1f} MB after it closed")
    assert code == CLOSE_NOT_READING, (code, reason, len(texts))
    assert "not reading" in reason
    assert len(texts) <= MAX_QUEUED_MESSAGES + 2000  # what the kernel's buffers held
    errors = [t["message"] for t in texts if t["type"] == "error"]
    assert errors and all(len(m) < ECHO_CHARS + 100 for m in errors)
    assert '"' + "x" * (ECHO_CHARS - 2) + "…" in errors[0]
    assert during - before < 16 * MB and after - before < 16 * MB

    async def others_unaffected():
        ws = await connect(live.port)
        await speaks(ws, SENTENCE, expected(SENTENCE))
        ws.close()
    asyncio.run(others_unaffected())
    assert live.stop() == 0, live.stderr()


def test_invalid_utf8_in_a_text_frame_gets_a_1007_close_frame(server):
    """RFC 6455 8.1: a text message that is not UTF-8 fails the connection with 1007, sent as a
    close frame (Tornado alone drops TCP without one)."""
    ws = RawWebSocket(server)
    assert json.loads(ws.recv()[1])["type"] == "ready"
    ws.send(b'{"type":"text","text":"\xff\xfe"}')
    texts, _, code, reason = ws.until_close(timeout=10)
    ws.close()
    assert (texts, code) == ([], 1007), reason
    assert reason == "text message is not valid UTF-8"


# --- HTTP --------------------------------------------------------------------------------------
def http_raw(port, head: bytes, body: bytes = b"", timeout=10.0):
    """Send a raw request; (status, headers text, body) of the answer, read until the server
    closes (every answer here ends the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head_out, _, body_out = data.partition(b"\r\n\r\n")
    status = int(head_out.split()[1]) if head_out else None
    return status, head_out.decode("latin-1"), body_out


def speech_head(port, length: int, content_type="application/json") -> bytes:
    return (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode()


def metric(port, name, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                   if labels else "")
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith(want + " ")), 0.0)


def test_over_limit_content_length_is_413_at_once_and_nothing_stays_behind(start_server):
    """Content-Length over 64 KiB (and over Tornado's own 100 MB) is answered with OpenAI's 413
    before any body is read; 2000 of them leave no request behind (each is counted finished in
    /metrics) and no memory."""
    live = start_server()
    for length in (MAX_BODY_BYTES + 1, 1_000_000, 200_000_000):
        status, head, body = http_raw(live.port, speech_head(live.port, length))
        assert status == 413, (length, head)
        assert json.loads(body) == {"error": {
            "message": f"request body is {length} bytes; at most {MAX_BODY_BYTES}",
            "type": "invalid_request_error", "param": None, "code": "request_too_large"}}
    before = rss_bytes(live.proc.pid)
    finished = metric(live.port, "soprano_requests_total", endpoint="/v1/audio/speech")
    for _ in range(2000):
        assert http_raw(live.port, speech_head(live.port, 200_000_000))[0] == 413
    time.sleep(0.5)
    after = rss_bytes(live.proc.pid)
    print(f"server RSS: {before / MB:.1f} MB before 2000 over-limit requests, "
          f"{after / MB:.1f} MB after")
    assert metric(live.port, "soprano_requests_total",
                  endpoint="/v1/audio/speech") - finished == 2000
    assert after - before < 8 * MB
    started = time.monotonic()
    assert live.stop() == 0
    assert time.monotonic() - started < 5
    assert " 500 POST" not in live.stderr()


# --- slow clients and the session cap ---------------------------------------------------------
def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_within(sock, seconds) -> bool:
    """Whether the server ends ``sock`` within ``seconds`` (reading whatever it sends first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_and_idle_clients_time_out(start_server):
    """Headers at a trickle, a body at a trickle, 100 connections that send nothing and a
    WebSocket that never sends its first message are all closed by their timeouts (1 s here), and
    the server's file descriptors and memory come back."""
    live = start_server("--idle-timeout", "1", "--body-timeout", "1",
                        "--first-message-timeout", "1")
    pid = live.proc.pid
    fds, rss = open_fds(pid), rss_bytes(pid)
    idle = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(100)]
    trickle_head = socket.create_connection(("127.0.0.1", live.port))
    trickle_body = socket.create_connection(("127.0.0.1", live.port))
    trickle_body.sendall(speech_head(live.port, 100))
    ws = RawWebSocket(live.port)
    assert json.loads(ws.recv()[1])["type"] == "ready"
    time.sleep(0.3)
    peak = open_fds(pid)
    assert peak >= fds + 100
    started = time.monotonic()
    for byte in b"POST /v1/audio/speech HTTP/1.1\r\n"[:12]:  # 1 byte / 0.2 s
        for sock, data in ((trickle_head, bytes([byte])), (trickle_body, b"{")):
            try:
                sock.sendall(data)
            except OSError:  # closed by the server: the point of the test
                pass
        time.sleep(0.2)
    assert closed_within(trickle_head, 2) and closed_within(trickle_body, 2)
    assert time.monotonic() - started < 4.5
    _, _, code, reason = ws.until_close(timeout=5)
    assert (code, reason) == (CLOSE_IDLE, "no message within 1 s of connecting")
    assert all(closed_within(s, 2) for s in idle)
    for s in [*idle, trickle_head, trickle_body]:
        s.close()
    ws.close()
    time.sleep(0.5)
    print(f"server fds: {fds} before, {peak} with 103 slow clients, {open_fds(pid)} after; "
          f"RSS {rss / MB:.1f} MB before, {rss_bytes(pid) / MB:.1f} MB after")
    assert open_fds(pid) <= fds + 2
    assert rss_bytes(pid) - rss < 8 * MB
    assert live.stop() == 0, live.stderr()


def test_sessions_beyond_max_sessions_are_refused_with_1013(start_server):
    live = start_server("--max-sessions", "2")

    async def go():
        first, second = await connect(live.port), await connect(live.port)
        third = await websocket_connect(f"ws://127.0.0.1:{live.port}/v1/stream")
        assert json.loads(await third.read_message()) == {
            "type": "error", "message": "server full: 2 sessions at most; retry shortly"}
        assert await third.read_message() is None
        assert third.close_code == CLOSE_FULL
        first.close()
        await asyncio.sleep(0.3)
        again = await connect(live.port)  # a place came free
        again.close()
        second.close()
    asyncio.run(go())
    assert live.stop() == 0, live.stderr()


# --- cross-site use ------------------------------------------------------------------------------
def upgrade_status(port, origin=None) -> int:
    ws = RawWebSocket(port, headers=[f"Origin: {origin}"] if origin is not None else [])
    ws.close()
    return ws.status


def test_cross_origin_websocket_is_refused_same_origin_and_no_origin_accepted(server):
    assert upgrade_status(server, "http://evil.example") == 403
    assert upgrade_status(server, "null") == 403
    assert upgrade_status(server, f"http://127.0.0.1:{server}") == 101  # the demo page's own
    assert upgrade_status(server) == 101  # not a browser: no Origin


def test_allowed_origins_let_named_sites_or_any_site_in(start_server):
    live = start_server("--allowed-origins", "https://app.example,http://b.example:8080")
    assert upgrade_status(live.port, "https://app.example") == 101
    assert upgrade_status(live.port, "http://b.example:8080") == 101
    assert upgrade_status(live.port, "http://b.example") == 403
    assert upgrade_status(live.port, "http://evil.example") == 403
    assert live.stop() == 0
    live = start_server("--allowed-origins", "*")
    assert upgrade_status(live.port, "http://evil.example") == 101
    assert upgrade_status(live.port, "null") == 101
    assert live.stop() == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_speech_body_that_is_not_json_is_415(server, content_type):
    """A page on another site can POST these without a CORS preflight: refused."""
    body = json.dumps({"model": "tts-1", "input": "Hello.", "voice": "alloy"}).encode()
    head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{server}\r\n"
            + (f"Content-Type: {content_type}\r\n" if content_type else "")
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    status, _, answer = http_raw(server, head, body)
    assert status == 415
    assert json.loads(answer) == {"error": {
        "message": f"Content-Type must be application/json, got {json.dumps(content_type)}",
        "type": "invalid_request_error", "param": None, "code": "unsupported_media_type"}}


# --- message rate ---------------------------------------------------------------------------------
def test_messages_beyond_the_rate_are_dropped_with_one_error_and_the_session_lives(start_server):
    """--max-messages-per-second 5: of 60 messages sent at once the first 5 are taken, the rest
    dropped, and only the first dropped is answered (one error, metrics kind rate_limited); a
    second later the session speaks as before."""
    live = start_server("--max-messages-per-second", "5")
    ws = RawWebSocket(live.port)
    assert json.loads(ws.recv()[1])["type"] == "ready"
    for _ in range(60):
        ws.send('{"type":"config","speed":1.0}')  # answered by nothing when taken
    ws.send('{"type":"flush"}')  # dropped too: no done
    time.sleep(1.5)  # the bucket refills (5 a second, 5 at most)
    ws.send('{"type":"text","text":"Hello there, speaking again."}')
    ws.send('{"type":"flush"}')
    texts, frames = [], 0
    while not texts or texts[-1]["type"] != "done":
        opcode, data = ws.recv()
        if opcode == 0x1:
            texts.append(json.loads(data))
        else:
            frames += opcode == 0x2
    ws.close()
    assert [t["type"] for t in texts] == ["error", "done"], texts
    assert texts[0]["message"].startswith("rate limited: more than 5 messages a second")
    assert frames > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{live.port}/metrics", timeout=10) as r:
        assert 'soprano_errors_total{kind="rate_limited"} 1.0' in r.read().decode()
    assert live.stop() == 0, live.stderr()


def test_token_bucket_allows_its_rate_in_bursts_of_one_second():
    from soprano.server.session import TokenBucket
    now = [0.0]
    bucket = TokenBucket(4, clock=lambda: now[0])
    assert [bucket.take() for _ in range(6)] == [True] * 4 + [False] * 2
    now[0] += 0.25  # one token back
    assert [bucket.take() for _ in range(2)] == [True, False]
    now[0] += 10.0  # saved up to one second's worth, no more
    assert sum(bucket.take() for _ in range(10)) == 4
    assert all(TokenBucket(0).take() for _ in range(10_000))  # 0: no limit
