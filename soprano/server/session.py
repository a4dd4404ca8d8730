"""One ``/v1/stream`` WebSocket session: buffer, chunker, delay timer, job order, outgoing queue.

Runs on the event loop only. Text chunks of a session are synthesized one after another (so
its audio stays in order) while different sessions run side by side in the ``Synthesizer``.
Everything sent goes through one outgoing queue drained by ``_send_loop``, which awaits each
write: a slow reader fills its own queue, its job gets parked, other sessions are unaffected.
The queue is bounded (``MAX_QUEUED_MESSAGES`` JSON messages, ``MAX_QUEUED_BYTES`` of them,
``MAX_QUEUED_FRAMES`` audio frames): a client that keeps sending but does not read is closed with
``CLOSE_NOT_READING`` (1008, policy violation) instead of growing the server without end, and
so is one whose client has taken nothing for ``write_timeout`` seconds while a message or frame
waits (its parked job would otherwise keep a synthesis place while it stays connected).
Client messages pass a token bucket first (``--max-messages-per-second``: that many a second,
bursts of as many): a message beyond it is dropped unparsed, and the first one dropped in a row
is answered with one ``error`` message (metrics kind ``rate_limited``); the session lives on.
"""
import asyncio
import collections
import time
import uuid

import numpy as np
from tornado.websocket import WebSocketClosedError

from ..audio import stream_resampler, to_int16
from . import protocol
from .chunker import Chunker
from .jobs import Busy, Job

_DONE = object()  # a flush marker in the text queue

# What one session may have queued, not yet written to its socket. A reading client has a few
# at most; frames are fewer still, as the synthesizer pauses a job at 16 unwritten frames.
MAX_QUEUED_MESSAGES = 64
MAX_QUEUED_BYTES = 256 * 1024  # of JSON messages
MAX_QUEUED_FRAMES = 64
MAX_BUFFERED_CHARS = 20_000  # of text a session holds, not yet synthesized
CLOSE_NOT_READING = 1008  # RFC 6455 policy violation: the client does not read what it asks for


class QueueFull(Exception):
    pass


