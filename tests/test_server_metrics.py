"""``GET /metrics`` on the real server subprocess: counters follow sessions and errors,
histograms get observations, and cancelled work gives its KV-cache slots back within a second."""
import asyncio
import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from helpers import SENTENCE, collect, connect, send

INFLIGHT = 4
# Random weights rarely emit EOS, so every sentence runs to this bound: long enough that the
# cancellation test catches all jobs mid-synthesis, short enough for a flush test on ``tiny``.
MAX_NEW_TOKENS = 200


@pytest.fixture(scope="module")
def long_server(start_server):
    """Port of a live server whose every sentence runs ``MAX_NEW_TOKENS`` tokens on
    ``INFLIGHT`` KV-cache slots, shared by this module's tests; it must exit 0 on SIGTERM."""
    s = start_server("--workers", "2", "--tts-inflight", str(INFLIGHT),
                     "--max-new-tokens", str(MAX_NEW_TOKENS))
    yield s.port
    assert s.stop() == 0, s.stderr()


async def scrape(port) -> dict:
    """{(sample name, ((label, value), ...)): value} from one /metrics response."""
    r = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
    assert r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.body.decode())
            for s in family.samples}


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_for(port, condition, timeout: float) -> dict:
    """Scrape until ``condition(metrics)`` holds; the last scrape either way."""
    deadline = time.monotonic() + timeout
    while True:
        m = await scrape(port)
        if condition(m) or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.05)


def test_sessions_requests_and_errors_are_counted(long_server):
    bad = {"invalid_json": "{oops", "bad_message": json.dumps({"type": "dance"}),
           "bad_field": json.dumps({"type": "config", "speed": 9}),
           "oversized": json.dumps({"type": "text", "text": "x" * 10_001})}

    async def go():
        before = await scrape(long_server)
        ws = await connect(long_server)
        for raw in bad.values():
            await ws.write_message(raw)
            assert json.loads(await ws.read_message())["type"] == "error"
        await ws.write_message(b"\x00", binary=True)
        assert json.loads(await ws.read_message())["type"] == "error"
        during = await scrape(long_server)
        ws.close()
        after = await wait_for(long_server, lambda m: value(m, "soprano_sessions_open")
                                    == value(before, "soprano_sessions_open"), timeout=5)
        return before, during, after

    before, during, after = asyncio.run(go())

    def delta(name, **labels):
        return value(during, name, **labels) - value(before, name, **labels)

    assert delta("soprano_sessions_open") == 1
    assert delta("soprano_sessions_opened_total") == 1
    assert delta("soprano_requests_total", endpoint="/v1/stream") == 1
    assert delta("soprano_requests_total", endpoint="/metrics") == 1  # ``before``'s own scrape
    for kind in [*bad, "binary"]:
        assert delta("soprano_errors_total", kind=kind) == 1, kind
    assert delta("soprano_errors_total", kind="busy") == 0
    assert value(during, "process_resident_memory_bytes") > 0
    assert value(after, "soprano_sessions_open") == value(before, "soprano_sessions_open")
    assert value(after, "soprano_sessions_opened_total") == value(during,
                                                                  "soprano_sessions_opened_total")


def test_flush_observes_time_to_first_audio_and_real_time_factor(long_server):
    async def go():
        before = await scrape(long_server)
        ws = await connect(long_server)
        sent = time.perf_counter()
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        first = await asyncio.wait_for(ws.read_message(), 60)
        client_ttfa = time.perf_counter() - sent
        assert isinstance(first, bytes)
        await collect(ws, timeout=120)
        ws.close()
        return before, await scrape(long_server), client_ttfa

    before, after, client_ttfa = asyncio.run(go())

    def delta(name):
        return value(after, name) - value(before, name)

    # One chunk: one observation of each. The server's interval lies inside the client's, give
    # or take the wake-ups between the server's write completing and the client's read.
    assert delta("soprano_time_to_first_audio_seconds_count") == 1
    assert 0 < delta("soprano_time_to_first_audio_seconds_sum") <= client_ttfa + 0.01
    assert delta("soprano_real_time_factor_count") == 1
    assert delta("soprano_real_time_factor_sum") > 0
    assert value(after, "soprano_jobs_inflight") == 0
    assert value(after, "soprano_kv_lanes_free") == INFLIGHT


def test_cancellation_frees_slots_within_one_second(long_server):
    """Stop some sessions and drop others mid-synthesis: every lane is back within 1 s."""
    n_sessions = INFLIGHT + 2   # two more than the slots, so the waiting queue is used too
    long_text = " ".join([SENTENCE] * 8)

    async def go():
        sockets = [await connect(long_server) for _ in range(n_sessions)]
        for ws in sockets:
            await send(ws, type="text", text=long_text)
            await send(ws, type="flush")
        busy = await wait_for(long_server, lambda m: value(m, "soprano_jobs_queued") == 2
                                   and value(m, "soprano_kv_lanes_free") == 0, timeout=30)
        stopped, dropped = sockets[::2], sockets[1::2]
        for ws in stopped:
            await send(ws, type="stop")
        for ws in dropped:
            ws.protocol.stream.close()  # abrupt: no close handshake, the TCP stream just ends
        cancelled = time.monotonic()
        idle = await wait_for(long_server, lambda m: value(m, "soprano_jobs_inflight") == 0
                                   and value(m, "soprano_kv_lanes_free") == INFLIGHT, timeout=1.0)
        elapsed = time.monotonic() - cancelled
        for ws in stopped:  # each stopped session is answered ``done`` and lives on
            while isinstance(m := await asyncio.wait_for(ws.read_message(), 10), bytes):
                pass
            assert json.loads(m) == {"type": "done"}
            ws.close()
        return busy, idle, elapsed

    busy, idle, elapsed = asyncio.run(go())
    assert value(busy, "soprano_jobs_inflight") == INFLIGHT
    assert value(busy, "soprano_jobs_queued") == 2
    assert value(idle, "soprano_jobs_inflight") == 0, f"jobs still running after {elapsed:.2f} s"
    assert value(idle, "soprano_jobs_queued") == 0
    assert value(idle, "soprano_kv_lanes_free") == INFLIGHT
    assert elapsed <= 1.0
