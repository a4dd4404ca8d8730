"""The /v1/stream protocol without sockets: message validation, frames, the text chunker."""
import json
import struct

import pytest

from soprano.server import protocol
from soprano.server.chunker import Chunker

CFG = protocol.StreamConfig()

BAD = [
    ("not json", "invalid JSON"),
    ("{", "invalid JSON"),
    ('{"type": "text", "text": NaN}', "NaN is not a number"),
    ("[1, 2]", "must be a JSON object, got list"),
    ('"text"', "must be a JSON object, got str"),
    ("42", "must be a JSON object, got int"),
    ("null", "must be a JSON object, got NoneType"),
    ("{}", "missing 'type'"),
    ('{"type": "speak"}', 'unknown type "speak"'),
    ('{"type": 5}', "unknown type 5"),
    ('{"type": "text"}', "'text' must be a string, got null"),
    ('{"type": "text", "text": 5}', "'text' must be a string, got 5"),
    ('{"type": "text", "text": ["a"]}', "'text' must be a string"),
    ('{"type": "text", "text": ""}', "'text' is empty"),
    (json.dumps({"type": "text", "text": "a" * 10_001}), "at most 10000 per message"),
    ('{"type": "config", "speed": "fast"}', "'speed' must be a number"),
    ('{"type": "config", "speed": true}', "'speed' must be a number"),
    ('{"type": "config", "speed": -1}', "'speed' must be in 0.5..2.0, got -1"),
    ('{"type": "config", "speed": 0}', "'speed' must be in 0.5..2.0"),
    ('{"type": "config", "speed": 1e300}', "'speed' must be in 0.5..2.0"),
    ('{"type": "config", "speed": Infinity}', "Infinity is not a number"),
    ('{"type": "config", "min_chars": 0}', "'min_chars' must be in 1..1000, got 0"),
    ('{"type": "config", "min_chars": 2.5}', "'min_chars' must be an integer"),
    ('{"type": "config", "max_chars": 5000}', "'max_chars' must be in 1..2000"),
    ('{"type": "config", "max_delay_ms": -5}', "'max_delay_ms' must be in 0..10000"),
    ('{"type": "config", "min_words": "two"}', "'min_words' must be an integer"),
    ('{"type": "config", "min_chars": 200, "max_chars": 100}', "must not exceed 'max_chars'"),
    ('{"type": "config", "min_chars": 500}',
     "'min_chars' (500) must not exceed 'max_chars' (160)"),
    ('{"type": "config", "language_id": "fr"}', "language 'fr' is not supported"),
    ('{"type": "config", "language_id": 3}', "'language_id' must be a string"),
    ('{"type": "config", "voice_path": 7}', "'voice_path' must be a string"),
    ('{"type": "config", "voice_path": "x"}', "voice 'x' is not available"),
    ('{"type": "config", "speed": 2.0, "voice_path": "x"}', "voice 'x' is not available"),
    ('{"type": "config", "min_chars": 10, "language_id": "de"}', "language 'de'"),
    ('{"type": "config", "volume": 3}', "unknown config field(s): volume"),
    (b"\x00\x01", "binary frames are not accepted"),
    ("[" * 60_000, "invalid JSON: nested too deeply"),
    ('{"type": "config", "min_chars": ' + "9" * 5000 + "}", "invalid JSON: Exceeds the limit"),
    ('{"type": "config", "speed": 1' + "0" * 400 + "}", "'speed' must be in 0.5..2.0, got 1000"),
]


@pytest.mark.parametrize("raw,message", BAD)
def test_bad_messages_are_protocol_errors(raw, message):
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.parse_client(raw, CFG)
    assert message in str(e.value)


@pytest.mark.parametrize("msg", [
    {"type": "x" * 60_000}, {"type": "text", "text": ["y" * 60_000]},
    {"type": "config", "voice_path": "v" * 60_000}, {"type": "config", "language_id": "l" * 9000},
    {"type": "config", "speed": "s" * 9000}, {"type": "config", "z" * 9000: 1},
])
def test_echoed_values_are_clipped(msg):
    """A bad value is quoted back in at most ECHO_CHARS characters, ending in an ellipsis."""
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.parse_client(json.dumps(msg), CFG)
    assert len(str(e.value)) < protocol.ECHO_CHARS + 80
    assert "…" in str(e.value)


def test_good_messages():
    assert protocol.parse_client('{"type":"flush"}', CFG) == protocol.Flush()
    assert protocol.parse_client('{"type":"stop"}', CFG) == protocol.Stop()
    assert protocol.parse_client('{"type":"text","text":"hi"}', CFG) == protocol.Text("hi")
    cfg = protocol.parse_client(json.dumps({
        "type": "config", "speed": 1.5, "language_id": "en", "min_chars": 10, "min_words": 1,
        "max_chars": 100, "max_delay_ms": 0, "voice_path": None}), CFG)
    assert cfg.changes == {"speed": 1.5, "language_id": "en", "min_chars": 10, "min_words": 1,
                           "max_chars": 100, "max_delay_ms": 0, "voice_path": None}


def test_server_messages_and_frames_bytes():
    assert json.loads(protocol.ready("abc")) == {"type": "ready", "session_id": "abc"}
    assert json.loads(protocol.error("bad")) == {"type": "error", "message": "bad"}
    assert json.loads(protocol.done()) == {"type": "done"}
    pcm = struct.pack("<3h", 1, -2, 32767)
    frame = protocol.audio_frame(7, pcm, 32000, text="héllo")
    head = (b'{"chunk_id":7,"sample_rate":32000,"channels":1,"format":"pcm_s16le",'
            b'"text":"h\\u00e9llo"}')
    assert frame == struct.pack(">I", len(head)) + head + pcm
    assert protocol.decode_frame(frame) == (
        {"chunk_id": 7, "sample_rate": 32000, "channels": 1, "format": "pcm_s16le",
         "text": "héllo"}, pcm)
    assert "text" not in protocol.decode_frame(protocol.audio_frame(1, b"", 16000))[0]


def test_chunker_cuts_at_first_boundary_meeting_minimums():
    c = Chunker(min_chars=10, min_words=2, max_chars=160)
    assert c.push("Hi. How are") == []
    assert c.push(" you today? Fine") == ["Hi. How are you today?"]
    assert c.buffer == " Fine"
    assert c.take_all() == "Fine" and c.buffer == ""


def test_chunker_words_minimum_and_newline_and_semicolon():
    c = Chunker(min_chars=1, min_words=3, max_chars=160)
    assert c.push("One; two three; four\nfive six seven\n") == ["One; two three;",
                                                             "four\nfive six seven"]


def test_chunker_max_chars_cuts_at_last_space():
    c = Chunker(min_chars=24, min_words=2, max_chars=20)
    assert c.push("aaaa bbbb cccc dddd eeee ffff") == ["aaaa bbbb cccc dddd"]
    assert c.buffer == " eeee ffff"


def test_chunker_hard_cut_without_spaces():
    c = Chunker(min_chars=24, min_words=2, max_chars=10)
    assert c.push("x" * 25) == ["x" * 10, "x" * 10]
    assert c.buffer == "x" * 5
