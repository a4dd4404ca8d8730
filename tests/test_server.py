"""The real server in a subprocess on a loopback port, driven over WebSocket and HTTP."""
import asyncio
import json
import signal
import time

import numpy as np
import pytest

from helpers import SENTENCE, assert_same_audio, collect, connect, send, speaks
from helpers import SERVER_MAX_NEW_TOKENS as MAX_NEW_TOKENS
from soprano.audio import to_int16
from soprano.server.protocol import decode_frame


def test_text_flush_streams_frames_in_order_then_done(server, expected):
    async def go():
        ws = await connect(server)
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        headers, audio, messages = await collect(ws)
        assert messages == [{"type": "done"}]
        assert len(headers) > 2
        assert [h["chunk_id"] for h in headers] == list(range(1, len(headers) + 1))
        assert all(h == {"chunk_id": h["chunk_id"], "sample_rate": 32000, "channels": 1,
                         "format": "pcm_s16le"} for h in headers)
        assert_same_audio(audio, expected(SENTENCE))
        # the session stays usable and chunk ids keep counting
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        more, audio2, _ = await collect(ws)
        assert more[0]["chunk_id"] == len(headers) + 1
        assert_same_audio(audio2, expected(SENTENCE))
        ws.close()
    asyncio.run(go())


def test_bad_input_answers_error_and_session_lives_on(server, expected):
    async def go():
        ws = await connect(server)
        bad = ["{oops", "[]", json.dumps({"type": "dance"}), json.dumps({"type": "text"}),
               json.dumps({"type": "config", "speed": 9}),
               json.dumps({"type": "config", "voice_path": "../../etc/passwd"}),
               json.dumps({"type": "config", "language_id": "de"})]
        for raw in bad:
            await ws.write_message(raw)
            reply = json.loads(await ws.read_message())
            assert reply["type"] == "error" and reply["message"], raw
        await ws.write_message(b"\x01\x02", binary=True)
        assert "binary frames" in json.loads(await ws.read_message())["message"]
        await speaks(ws, SENTENCE, expected(SENTENCE))
        ws.close()
    asyncio.run(go())


def test_config_with_a_bad_field_changes_nothing(server, expected):
    """Every field is checked before any is applied: a good speed beside a bad voice is not
    applied, so the next flush is at the old speed."""
    async def go():
        ws = await connect(server)
        for bad in ({"speed": 2.0, "voice_path": "x"}, {"speed": 2.0, "language_id": "de"},
                    {"speed": 2.0, "min_chars": 0}):
            await send(ws, type="config", **bad)
            assert json.loads(await ws.read_message())["type"] == "error"
        await speaks(ws, SENTENCE, expected(SENTENCE))
        ws.close()
    asyncio.run(go())


def test_long_digit_run_is_spoken_not_an_error(server, expected):
    """A 40-digit run (past what can be read as a number) is read digit by digit: audio and
    done, no error, as ``infer`` of the same text."""
    text = "Call 1234567890123456789012345678901234567890 now."

    async def go():
        ws = await connect(server)
        await speaks(ws, text, expected(text))
        ws.close()
    asyncio.run(go())


def test_oversized_message_closes_with_1009(server):
    async def go():
        ws = await connect(server)
        await ws.write_message("x" * (70 * 1024))
        assert await ws.read_message() is None
        assert ws.close_code == 1009
    asyncio.run(go())


def test_stop_cancels_and_answers_done_quickly(server, expected):
    async def go():
        ws = await connect(server)
        long_text = " ".join([SENTENCE] * 8)
        await send(ws, type="text", text=long_text)
        await send(ws, type="flush")
        first = await asyncio.wait_for(ws.read_message(), 30)
        assert isinstance(first, bytes)
        start = time.monotonic()
        await send(ws, type="stop")
        while True:
            m = await asyncio.wait_for(ws.read_message(), 10)
            if isinstance(m, str):
                assert json.loads(m) == {"type": "done"}
                break
        assert time.monotonic() - start < 1.0
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        _, audio, _ = await collect(ws)
        assert_same_audio(audio, expected(SENTENCE))
        ws.close()
    asyncio.run(go())


