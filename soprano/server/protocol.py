"""The ``/v1/stream`` wire protocol as bytes and dicts, with no sockets involved.

Client messages are JSON objects with a ``type`` (config, text, flush, stop); ``parse_client``
validates one completely (every field of a config, before any is applied) or raises
``ProtocolError`` with the message the client will see, so a bad message never changes session
state. Server messages are JSON text (ready, error, done) and
binary audio frames: a 4-byte big-endian header length N, N bytes of UTF-8 JSON header, then
16-bit little-endian mono PCM. Kept byte-compatible with the Soprano-RS server's clients.
"""
import json
import math
import struct
from dataclasses import dataclass, field

from ..speed import SPEED_RANGE

MAX_TEXT_CHARS = 10_000          # one text message
ECHO_CHARS = 64                  # of a bad value quoted back in an error message
LIMITS = {
    "min_chars": (1, 1000),
    "max_chars": (1, 2000),
    "min_words": (0, 1000),
    "max_delay_ms": (0, 10_000),
}
LANGUAGES = ("en",)


class ProtocolError(ValueError):
    """A client message that is answered with an ``error`` message; the session lives on.

    ``kind`` (invalid_json, binary, bad_message, bad_field, oversized) labels the error count in
    ``/metrics``; the message itself is for people and may change.
    """

    def __init__(self, message: str, kind: str = "bad_field"):
        super().__init__(message)
        self.kind = kind


@dataclass
class StreamConfig:
    """Per-session settings, changed by ``config`` messages."""
    voice_path: str | None = None
    speed: float = 1.0
    language_id: str = "en"
    min_chars: int = 24
    min_words: int = 2
    max_chars: int = 160
    max_delay_ms: int = 220


@dataclass
class Config:
    changes: dict = field(default_factory=dict)


@dataclass
class Text:
    text: str


@dataclass
class Flush:
    pass


@dataclass
class Stop:
    pass


def clip(text: str) -> str:
    """``text`` cut to ``ECHO_CHARS`` characters with an ellipsis: a client's value quoted in an
    error message (a 60 000-character value must not come back whole)."""
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS - 1] + "…"


def echo(value) -> str:
    """A client's value as its JSON, clipped."""
    return clip(json.dumps(value, ensure_ascii=False))


def _int_field(msg: dict, key: str):
    value = msg[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"'{key}' must be an integer, got {echo(value)}")
    lo, hi = LIMITS[key]
    if not lo <= value <= hi:
        raise ProtocolError(f"'{key}' must be in {lo}..{hi}, got {echo(value)}")
    return value


def _config(msg: dict, current: StreamConfig) -> Config:
    known = {"type", "voice_path", "speed", "language_id", *LIMITS}
    unknown = sorted(set(msg) - known)
    if unknown:
        raise ProtocolError(f"unknown config field(s): {clip(', '.join(unknown))}")
    changes = {}
    for key in LIMITS:
        if key in msg:
            changes[key] = _int_field(msg, key)
    if "speed" in msg:
        speed = msg["speed"]
        if isinstance(speed, bool) or not isinstance(speed, (int, float)):
            raise ProtocolError(f"'speed' must be a number, got {echo(speed)}")
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1] or not math.isfinite(speed):
            raise ProtocolError(f"'speed' must be in {SPEED_RANGE[0]}..{SPEED_RANGE[1]}, "
                                f"got {echo(speed)}")
        changes["speed"] = float(speed)
    if "language_id" in msg:
        lang = msg["language_id"]
        if not isinstance(lang, str):
            raise ProtocolError(f"'language_id' must be a string, got {echo(lang)}")
        if lang not in LANGUAGES:
            raise ProtocolError(f"language '{clip(lang)}' is not supported: this model speaks "
                                f"{', '.join(LANGUAGES)}")
        changes["language_id"] = lang
    if "voice_path" in msg:
        voice = msg["voice_path"]
        if voice is not None and not isinstance(voice, str):
            raise ProtocolError(f"'voice_path' must be a string, got {echo(voice)}")
        if voice is not None:  # nothing is opened: the model has no voice files
            raise ProtocolError(f"voice '{clip(voice)}' is not available: this model has a single "
                                f"voice")
        changes["voice_path"] = voice
    min_chars = changes.get("min_chars", current.min_chars)
    max_chars = changes.get("max_chars", current.max_chars)
    if min_chars > max_chars:
        raise ProtocolError(f"'min_chars' ({min_chars}) must not exceed 'max_chars' "
                            f"({max_chars})")
    return Config(changes)


def _reject_constant(name: str):
    raise ProtocolError(f"invalid JSON: {name} is not a number", "invalid_json")


def parse_client(raw: str | bytes, current: StreamConfig):
    """One client message -> Config | Text | Flush | Stop, or ProtocolError."""
    if isinstance(raw, bytes):
        raise ProtocolError("binary frames are not accepted from clients; send JSON text",
                            "binary")
    try:
        msg = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"invalid JSON: {e.msg} at position {e.pos}",
                            "invalid_json") from None
    except ProtocolError:  # NaN/Infinity, from _reject_constant: a ValueError, not re-worded
        raise
    except RecursionError:  # "[[[[…" nested deeper than the parser's stack
        raise ProtocolError("invalid JSON: nested too deeply", "invalid_json") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise ProtocolError(f"invalid JSON: {e}", "invalid_json") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(msg).__name__}",
                            "bad_message")
    kind = msg.get("type")
    if kind is None:
        raise ProtocolError("missing 'type'", "bad_message")
    if kind == "config":
        return _config(msg, current)
    if kind == "text":
        text = msg.get("text")
        if not isinstance(text, str):
            raise ProtocolError(f"'text' must be a string, got {echo(text)}")
        if not text:
            raise ProtocolError("'text' is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise ProtocolError(f"'text' has {len(text)} characters; at most "
                                f"{MAX_TEXT_CHARS} per message", "oversized")
        return Text(text)
    if kind == "flush":
        return Flush()
    if kind == "stop":
        return Stop()
    raise ProtocolError(f"unknown type {echo(kind)}: expected config, text, flush or stop",
                        "bad_message")


def ready(session_id: str) -> str:
    return json.dumps({"type": "ready", "session_id": session_id})


def error(message: str) -> str:
    return json.dumps({"type": "error", "message": message})


def done() -> str:
    return json.dumps({"type": "done"})


def audio_frame(chunk_id: int, pcm: bytes, sample_rate: int, text: str | None = None) -> bytes:
    """Header length (u32 BE) + JSON header + PCM s16le mono."""
    header = {"chunk_id": chunk_id, "sample_rate": sample_rate, "channels": 1,
              "format": "pcm_s16le"}
    if text is not None:
        header["text"] = text
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + pcm


def decode_frame(frame: bytes) -> tuple[dict, bytes]:
    """Inverse of ``audio_frame`` (for clients and tests)."""
    if len(frame) < 4:
        raise ValueError("frame shorter than its 4-byte header length")
    (n,) = struct.unpack(">I", frame[:4])
    if len(frame) < 4 + n:
        raise ValueError(f"frame header says {n} bytes, frame has {len(frame) - 4}")
    return json.loads(frame[4:4 + n]), frame[4 + n:]
