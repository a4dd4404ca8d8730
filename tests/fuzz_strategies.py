"""Hypothesis strategies and oracles for fuzzing the server's input parsers (tests/test_fuzz.py).

Not a test module. The strategies make client input that is mostly almost right (fields near
their limits, values of the wrong JSON type, unknown fields, truncated JSON, NaN) because
that is where parsers break; the oracles say what the answer must be, written from the
documented rules (README, SPEC.md) rather than from the parsers' code, so a parser that
drifts from the documentation fails here.
"""
import json
import math

from hypothesis import strategies as st

# --- JSON values --------------------------------------------------------------------------------
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def near(lo: int, hi: int):
    """Integers inside and just outside lo..hi, or any JSON value."""
    return st.integers(lo - 3, hi + 3) | st.sampled_from([lo, hi, lo - 1, hi + 1]) | VALUES


# --- /v1/stream client messages ----------------------------------------------------------------
INT_LIMITS = {"min_chars": (1, 1000), "max_chars": (1, 2000), "min_words": (0, 1000),
              "max_delay_ms": (0, 10_000)}
CONFIG_FIELDS = {"type", "speed", "language_id", "voice_path", *INT_LIMITS}
# Boundary characters, spaces and a little of everything else: texts the chunker has to cut.
TEXT = st.text(st.sampled_from("ab .?!;:\n\t") | st.characters(), max_size=60)

# In range, and small enough that min_chars and max_chars often meet (the cross-field check).
GOOD_CONFIG = st.fixed_dictionaries({"type": st.just("config")}, optional={
    **{key: st.integers(lo, lo + 40) | st.sampled_from([lo, hi])
       for key, (lo, hi) in INT_LIMITS.items()},
    "speed": st.floats(0.5, 2.0) | st.sampled_from([0.5, 2.0, 1]),
    "language_id": st.just("en"),
    "voice_path": st.none(),
})
BAD_FIELDS = st.sampled_from([*INT_LIMITS, "speed", "language_id", "voice_path", "colour"])


@st.composite
def one_bad_field(draw):
    """A good config with one field made bad: it must change nothing (issue 16)."""
    msg = draw(GOOD_CONFIG)
    key = draw(BAD_FIELDS)
    lo, hi = INT_LIMITS.get(key, (0.5, 2.0))
    msg[key] = draw(st.sampled_from([lo - 1, hi + 1, str(lo), float("nan"), None, True])
                    if key in INT_LIMITS or key == "speed" else VALUES.filter(
                        lambda v: v not in ("en", None)))
    return msg


CONFIG_MSG = st.fixed_dictionaries({"type": st.just("config")}, optional={
    **{key: near(lo, hi) for key, (lo, hi) in INT_LIMITS.items()},
    "speed": st.floats(0.3, 2.3) | st.sampled_from([0.5, 2.0, 1]) | VALUES,
    "language_id": st.sampled_from(["en", "fr", "EN", ""]) | VALUES,
    "voice_path": st.none() | st.sampled_from(["../../etc/passwd", "/etc/passwd", ""]) | VALUES,
    "colour": VALUES,
})
TEXT_MSG = st.fixed_dictionaries({"type": st.just("text")},
                                 optional={"text": TEXT | VALUES, "id": VALUES})
CONTROL_MSG = st.fixed_dictionaries({"type": st.sampled_from(["flush", "stop"])},
                                    optional={"extra": VALUES})
ANY_DICT = st.dictionaries(st.sampled_from(["type", "text", "speed", "x"]) | st.text(max_size=6),
                           VALUES, max_size=4)
MESSAGE_DICTS = (CONFIG_MSG | GOOD_CONFIG | one_bad_field() | TEXT_MSG | TEXT_MSG | CONTROL_MSG
                 | ANY_DICT)


@st.composite
def raw_messages(draw):
    """What a client may put in one WebSocket message: JSON of a (mostly) message-like dict,
    truncated JSON, any text, or a binary frame."""
    kind = draw(st.sampled_from(["json"] * 6 + ["truncated", "text", "binary"]))
    if kind == "binary":
        return draw(st.binary(max_size=40))
    if kind == "text":
        return draw(st.text(max_size=40))
    raw = json.dumps(draw(MESSAGE_DICTS))  # NaN and Infinity come out as JSON's non-numbers
    if kind == "truncated":
        return raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    return raw


