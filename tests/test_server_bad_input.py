"""Named bad inputs against a live server: each gets its documented answer, word for word, and
the session (or, after a close, the server) goes on speaking.

Beyond the cases of test_server_protocol.py, test_server.py and test_server_limits.py: invalid
UTF-8 of other shapes, nesting bombs, numbers as strings, non-finite numbers, out-of-range
limits, voice paths, unknown fields, binary frames, huge and empty texts, storms of flush and
stop, config during synthesis, a client sending 10 000 messages a second, and bad
``/v1/audio/speech`` requests. "Goes on" is checked by audio: after the bad input the same
session speaks ``SENTENCE`` exactly as ``infer`` does.
"""
import asyncio
import json
import socket
import struct
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from helpers import RawWebSocket, SENTENCE, assert_same_audio, collect, connect, send, speaks
from soprano.server.protocol import decode_frame

VOICE = "is not available: this model has a single voice"
FORMATS = "use one of mp3, opus, flac, wav, pcm"
SPEED = "'speed' must be a number from 0.5 to 2.0, got"


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 120))


async def answer(ws):
    """The next JSON message, skipping nothing: bad input is answered before anything else."""
    m = await asyncio.wait_for(ws.read_message(), 30)
    assert isinstance(m, str), m
    return json.loads(m)


# --- one bad message, one exact error, the session speaks on --------------------------------------
ERRORS = {
    "max_chars_as_string": ('{"type":"config","max_chars":"100"}',
                            """'max_chars' must be an integer, got "100\""""),
    "speed_as_string": ('{"type":"config","speed":"1.0"}',
                        """'speed' must be a number, got "1.0\""""),
    "max_delay_as_string": ('{"type":"config","max_delay_ms":"220"}',
                            """'max_delay_ms' must be an integer, got "220\""""),
    "min_words_as_float": ('{"type":"config","min_words":2.0}',
                           "'min_words' must be an integer, got 2.0"),
    "speed_nan": ('{"type":"config","speed":NaN}', "invalid JSON: NaN is not a number"),
    "max_chars_infinity": ('{"type":"config","max_chars":Infinity}',
                           "invalid JSON: Infinity is not a number"),
    "speed_minus_infinity": ('{"type":"config","speed":-Infinity}',
                             "invalid JSON: -Infinity is not a number"),
    "speed_1e309": ('{"type":"config","speed":1e309}', "'speed' must be in 0.5..2.0, got Infinity"),
    "max_delay_1e309": ('{"type":"config","max_delay_ms":1e309}',
                        "'max_delay_ms' must be an integer, got Infinity"),
    "max_chars_negative": ('{"type":"config","max_chars":-1}',
                           "'max_chars' must be in 1..2000, got -1"),
    "max_chars_huge": ('{"type":"config","max_chars":1000000000000000000}',
                       "'max_chars' must be in 1..2000, got 1000000000000000000"),
    "max_chars_one_over": ('{"type":"config","max_chars":2001}',
                           "'max_chars' must be in 1..2000, got 2001"),
    "max_delay_negative": ('{"type":"config","max_delay_ms":-1}',
                           "'max_delay_ms' must be in 0..10000, got -1"),
    "max_delay_huge": ('{"type":"config","max_delay_ms":9223372036854775808}',
                       "'max_delay_ms' must be in 0..10000, got 9223372036854775808"),
    "max_delay_one_over": ('{"type":"config","max_delay_ms":10001}',
                           "'max_delay_ms' must be in 0..10000, got 10001"),
    "voice_absolute_path": ('{"type":"config","voice_path":"/etc/passwd"}',
                            f"voice '/etc/passwd' {VOICE}"),
    "voice_missing_absolute_path": ('{"type":"config","voice_path":"/no/such/file"}',
                                    f"voice '/no/such/file' {VOICE}"),  # same answer: no oracle
    "voice_windows_traversal": (r'{"type":"config","voice_path":"..\\..\\win.ini"}',
                                rf"voice '..\..\win.ini' {VOICE}"),
    "voice_file_url": ('{"type":"config","voice_path":"file:///etc/shadow"}',
                       f"voice 'file:///etc/shadow' {VOICE}"),
    "voice_empty": ('{"type":"config","voice_path":""}', f"voice '' {VOICE}"),
    "unknown_field_beside_good_speed": ('{"type":"config","speed":2.0,"pitch":3}',
                                        "unknown config field(s): pitch"),
    "type_in_capitals": ('{"type":"TEXT","text":"hi"}',
                         'unknown type "TEXT": expected config, text, flush or stop'),
    "type_null": ('{"type":null}', "missing 'type'"),
    "duplicate_key_last_wins": ('{"type":"config","speed":1.5,"speed":"x"}',
                                """'speed' must be a number, got "x\""""),
    "byte_order_mark": ('\ufeff{"type":"flush"}', "invalid JSON: Unexpected UTF-8 BOM (decode "
                        "using utf-8-sig) at position 0"),
    "trailing_garbage": ('{"type":"flush"} x', "invalid JSON: Extra data at position 17"),
    "array_nesting_bomb": ('{"type":"text","text":' + "[" * 60_000,
                           "invalid JSON: nested too deeply"),
    "object_nesting_bomb": ('{"a":' * 12_000, "invalid JSON: nested too deeply"),
    "shallow_nesting_as_text": ('{"type":"text","text":[[[[[["x"]]]]]]}',
                                """'text' must be a string, got [[[[[["x"]]]]]]"""),
    "emoji_text_one_over": (json.dumps({"type": "text", "text": "😀" * 10_001},
                                       ensure_ascii=False),
                            "'text' has 10001 characters; at most 10000 per message"),
}


