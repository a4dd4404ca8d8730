"""OpenAI's speech API endpoints: ``POST /v1/audio/speech`` and ``GET /v1/models``.

Exists so clients written for OpenAI text-to-speech (the official SDKs, plain HTTP) work against
this server unchanged; the request itself is parsed in ``openai_request``. The whole ``input``
is one synthesizer job (the synthesizer splits it into sentences), and the body streams as audio
is decoded: chunked transfer, one flush per chunk, the chunk acknowledged to the synthesizer
only after it was flushed, so a slow reader parks its own job (back-pressure) and a client that
goes away cancels it, as does one that takes none of a chunk for ``--write-timeout`` seconds
(closed: a parked job keeps its synthesis place). The server's ``--sample-rate`` applies to
every format (OpenAI's ``pcm`` is 24 kHz; here it is that rate, named in the Content-Type).
``speed`` is a tempo change in the decoder (pitch kept, each sentence sent once complete).
``stream_format=sse`` sends ``speech.audio.delta`` events with base64 chunks of the chosen
format, then ``speech.audio.done``.

Status codes: 401 a missing or wrong API key when the server has keys (``auth.py``; with a
``WWW-Authenticate: Bearer`` header, checked before anything else), 400 bad request, 413 body
over 64 KiB (from its Content-Length, before reading it), 415 a body that is not
``application/json``, 429 synthesizer busy, 503 model not loaded yet, 500 synthesis failed
before any audio (after it, an SSE stream ends with an ``error`` event and an audio stream is
cut off, so the client sees an incomplete body rather than a short file).
Errors, time to first audio and real-time factor feed ``/metrics`` like the WebSocket's.

Out of scope: AAC, token ``usage`` in ``speech.audio.done`` (the synthesizer reports audio, not
token counts, and made-up numbers would mislead billing code).
"""
import asyncio
import base64
import json
import os
import time
from http.client import responses

import numpy as np
import tornado.web
from tornado.iostream import StreamClosedError

from .. import encoders
from ..audio import stream_resampler, to_int16
from .auth import bearer
from .openai_request import MAX_BODY_BYTES, ApiError, SpeechRequest, parse_request
from .jobs import Busy, Job

# The /metrics error kind of each error code; other codes are bad fields.
_METRIC_KINDS = {"invalid_json": "invalid_json", "request_too_large": "oversized",
                 "unsupported_media_type": "bad_message",
                 "server_busy": "busy", "model_not_ready": "loading",
                 "synthesis_failed": "synthesis", "invalid_api_key": "unauthorized"}


def unauthorized(presented: str | None) -> ApiError:
    """The 401 for a request whose key is ``presented`` (None: none given); never quotes it."""
    return ApiError(401, "Incorrect API key provided." if presented else
                    "You didn't provide an API key: send 'Authorization: Bearer KEY' (or, for "
                    "the WebSocket, '?api_key=KEY').", code="invalid_api_key")


def _too_large(size: int) -> ApiError:
    return ApiError(413, f"request body is {size} bytes; at most {MAX_BODY_BYTES}",
                    code="request_too_large")


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


class SpeechBody:
    """Model audio (float32 at the model's rate) -> the response body's bytes, chunk by chunk."""

    def __init__(self, request: SpeechRequest, model_rate: int, sample_rate: int):
        self.sse = request.stream_format == "sse"
        self.encoder = encoders.make_encoder(request.response_format, sample_rate)
        self.content_type = ("text/event-stream" if self.sse else
                             encoders.content_type(request.response_format, sample_rate))
        self.resampler = stream_resampler(model_rate, sample_rate)

    def _bytes(self, audio: np.ndarray, last: bool = False) -> bytes:
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio, last=last)
        return self.encoder.encode(to_int16(audio))

    def _frame(self, data: bytes) -> bytes:
        if not self.sse or not data:
            return data
        return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})

    def feed(self, audio: np.ndarray) -> bytes:
        return self._frame(self._bytes(audio))

    def finish(self) -> bytes:
        tail = self._bytes(np.zeros(0, np.float32), last=True) + self.encoder.finish()
        done = _sse({"type": "speech.audio.done"}) if self.sse else b""
        return self._frame(tail) + done

    def error(self, err: ApiError) -> bytes:
        """What ends a stream that fails after its first bytes: an SSE ``error`` event, or
        nothing (the connection is dropped, so the client sees an incomplete body)."""
        return _sse({"type": "error", **err.body()}) if self.sse else b""


class OpenAIHandler(tornado.web.RequestHandler):
    def initialize(self, state):
        self.state = state

    def count_error(self, err: ApiError) -> None:
        self.state.metrics.errors.labels(_METRIC_KINDS.get(err.code, "bad_field")).inc()

    def send_api_error(self, err: ApiError) -> None:
        self.count_error(err)
        self.set_status(err.status)
        self.finish(err.body())

    def write_error(self, status_code: int, **kwargs) -> None:
        """Tornado's own errors (405, 500) in the same shape."""
        self.finish(ApiError(status_code, responses.get(status_code, "Unknown")).body())

    def prepare(self):
        self.refuse_without_key()

    def refuse_without_key(self) -> bool:
        """401 (nothing read or done) unless the request carries a configured key; True then."""
        presented = bearer(self.request.headers.get("Authorization"))
        if self.state.keys.allows(presented):
            return False
        self.set_header("WWW-Authenticate", "Bearer")
        self.send_api_error(unauthorized(presented))
        return True

    def check_loaded(self) -> None:
        if self.state.synth is None:
            detail = (f"the model failed to load: {self.state.load_error}"
                      if self.state.load_error else "the model is still loading; retry shortly")
            raise ApiError(503, detail, code="model_not_ready")


