"""An asyncio client for the ``/v1/stream`` WebSocket: text in, int16 PCM chunks out.

Why it exists: the protocol has no request ids (``done`` answers both ``flush`` and ``stop``,
errors arrive between audio frames), so keeping a session in step takes some care; this module
takes it once, for applications and tests::

    async with StreamClient("ws://127.0.0.1:8080/v1/stream") as c:
        await c.config(speed=1.1, max_delay_ms=150)   # StreamError if the server rejects it
        async for chunk in c.speak("Hello there."):
            play(chunk.pcm)          # numpy int16, shape (samples,), mono, chunk.sample_rate Hz
            if interrupted:
                await c.stop()       # speak() then ends; the session stays usable

Shapes: ``speak`` yields ``AudioChunk(header, pcm)`` in order; ``header`` is the frame's JSON
header as sent (``chunk_id`` counting from 1 per session, ``sample_rate``, ``channels`` 1,
``format`` "pcm_s16le", ``text`` with ``--include-text``). An ``error`` message raises
``StreamError`` with the server's text; a closed socket raises ``StreamClosed``. A server with
API keys takes ``api_key=`` (sent as ``Authorization: Bearer``); a refused key raises
``StreamError`` on entering.

One task drives a client and its calls are sequential; a call made while ``speak()`` is
unfinished (e.g. after ``break``) first stops what is left of it.
Built on tornado's WebSocket client, which the server needs anyway, so the client adds no
dependency (``websockets`` reads a little nicer but does nothing this needs).
Out of scope: reconnection, timeouts (wrap calls in ``asyncio.wait_for``), playback, the HTTP API.
"""
import json
import uuid
from dataclasses import dataclass

import numpy as np
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from .server.protocol import decode_frame


class StreamError(Exception):
    """The server answered with an ``error`` message; ``str(e)`` is that message."""


class StreamClosed(StreamError):
    """The socket closed while the client was talking to it."""

    def __init__(self, code: int | None, reason: str | None):
        super().__init__(f"connection closed (code {code}{f': {reason}' if reason else ''})")
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class AudioChunk:
    header: dict
    pcm: np.ndarray  # int16, shape (samples,)

    @property
    def chunk_id(self) -> int:
        return self.header["chunk_id"]

    @property
    def sample_rate(self) -> int:
        return self.header["sample_rate"]


def _type(msg: bytes | dict) -> str | None:
    return None if isinstance(msg, bytes) else msg.get("type")


def _chunk(frame: bytes) -> AudioChunk:
    try:
        header, pcm = decode_frame(frame)
    except ValueError as e:
        raise StreamError(f"malformed audio frame: {e}") from None
    if header.get("format") != "pcm_s16le" or header.get("channels") != 1:
        raise StreamError(f"unsupported audio frame header {header}")
    return AudioChunk(header, np.frombuffer(pcm, "<i2"))


class StreamClient:
    """One ``/v1/stream`` session; ``session_id`` is the server's, set on entering."""

    def __init__(self, url: str, connect_timeout: float = 10.0, api_key: str | None = None):
        self.url, self.connect_timeout, self.api_key = url, connect_timeout, api_key
        self.session_id: str | None = None
        self._ws = None
        self._speaking = False  # a flush is outstanding: its frames and its done are still due

    async def __aenter__(self) -> "StreamClient":
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            self._ws = await websocket_connect(HTTPRequest(
                self.url, headers=headers, connect_timeout=self.connect_timeout))
        except HTTPClientError as e:
            if e.code != 401:
                raise
            raise StreamError("API key " + ("refused" if self.api_key else "required") +
                              " (HTTP 401)") from None
        try:
            hello = await self._read()
            if _type(hello) == "error":  # e.g. "model is still loading", then the server closes
                raise StreamError(hello.get("message"))
            if _type(hello) != "ready":
                raise StreamError(f"expected a ready message, got {hello!r:.80}")
        except BaseException:
            self._ws.close()
            raise
        self.session_id = hello["session_id"]
        return self

    async def __aexit__(self, *exc) -> None:
        self._ws.close()

    async def speak(self, text: str):
        """Synthesize ``text``: ``AudioChunk``s in order until the server's ``done``.

        On an ``error`` message the rest of the request is stopped, then ``StreamError`` raised.
        """
        await self._settle()
        await self._send(type="text", text=text)
        await self._send(type="flush")
        self._speaking = True
        while self._speaking:  # stop(), called between two chunks, clears it
            msg = await self._read()
            if isinstance(msg, bytes):
                yield _chunk(msg)
            elif _type(msg) == "done":
                self._speaking = False
            elif _type(msg) == "error":
                await self.stop()
                raise StreamError(msg.get("message"))

    async def config(self, **fields) -> None:
        """Send a ``config`` message (fields as in the protocol) and wait for the server's verdict.

        Raises ``StreamError`` with the server's (first) message if it rejects the message.
        """
        await self._settle()
        await self._send(type="config", **fields)
        # Config has no reply when accepted. Nothing is buffered here, so a flush only asks for a
        # done, which the server sends after any error for the config: a round trip to wait on.
        await self._send(type="flush")
        error = None
        while _type(msg := await self._read()) != "done":
            if _type(msg) == "error" and error is None:
                error = msg.get("message")
        if error is not None:
            raise StreamError(error)

    async def stop(self) -> None:
        """Cancel the unfinished ``speak()`` (its remaining audio is dropped) and wait until the
        server has; a no-op when nothing is being spoken."""
        if not self._speaking:
            return
        await self._send(type="stop")
        # The server answers stop with done, but a flush that finished just before the stop came
        # has sent its own done too, and the two cannot be told apart. An unknown type is
        # answered with an error that names it, after everything sent before: a unique marker
        # shows where this session is quiet again.
        marker = f"soprano.client.sync-{uuid.uuid4().hex}"
        await self._send(type=marker)
        while True:
            msg = await self._read()
            if _type(msg) == "error" and marker in msg.get("message", ""):
                break
        self._speaking = False

    async def _settle(self) -> None:
        if self._speaking:
            await self.stop()

    async def _send(self, **msg) -> None:
        try:
            await self._ws.write_message(json.dumps(msg))
        except WebSocketClosedError:
            raise StreamClosed(self._ws.close_code, self._ws.close_reason) from None

    async def _read(self) -> bytes | dict:
        msg = await self._ws.read_message()
        if msg is None:
            raise StreamClosed(self._ws.close_code, self._ws.close_reason)
        return msg if isinstance(msg, bytes) else json.loads(msg)