@pytest.mark.parametrize("raw,message", ERRORS.values(), ids=ERRORS.keys())
def test_bad_message_gets_its_error_and_the_session_speaks_on(server, expected, raw, message):
    async def go():
        ws = await connect(server)
        await ws.write_message(raw)
        assert await answer(ws) == {"type": "error", "message": message}
        await speaks(ws, SENTENCE, expected(SENTENCE))  # nothing of the bad config applied
        ws.close()
    run(go())


# --- accepted oddities: the documented behaviour, not an error -----------------------------------
@pytest.mark.parametrize("msg", [
    {"type": "text", "text": SENTENCE, "id": 7},
    {"type": "text", "text": SENTENCE, "voice_path": "/etc/passwd"},
], ids=["unknown_field_in_text", "config_field_in_text"])
def test_unknown_fields_outside_config_are_ignored(server, expected, msg):
    """Only config messages are strict about fields (a typo there would silently change
    nothing); text, flush and stop ignore extra fields, as clients add ids of their own."""
    async def go():
        ws = await connect(server)
        await ws.write_message(json.dumps(msg))
        await ws.write_message('{"type":"flush","id":8}')
        _, audio, messages = await collect(ws)
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, expected(SENTENCE))
        ws.close()
    run(go())


@pytest.mark.parametrize("text", ["   \n\t ", "...!?;: ...", "😀🎉🔥", "\u200b\u200b"],
                         ids=["whitespace_only", "punctuation_only", "emoji_only",
                              "zero_width_only"])
def test_text_with_nothing_to_say_is_done_without_audio(server, expected, text):
    async def go():
        ws = await connect(server)
        await send(ws, type="text", text=text)
        await send(ws, type="flush")
        headers, _, messages = await collect(ws)
        assert (headers, messages) == ([], [{"type": "done"}])
        await speaks(ws, SENTENCE, expected(SENTENCE))
        ws.close()
    run(go())


def test_lone_surrogate_and_control_characters_are_skipped(server, expected):
    """JSON escapes can carry a lone surrogate or control characters (no UTF-8 text frame can):
    they are dropped when the text is normalized, the rest is spoken."""
    async def go():
        ws = await connect(server)
        await ws.write_message('{"type":"text","text":"\\ud800\\u0000\\u0007' + SENTENCE + '"}')
        await send(ws, type="flush")
        _, audio, messages = await collect(ws)
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, expected(SENTENCE))
        ws.close()
    run(go())


def test_empty_config_changes_nothing(server, expected):
    async def go():
        ws = await connect(server)
        await ws.write_message('{"type":"config"}')
        await speaks(ws, SENTENCE, expected(SENTENCE))  # no error came before the audio
        ws.close()
    run(go())


# --- frames a client must not send --------------------------------------------------------------
def raw_session(port) -> RawWebSocket:
    ws = RawWebSocket(port)
    assert ws.status == 101 and json.loads(ws.recv()[1])["type"] == "ready"
    return ws