class TokenBucket:
    """``rate`` tokens a second, at most ``rate`` saved up (one second's burst); rate 0: no
    limit. ``clock`` is for tests."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate, self.clock = rate, clock
        self.tokens, self.last = float(rate), clock()

    def take(self) -> bool:
        if not self.rate:
            return True
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Session:
    def __init__(self, send_text, send_binary, synth, metrics, *, min_words: int,
                 include_text: bool, sample_rate: int, model_rate: int,
                 max_buffered_chars: int = MAX_BUFFERED_CHARS, on_overflow=None,
                 max_messages_per_second: float = 0, write_timeout: float | None = None):
        self.id = str(uuid.uuid4())
        self.send_text, self.send_binary = send_text, send_binary
        self.on_overflow = on_overflow  # (close code, reason): close the socket
        self.synth, self.metrics = synth, metrics
        self.config = protocol.StreamConfig(min_words=min_words)
        self.chunker = Chunker(self.config.min_chars, self.config.min_words,
                               self.config.max_chars)
        self.include_text = include_text
        self.sample_rate, self.model_rate = sample_rate, model_rate
        self.max_buffered_chars = max_buffered_chars
        # (text chunk, speed at the time it was cut) and _DONE markers
        self.pending: collections.deque = collections.deque()
        self.current: Job | None = None
        self.first_audio: Job | None = None  # submitted, its first frame not yet written
        self.resampler = None  # a soxr stream per job when --sample-rate is not the model's
        self.chunk_id = 0
        self.timer = None
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.queued_messages = self.queued_bytes = self.queued_frames = 0
        self.bucket = TokenBucket(max_messages_per_second)
        self.limited = False  # the last message was dropped by the bucket
        self.write_timeout = write_timeout  # seconds one write may wait for the client
        self.closed = False
        self.sender = asyncio.ensure_future(self._send_loop())

    # --- client messages ---------------------------------------------------------------------
    def handle(self, raw) -> None:
        if not self.bucket.take():
            if not self.limited:
                self.limited = True
                self._error("rate_limited",
                            f"rate limited: more than {self.bucket.rate:g} messages a second; "
                            "this message and those after it are dropped until the rate falls")
            return
        self.limited = False
        try:
            msg = protocol.parse_client(raw, self.config)
        except protocol.ProtocolError as e:
            self._error(e.kind, str(e))
            return
        if isinstance(msg, protocol.Config):
            for key, value in msg.changes.items():  # all validated: apply all
                setattr(self.config, key, value)
            self.chunker.configure(self.config.min_chars, self.config.min_words,
                                   self.config.max_chars)
        elif isinstance(msg, protocol.Text):
            buffered = len(self.chunker.buffer) + sum(len(item[0]) for item in self.pending
                                                      if item is not _DONE)
            if buffered + len(msg.text) > self.max_buffered_chars:
                self._error("oversized",
                            f"too much text buffered ({buffered} characters); at most "
                            f"{self.max_buffered_chars} per session: wait for audio or send flush")
                return
            was_empty = not self.chunker.buffer
            self._enqueue(self.chunker.push(msg.text))
            if not self.chunker.buffer:
                self._cancel_timer()
            elif was_empty and self.timer is None:
                self.timer = asyncio.get_event_loop().call_later(
                    self.config.max_delay_ms / 1000, self._on_timer)
        elif isinstance(msg, protocol.Flush):
            self._cancel_timer()
            self._enqueue([self.chunker.take_all(), _DONE])
        else:
            self.stop()
            self._put_text(protocol.done())

    def _error(self, kind: str, message: str) -> None:
        self.metrics.errors.labels(kind).inc()
        self._put_text(protocol.error(message))

    # --- the outgoing queue ----------------------------------------------------------------------
    def _put_text(self, message: str) -> None:
        if self.closed:
            return
        if (self.queued_messages >= MAX_QUEUED_MESSAGES
                or self.queued_bytes + len(message) > MAX_QUEUED_BYTES):
            return self._overflow(f"more than {MAX_QUEUED_MESSAGES} messages or "
                                  f"{MAX_QUEUED_BYTES // 1024} KiB queued")
        self.queued_messages += 1
        self.queued_bytes += len(message)
        self.outgoing.put_nowait(message)

    def _put_frame(self, job: Job | None, pcm: bytes, text: str | None) -> None:
        """Queue a frame's PCM; its chunk id is given when it is written, so frames a stop
        drops from the queue leave no gap in the ids the client sees."""
        if self.closed or self.queued_frames >= MAX_QUEUED_FRAMES:
            if job is not None:
                self.synth.ack(job)  # never to be written
            if not self.closed:
                self._overflow(f"more than {MAX_QUEUED_FRAMES} audio frames queued")
            return
        self.queued_frames += 1
        self.outgoing.put_nowait((job, pcm, text))

    def _take(self, item) -> None:
        """Count ``item`` out of the queue."""
        if isinstance(item, str):
            self.queued_messages -= 1
            self.queued_bytes -= len(item)
        else:
            self.queued_frames -= 1

    def _overflow(self, what: str) -> None:
        self.metrics.errors.labels("not_reading").inc()
        self.close()
        if self.on_overflow is not None:
            self.on_overflow(CLOSE_NOT_READING, f"client is not reading: {what}")

    def stop(self) -> None:
        """Barge-in: drop buffered text and queued audio, cancel the running job."""
        self._cancel_timer()
        self.chunker.clear()
        self.pending.clear()
        if self.current is not None:
            self.synth.cancel(self.current)
        kept = []
        while not self.outgoing.empty():
            item = self.outgoing.get_nowait()
            if isinstance(item, str) and not self.closed:
                kept.append(item)
                continue
            self._take(item)
            if not isinstance(item, str) and item[0] is not None:
                self.synth.ack(item[0])
        for item in kept:
            self.outgoing.put_nowait(item)

    def close(self) -> None:
        """The socket is gone (or is being closed): cancel everything, free what is queued."""
        if self.closed:
            return
        self.closed = True
        self.stop()
        self.sender.cancel()

    def idle(self) -> bool:
        return self.current is None and not self.pending and self.outgoing.empty()

    # --- synthesis -----------------------------------------------------------------------------
    def _on_timer(self) -> None:
        self.timer = None
        self._enqueue([self.chunker.take_all()])

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _enqueue(self, items) -> None:
        self.pending.extend(item if item is _DONE else (item, self.config.speed)
                            for item in items if item is _DONE or item)
        self._pump()

    def _pump(self) -> None:
        while self.current is None and self.pending and not self.closed:
            item = self.pending.popleft()
            if item is _DONE:
                self._put_text(protocol.done())
                continue
            text, speed = item
            job = Job(text, self._on_chunk, self._on_finish, speed=speed)
            try:
                self.synth.submit(job)
            except Busy as e:
                self._error("busy", str(e))
                continue
            self.current = self.first_audio = job
            self.resampler = stream_resampler(self.model_rate, self.sample_rate)

    def _pcm(self, audio: np.ndarray, last: bool = False) -> bytes | None:
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio, last=last)
        if not audio.size:
            return None
        return to_int16(audio).astype("<i2").tobytes()

    def _text(self, job: Job) -> str | None:
        return job.text if self.include_text else None

    def _on_chunk(self, job: Job, audio: np.ndarray) -> None:
        pcm = None if job.cancelled or self.closed else self._pcm(audio)
        if pcm is None:
            self.synth.ack(job)
            return
        self._put_frame(job, pcm, self._text(job))

    def _on_finish(self, job: Job, reason: str) -> None:
        if job is not self.current:
            return
        if self.resampler is not None and not job.cancelled:
            pcm = self._pcm(np.zeros(0, np.float32), last=True)
            if pcm is not None:
                self._put_frame(None, pcm, self._text(job))
        self.current = None
        if reason == "done" and job.samples and job.finished > job.started:
            self.metrics.rtf.observe(job.samples / self.model_rate / (job.finished - job.started))
        if reason.startswith("error"):
            self._error("synthesis", reason.removeprefix("error: "))
        self._pump()

    async def _write(self, write) -> None:
        """Await ``write`` up to the write timeout; past it the client is not reading. Shielded
        (Tornado logs a traceback for a write cancelled under it), and its outcome always read:
        it fails once the socket closes, and an unread failure is logged too."""
        write = asyncio.ensure_future(write)
        write.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(asyncio.shield(write), self.write_timeout)
        except asyncio.TimeoutError:
            self._overflow(f"nothing taken for {self.write_timeout:g} s")
            raise asyncio.CancelledError from None

    async def _send_loop(self) -> None:
        try:
            while True:
                item = await self.outgoing.get()
                self._take(item)
                if isinstance(item, str):
                    await self._write(self.send_text(item))
                else:
                    job, pcm, text = item
                    self.chunk_id += 1
                    try:
                        await self._write(self.send_binary(
                            protocol.audio_frame(self.chunk_id, pcm, self.sample_rate, text)))
                    finally:  # written, or never to be (the session closed during the write)
                        if job is not None:
                            self.synth.ack(job)
                    if job is not None and job is self.first_audio:
                        self.first_audio = None
                        self.metrics.ttfa.observe(time.perf_counter() - job.submitted)
        except (WebSocketClosedError, asyncio.CancelledError):
            return
