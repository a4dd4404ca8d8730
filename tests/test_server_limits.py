"""The server against hostile clients: what one client may cost it, and how it says no.

Real servers (tiny checkpoint, subprocesses); clients on plain sockets (``RawWebSocket``, raw
HTTP) where a library client would not misbehave. Memory is the server's RSS from /proc, read
before and after, and must stay within a bound however much a client sends.
"""
import asyncio
import json
import time

from helpers import RawWebSocket, SENTENCE, assert_same_audio, collect, connect, rss_bytes, send
from soprano.server.protocol import ECHO_CHARS
from soprano.server.session import CLOSE_NOT_READING, MAX_QUEUED_MESSAGES

MB = 1 << 20


def test_client_that_never_reads_is_closed_and_memory_stays_bounded(start_server, expected):
    """600 messages with a 60 000-character unknown type (each echoed in an error) and 20 000
    flushes (each answered done) from a client that reads nothing: the server closes it with
    1008 once its queue is over the bound, echoes are truncated, and RSS does not follow what
    the client sent (36 MB)."""
    live = start_server()
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
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        _, audio, messages = await collect(ws)
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, expected(SENTENCE))
        ws.close()
    asyncio.run(others_unaffected())
    assert live.stop() == 0, live.stderr()