def raw_answers(ws, until="done"):
    """Text messages up to the first of type ``until``, and the binary frames' chunk ids."""
    texts, ids = [], []
    while not texts or texts[-1]["type"] != until:
        opcode, data = ws.recv()
        if opcode == 0x1:
            texts.append(json.loads(data))
        elif opcode == 0x2:
            ids.append(decode_frame(data)[0]["chunk_id"])
    return texts, ids


@pytest.mark.parametrize("payload", [b'{"type":"flush"}', b""],
                         ids=["binary_frame_holding_json", "empty_binary_frame"])
def test_binary_frames_are_refused_and_the_buffer_kept(server, expected, payload):
    """Text sent before a binary frame is still buffered after its error."""
    ws = raw_session(server)
    ws.send(json.dumps({"type": "text", "text": SENTENCE}))
    ws.send(payload, opcode=0x2)
    ws.send('{"type":"flush"}')
    texts, ids = raw_answers(ws)
    ws.close()
    assert texts == [{"type": "error", "message":
                      "binary frames are not accepted from clients; send JSON text"},
                     {"type": "done"}]
    assert ids == list(range(1, len(ids) + 1)) and ids


@pytest.mark.parametrize("payload", [b'{"type":"text","text":"\xc0\xaf"}',
                                     b'{"type":"text","text":"\xed\xa0\x80"}',
                                     b'{"type":"text","text":"ab\xe2\x82'],
                         ids=["overlong_encoding", "utf8_encoded_surrogate",
                              "truncated_multibyte"])
def test_invalid_utf8_of_any_shape_closes_with_1007(server, expected, payload):
    ws = raw_session(server)
    ws.send(payload)
    assert ws.until_close(timeout=10) == ([], 0, 1007, "text message is not valid UTF-8")
    ws.close()
    run(speaks_in_new_session(server, expected))


async def speaks_in_new_session(port, expected):
    ws = await connect(port)
    await speaks(ws, SENTENCE, expected(SENTENCE))
    ws.close()


def test_ten_megabyte_text_closes_with_1009_before_it_is_read(server, expected):
    """The frame's length says 10 MB: the session is closed with 1009 at once, without
    waiting for (or storing) the body."""
    ws = raw_session(server)
    body = json.dumps({"type": "text", "text": "x" * (10 << 20)}).encode()
    ws.sock.sendall(bytes([0x81, 0x80 | 127]) + struct.pack(">Q", len(body)) + b"\0\0\0\0"
                    + body[:4096])
    assert ws.until_close(timeout=10) == ([], 0, 1009, "message too big")
    ws.close()
    run(speaks_in_new_session(server, expected))


def test_fragments_adding_up_past_64_kib_close_with_1009(server, expected):
    ws = raw_session(server)
    piece = b"x" * 8192
    try:
        for i in range(10):  # a text frame without FIN, then continuation frames
            head = bytes([0x01 if i == 0 else 0x00, 0x80 | 126]) + struct.pack(">H", len(piece))
            ws.sock.sendall(head + b"\0\0\0\0" + piece)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still sending: fine
    assert ws.until_close(timeout=10) == ([], 0, 1009, "message too big")
    ws.close()
    run(speaks_in_new_session(server, expected))


# --- storms and config mid-synthesis ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flush", "stop"])
def test_storm_within_the_queue_bound_is_answered_in_order(server, expected, kind):
    """60 messages with nothing to say, sent at once: 60 done, no error. (Tornado hands a
    burst to the session before the sender writes anything, so every answer is queued.)"""
    ws = raw_session(server)
    for _ in range(60):
        ws.send(json.dumps({"type": kind}))
    ws.send('{"type":"config","mark":1}')  # its error marks the end of the answers
    texts, ids = raw_answers(ws, until="error")
    ws.close()
    assert texts == [{"type": "done"}] * 60 + [
        {"type": "error", "message": "unknown config field(s): mark"}]
    assert ids == []
    run(speaks_in_new_session(server, expected))


def test_storm_past_the_queue_bound_closes_with_1008(server, expected):
    """150 flushes in one burst need 150 answers at once, past the 64 a session may have
    queued: closed as a client that does not read (the documented bound), the server goes on."""
    ws = raw_session(server)
    for _ in range(150):
        ws.send('{"type":"flush"}')
    texts, frames, code, reason = ws.until_close(timeout=10)
    ws.close()
    assert (frames, code, reason) == (
        0, 1008, "client is not reading: more than 64 messages or 256 KiB queued")
    assert set(map(json.dumps, texts)) <= {json.dumps({"type": "done"})}
    run(speaks_in_new_session(server, expected))


