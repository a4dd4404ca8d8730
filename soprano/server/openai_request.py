"""OpenAI's speech request and error shapes: parse and validate a ``/v1/audio/speech`` body.

Kept apart from the handler so the whole contract with clients is one place and testable
without a server. Fields: ``model`` (required; any name is answered by the loaded model),
``input`` (1..4096 characters), ``voice`` (a name or ``{"id": …}``; accepted, the model has one
voice), ``response_format`` (mp3 — OpenAI's default —, opus, flac, wav, pcm), ``speed``
(``soprano.speed``'s 0.5..2.0, narrower than OpenAI's 0.25..4.0), ``stream_format``
(``audio`` or ``sse``). Errors are OpenAI-shaped
``{"error": {"message", "type", "param", "code"}}`` so the official SDKs raise their usual
exceptions. ``instructions`` is refused: the model cannot follow them.
"""
import json
import math
from dataclasses import dataclass

from .. import encoders
from ..speed import SPEED_RANGE
from .protocol import clip, echo  # the WebSocket's rule for quoting a client's value: 64 chars

MAX_INPUT_CHARS = 4096    # OpenAI's limit
MAX_BODY_BYTES = 64 * 1024  # 4096 characters as JSON \u escapes (12 bytes for astral ones) fit
DEFAULT_FORMAT = "mp3"
STREAM_FORMATS = ("audio", "sse")
FIELDS = ("model", "input", "voice", "response_format", "speed", "stream_format",
          "instructions")
_ERROR_TYPES = {429: "rate_limit_error"}


class ApiError(Exception):
    """A request answered with an OpenAI-shaped error body and ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        kind = _ERROR_TYPES.get(self.status,
                                "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True)
class SpeechRequest:
    input: str
    response_format: str = DEFAULT_FORMAT
    stream_format: str = "audio"
    speed: float = 1.0


def _invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def parse_request(body: bytes) -> SpeechRequest:
    """Validate a request body completely, or raise the ``ApiError`` the client gets."""
    try:
        msg = json.loads(body)
    # ValueError: JSONDecodeError, or an integer of more than 4300 digits; RecursionError: nesting
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json")
    if not isinstance(msg, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    unknown = sorted(set(msg) - set(FIELDS))
    if unknown:
        name = clip(unknown[0])
        raise _invalid(name, f"Unrecognized request argument supplied: {name}",
                       "unknown_parameter")
    for name in ("model", "input"):
        if name not in msg:
            raise _invalid(name, f"you must provide a '{name}' parameter", "missing_required")
        if not isinstance(msg[name], str):
            raise _invalid(name, f"'{name}' must be a string")
    text = msg["input"]
    if not text.strip():
        raise _invalid("input", "'input' is empty: give the text to speak", "empty_string")
    if len(text) > MAX_INPUT_CHARS:
        raise _invalid("input", f"'input' has {len(text)} characters; at most "
                       f"{MAX_INPUT_CHARS}", "string_above_max_length")
    voice = msg.get("voice", "")
    if not (isinstance(voice, str) or (isinstance(voice, dict) and set(voice) == {"id"}
                                       and isinstance(voice["id"], str))):
        raise _invalid("voice", "'voice' must be a voice name or {\"id\": \"…\"}")
    fmt = msg.get("response_format", DEFAULT_FORMAT)
    if fmt not in encoders.FORMATS:
        raise _invalid("response_format", f"response_format {echo(fmt)} is not "
                       f"supported: use one of {', '.join(encoders.FORMATS)}")
    stream_format = msg.get("stream_format", "audio")
    if stream_format not in STREAM_FORMATS:
        raise _invalid("stream_format", f"stream_format {echo(stream_format)} is not "
                       f"supported: use one of {', '.join(STREAM_FORMATS)}")
    speed = msg.get("speed", 1.0)
    if (isinstance(speed, bool) or not isinstance(speed, (int, float))
            or not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1] or not math.isfinite(speed)):
        raise _invalid("speed", f"'speed' must be a number from {SPEED_RANGE[0]} to "
                       f"{SPEED_RANGE[1]}, got {echo(speed)}")
    if msg.get("instructions"):
        raise _invalid("instructions", "this model cannot follow instructions; leave them out",
                       "unsupported_value")
    return SpeechRequest(text, fmt, stream_format, float(speed))