def model_id(model: str) -> str:
    """A hub id as given; a local model by its directory or file name (not the whole path)."""
    return os.path.basename(os.path.normpath(model)) if os.path.exists(model) else model


class ModelsHandler(OpenAIHandler):
    def get(self):
        try:
            self.check_loaded()
        except ApiError as e:
            return self.send_api_error(e)
        self.finish({"object": "list", "data": [{
            "id": model_id(self.state.settings.model), "object": "model",
            "created": int(os.path.getmtime(self.state.tts.model_dir)),
            "owned_by": "soprano-tts"}]})


@tornado.web.stream_request_body
class SpeechHandler(OpenAIHandler):
    """Body read in pieces only to cap what is kept. A ``Content-Length`` over
    ``MAX_BODY_BYTES`` is answered with 413 before any of the body is read (and the connection
    closed); a chunked body beyond it is counted, not stored, and answered with 413."""

    def prepare(self):
        self.body, self.body_size = bytearray(), 0
        self.job, self.gone, self.sent = None, False, False
        if self.refuse_without_key() or self.request.method != "POST":
            return
        try:
            length = int(self.request.headers.get("Content-Length", "0"))
        except ValueError:
            return  # Tornado answers a malformed length itself
        if length > MAX_BODY_BYTES:
            return self.send_api_error(_too_large(length))  # finished: post() is not called
        # JSON only: a page on another site can send text/plain or a form without a CORS
        # preflight, but not application/json
        content_type = self.request.headers.get("Content-Type")
        if (content_type or "").split(";")[0].strip().lower() != "application/json":
            self.send_api_error(ApiError(
                415, f"Content-Type must be application/json, got "
                f"{json.dumps(content_type and content_type[:64])}",
                code="unsupported_media_type"))

    def data_received(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size <= MAX_BODY_BYTES:
            self.body += chunk

    def on_connection_close(self) -> None:
        super().on_connection_close()  # fails a body still awaited, so the request ends
        self.gone = True
        if self.job is not None:
            self.state.synth.cancel(self.job)

    async def post(self):
        synth = self.state.synth
        try:
            self.check_loaded()
            if self.body_size > MAX_BODY_BYTES:
                raise _too_large(self.body_size)
            request = parse_request(bytes(self.body))
        except ApiError as e:
            return self.send_api_error(e)
        body = SpeechBody(request, self.state.tts.sample_rate, self.state.settings.sample_rate)
        events: asyncio.Queue = asyncio.Queue()
        job = Job(request.input, lambda job, audio: events.put_nowait(audio),
                  lambda job, reason: events.put_nowait(reason), speed=request.speed)
        try:
            synth.submit(job)
        except Busy as e:
            return self.send_api_error(ApiError(429, str(e), code="server_busy"))
        self.job = job
        self.set_header("Content-Type", body.content_type)
        self.set_header("Cache-Control", "no-cache")
        self.state.speech_streams += 1  # a SIGTERM drain waits for these too
        try:
            while isinstance(item := await events.get(), np.ndarray):
                try:
                    await self._send(body.feed(item))
                finally:
                    synth.ack(self.job)
            await self._end(item, body)
        finally:
            self.state.speech_streams -= 1

    async def _send(self, data: bytes) -> None:
        if self.gone or not data:
            return
        self.write(data)
        flushed = self.flush()
        # Read whatever happens: it fails once the connection closes, and an unread failure
        # is logged with a traceback.
        flushed.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(asyncio.shield(flushed), self.state.settings.write_timeout)
        except StreamClosedError:
            return self.on_connection_close()
        except asyncio.TimeoutError:  # not reading: its parked job must not keep its place
            self.state.metrics.errors.labels("not_reading").inc()
            self.request.connection.close()
            return self.on_connection_close()
        if not self.sent:
            self.sent = True
            self.state.metrics.ttfa.observe(time.perf_counter() - self.job.submitted)

    async def _end(self, reason: str, body: SpeechBody) -> None:
        """Tornado finishes the response after ``post`` returns (a no-op once closed)."""
        if self.gone:
            return
        job = self.job
        if reason == "done":
            if job.finished > job.started:
                self.state.metrics.rtf.observe(
                    job.samples / self.state.tts.sample_rate / (job.finished - job.started))
            return await self._send(body.finish())
        err = ApiError(500, reason.removeprefix("error: "), code="synthesis_failed")
        if not self.sent:
            return self.send_api_error(err)
        self.count_error(err)
        await self._send(body.error(err))
        if not body.sse:
            self.request.connection.close()  # no final chunk: the body reads as incomplete