def test_stop_storm_during_synthesis_keeps_chunk_ids_contiguous(server, expected):
    """50 stops while a long text streams: 50 done, no audio after the first, and the next
    flush's frames continue the ids the client saw with no gap (frames a stop dropped from the
    queue never had ids)."""
    ws = raw_session(server)
    ws.send(json.dumps({"type": "text", "text": " ".join([SENTENCE] * 8)}))
    ws.send('{"type":"flush"}')
    opcode, first = ws.recv()
    assert opcode == 0x2
    for _ in range(50):
        ws.send('{"type":"stop"}')
    seen, texts = [decode_frame(first)[0]["chunk_id"]], []
    while len(texts) < 50:
        opcode, data = ws.recv()
        if opcode == 0x1:
            texts.append(json.loads(data))
        else:
            assert opcode == 0x2 and not texts, "audio after a stop's done"
            seen.append(decode_frame(data)[0]["chunk_id"])
    assert texts == [{"type": "done"}] * 50
    ws.send(json.dumps({"type": "text", "text": SENTENCE}))
    ws.send('{"type":"flush"}')
    texts, ids = raw_answers(ws)
    ws.close()
    assert texts == [{"type": "done"}]
    assert seen + ids == list(range(1, len(seen) + len(ids) + 1))


def test_bad_config_during_synthesis_leaves_the_running_audio_alone(server, expected):
    async def go():
        ws = await connect(server)
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        await send(ws, type="config", speed=2.0, max_chars=0)
        headers, audio, messages = await collect(ws)
        assert messages == [{"type": "error", "message": "'max_chars' must be in 1..2000, got 0"},
                            {"type": "done"}]
        assert_same_audio(audio, expected(SENTENCE))
        await speaks(ws, SENTENCE, expected(SENTENCE))  # speed 2.0 was not applied either
        ws.close()
    run(go())


def test_config_during_synthesis_applies_to_text_that_follows(server, expected):
    """Chunking limits changed mid-synthesis leave the running chunk alone; the next text is
    held whole (min_chars 1000, no delay cut) until flushed."""
    two = "Hello there. This is the streaming server."

    async def go():
        ws = await connect(server)
        await send(ws, type="text", text=SENTENCE)
        await send(ws, type="flush")
        await send(ws, type="config", min_chars=1000, max_chars=2000, max_delay_ms=10_000)
        _, audio, messages = await collect(ws)
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, expected(SENTENCE))
        await send(ws, type="text", text=two)
        with pytest.raises(asyncio.TimeoutError):  # not cut at its '.'
            await asyncio.wait_for(ws.read_message(), 1.0)
        await send(ws, type="flush")
        headers, audio, messages = await collect(ws)
        assert messages == [{"type": "done"}]
        assert_same_audio(audio, expected(two))  # one chunk: the two sentences together
        ws.close()
    run(go())


def test_ten_thousand_messages_a_second_are_rate_limited(server, expected):
    """10 000 config messages in one burst against the default 200 a second: dropped unread,
    one error per run of dropped messages, no more errors than the bucket refilled while they
    arrived, and a second later the session speaks (the accepted configs changed nothing)."""
    ws = raw_session(server)
    started = time.monotonic()
    ws.sock.sendall(b"".join(bytes([0x81, 0x80 | 29]) + b"\0\0\0\0"
                             + b'{"type":"config","speed":1.0}' for _ in range(10_000)))
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # the bucket refills
    ws.send(json.dumps({"type": "text", "text": SENTENCE}))
    ws.send('{"type":"flush"}')
    texts, ids = raw_answers(ws)
    ws.close()
    limited = {"type": "error", "message": "rate limited: more than 200 messages a second; this "
               "message and those after it are dropped until the rate falls"}
    assert texts[-1] == {"type": "done"} and ids == list(range(1, len(ids) + 1)) and ids
    assert 1 <= len(texts) - 1 and texts[:-1] == [limited] * (len(texts) - 1)
    assert len(texts) - 1 <= 1 + 200 * (elapsed + 1.5)