def _finite(value) -> bool:
    """No NaN or infinity anywhere inside ``value``."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def judge_stream(raw, config: dict):
    """(kind, new config) for one client message per the documented protocol: kind is config,
    text, flush or stop when it is accepted, None when it must be answered with an error. A
    config is applied whole or not at all."""
    if isinstance(raw, bytes):
        return None, config
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        return None, config
    if not isinstance(msg, dict) or not _finite(msg):  # NaN/Infinity are not JSON numbers
        return None, config
    kind = msg.get("type")
    if kind == "text":
        text = msg.get("text")
        return ("text" if isinstance(text, str) and 1 <= len(text) <= 10_000 else None), config
    if kind in ("flush", "stop"):
        return kind, config
    if kind != "config" or set(msg) - CONFIG_FIELDS:
        return None, config
    new = dict(config)
    for key, (lo, hi) in INT_LIMITS.items():
        if key in msg:
            if type(msg[key]) is not int or not lo <= msg[key] <= hi:
                return None, config
            new[key] = msg[key]
    if "speed" in msg:
        if type(msg["speed"]) not in (int, float) or not 0.5 <= msg["speed"] <= 2.0:
            return None, config
        new["speed"] = float(msg["speed"])
    if "language_id" in msg:
        if msg["language_id"] != "en":
            return None, config
        new["language_id"] = "en"
    if "voice_path" in msg:
        if msg["voice_path"] is not None:  # the model has one voice: no path is accepted
            return None, config
        new["voice_path"] = None
    if new["min_chars"] > new["max_chars"]:
        return None, config
    return "config", new


# --- /v1/audio/speech bodies --------------------------------------------------------------------
SPEECH_FORMATS = ("mp3", "opus", "flac", "wav", "pcm")
SPEECH_DICTS = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["tts-1", "soprano"]) | VALUES,
    "input": st.text(max_size=30) | st.sampled_from(["", "  ", "x" * 4096, "x" * 4097])
    | VALUES,
    "voice": st.sampled_from(["alloy", ""]) | st.fixed_dictionaries({"id": st.text(max_size=5)})
    | VALUES,
    "response_format": st.sampled_from([*SPEECH_FORMATS, "aac", "WAV", "x" * 300]) | VALUES,
    "speed": st.floats(0.2, 2.5) | st.sampled_from([0.5, 2.0, 1]) | VALUES,
    "stream_format": st.sampled_from(["audio", "sse", "SSE", "y" * 300]) | VALUES,
    "instructions": st.sampled_from(["", "whisper"]) | VALUES,
    "z" * 300: VALUES,
})


@st.composite
def speech_bodies(draw):
    """A request body: JSON of a (mostly) request-like dict, as UTF-8 or truncated, or bytes."""
    kind = draw(st.sampled_from(["json"] * 6 + ["truncated", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    raw = json.dumps(draw(SPEECH_DICTS | ANY_DICT)).encode()
    return raw[:draw(st.integers(0, len(raw)))] if kind == "truncated" else raw


def judge_speech(body: bytes):
    """The (param, code) of the 400 a body must get per OpenAI's rules as the README narrows
    them, or None when it is a valid request (one error is reported; which one when several
    fields are bad is not part of the contract, so only whether it fails is judged)."""
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError):
        return "invalid_json"
    if not isinstance(msg, dict):
        return "invalid_json"
    if set(msg) - {"model", "input", "voice", "response_format", "speed", "stream_format",
                   "instructions"}:
        return "bad"
    if not isinstance(msg.get("model"), str) or not isinstance(msg.get("input"), str):
        return "bad"
    if not msg["input"].strip() or len(msg["input"]) > 4096:
        return "bad"
    voice = msg.get("voice", "")
    if not isinstance(voice, str) and not (isinstance(voice, dict) and list(voice) == ["id"]
                                           and isinstance(voice["id"], str)):
        return "bad"
    if msg.get("response_format", "mp3") not in SPEECH_FORMATS:
        return "bad"
    if msg.get("stream_format", "audio") not in ("audio", "sse"):
        return "bad"
    speed = msg.get("speed", 1.0)
    if type(speed) not in (int, float) or not 0.5 <= speed <= 2.0:
        return "bad"
    if msg.get("instructions"):
        return "bad"
    return None