def test_delay_timer_cuts_text_without_boundary(server, expected):
    async def go():
        ws = await connect(server)
        await send(ws, type="config", max_delay_ms=150)
        text = "no punctuation in this text at all"
        await send(ws, type="text", text=text)
        start = time.monotonic()
        m = await asyncio.wait_for(ws.read_message(), 30)
        assert isinstance(m, bytes), m
        assert time.monotonic() - start >= 0.15
        await send(ws, type="flush")
        _, audio, _ = await collect(ws)
        whole = np.concatenate([np.frombuffer(decode_frame(m)[1], "<i2"), audio])
        assert_same_audio(whole, expected(text))
        ws.close()
    asyncio.run(go())


def test_chunker_splits_stream_of_text_messages(server, expected):
    async def go():
        ws = await connect(server)
        await send(ws, type="config", max_delay_ms=10_000)
        first, second = "The first chunk of this stream is here.", "And then a second one"
        for piece in ["The first chunk ", "of this stream is here.", " And then ", "a second one"]:
            await send(ws, type="text", text=piece)
        await send(ws, type="flush")
        _, audio, messages = await collect(ws)
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, np.concatenate([expected(first), expected(second)]))
        ws.close()
    asyncio.run(go())


@pytest.mark.slow  # 16 sessions on 4 lanes: ~20 s on two cores
def test_sixteen_concurrent_sessions_get_their_own_audio(server, expected):
    texts = [f"Session number {i} says hello to the server, clearly." for i in range(16)]

    async def one(text):
        ws = await connect(server)
        await send(ws, type="text", text=text)
        await send(ws, type="flush")
        headers, audio, _ = await collect(ws, timeout=120)
        ws.close()
        return headers, audio

    async def go():
        return await asyncio.gather(*(one(t) for t in texts))

    for text, (headers, audio) in zip(texts, asyncio.run(go())):
        assert [h["chunk_id"] for h in headers] == list(range(1, len(headers) + 1))
        assert_same_audio(audio, expected(text))


@pytest.mark.slow  # a server of its own; the fast lane drains on SIGTERM in test_server_openai
def test_include_text_resample_and_sigterm_drain(start_server, expected):
    live = start_server("--include-text", "--sample-rate", "16000")
    proc, port = live.proc, live.port

    async def go():
        ws = await connect(port)
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        first = await asyncio.wait_for(ws.read_message(), 30)
        proc.send_signal(signal.SIGTERM)  # in-flight work must still be delivered
        headers, audio, messages = await collect(ws)
        h0, pcm0 = decode_frame(first)
        headers.insert(0, h0)
        audio = np.concatenate([np.frombuffer(pcm0, "<i2"), audio])
        assert messages == [{"type": "done"}]
        assert all(h["text"] == "Hello there, this is the streaming server speaking to you."
                   and h["sample_rate"] == 16000 for h in headers)
        assert abs(len(audio) - len(expected(SENTENCE)) / 2) <= 2
        assert await ws.read_message() is None
        assert ws.close_code == 1001

    asyncio.run(go())
    assert proc.wait(timeout=30) == 0


def test_config_speed_applies_to_following_text(server, tiny_tts):
    async def go():
        ws = await connect(server)
        await send(ws, type="config", speed=1.5)
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        _, audio, messages = await collect(ws)
        assert messages == [{"type": "done"}]
        ws.close()
        return audio

    audio = asyncio.run(go())
    sentence = tiny_tts.generate([SENTENCE], max_new_tokens=MAX_NEW_TOKENS)[0][0]
    want = to_int16(tiny_tts.decode_hidden(sentence.generated.hidden, 1.5))
    assert_same_audio(audio, want)
    assert len(audio) == 512 * round(4 * (len(sentence.generated.token_ids) - 1) / 1.5)