# --- /v1/audio/speech -----------------------------------------------------------------------------
def post(port, body: bytes, content_type="application/json", method="POST"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/audio/speech", method=method,
                                 data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def speech(**fields) -> bytes:
    return json.dumps({"model": "tts-1", "input": SENTENCE, "response_format": "pcm",
                       **fields}).encode()


def assert_speaks(port, expected):
    status, pcm = post(port, speech())
    assert status == 200
    assert_same_audio(np.frombuffer(pcm, "<i2"), expected(SENTENCE))


def error(message, param, code="invalid_value", kind="invalid_request_error"):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


SPEECH_ERRORS = {
    "format_in_capitals": (speech(response_format="WAV"), error(
        f'response_format "WAV" is not supported: {FORMATS}', "response_format")),
    "format_a_number": (speech(response_format=5), error(
        f"response_format 5 is not supported: {FORMATS}", "response_format")),
    "format_null": (speech(response_format=None), error(
        f"response_format null is not supported: {FORMATS}", "response_format")),
    "format_300_chars_clipped": (speech(response_format="x" * 300), error(
        f'response_format "{"x" * 62}… is not supported: {FORMATS}', "response_format")),
    "unknown_field_300_chars_clipped": (speech(**{"z" * 300: 1}), error(
        f"Unrecognized request argument supplied: {'z' * 63}…", "z" * 63 + "…",
        "unknown_parameter")),
    "speed_as_string": (speech(speed="1.0"), error(f'{SPEED} "1.0"', "speed")),
    "speed_nan": (speech()[:-1] + b', "speed": NaN}', error(f"{SPEED} NaN", "speed")),
    "speed_1e309": (speech()[:-1] + b', "speed": 1e309}', error(f"{SPEED} Infinity", "speed")),
    "speed_boolean": (speech(speed=True), error(f"{SPEED} true", "speed")),
    "speed_just_over": (speech(speed=2.0001), error(f"{SPEED} 2.0001", "speed")),
    "speed_negative": (speech(speed=-1), error(f"{SPEED} -1", "speed")),
    "input_null": (speech(input=None), error("'input' must be a string", "input")),
    "input_4097_emoji": (speech(input="😀" * 4097), error(
        "'input' has 4097 characters; at most 4096", "input", "string_above_max_length")),
    "model_a_number": (speech(model=5), error("'model' must be a string", "model")),
    "voice_id_a_number": (speech(voice={"id": 5}), error(
        "'voice' must be a voice name or {\"id\": \"…\"}", "voice")),
    "empty_body": (b"", error("request body is not valid JSON: Expecting value: line 1 column 1 "
                              "(char 0)", None, "invalid_json")),
}


@pytest.mark.parametrize("body,want", SPEECH_ERRORS.values(), ids=SPEECH_ERRORS.keys())
def test_bad_speech_request_gets_its_400_and_the_server_speaks_on(server, expected, body, want):
    assert post(server, body) == (400, want)
    assert_speaks(server, expected)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON"])
def test_json_content_type_variants_are_accepted(server, expected, content_type):
    status, pcm = post(server, speech(), content_type)
    assert status == 200
    assert_same_audio(np.frombuffer(pcm, "<i2"), expected(SENTENCE))


def test_json_lookalike_content_type_is_415(server, expected):
    assert post(server, speech(), "application/jsonp") == (415, error(
        'Content-Type must be application/json, got "application/jsonp"', None,
        "unsupported_media_type"))
    assert_speaks(server, expected)


def test_input_of_only_punctuation_is_empty_audio(server):
    assert post(server, speech(input="...!?;:")) == (200, b"")


def test_chunked_body_past_64_kib_is_413(server, expected):
    """No Content-Length to refuse up front: the body is counted as it comes, not stored."""
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", server), timeout=30) as s:
        s.sendall(f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{server}\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                  "Connection: close\r\n\r\n".encode())
        for _ in range(4):
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        data = b""
        while part := s.recv(65536):
            data += part
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"413"
    assert json.loads(body) == error(f"request body is {4 * 65536} bytes; at most 65536", None,
                                     "request_too_large")
    assert_speaks(server, expected)


def test_put_is_405_in_openai_shape(server, expected):
    assert post(server, speech(), method="PUT") == (405, error("Method Not Allowed", None, None))
    assert_speaks(server, expected)
