"""Tornado application: the route table, thin handlers, model loading and graceful shutdown.

Routes: ``GET /healthz`` (503 while the model loads, then ``ok``) and the ``/v1/stream``
WebSocket. The model loads in a thread after the port is open, so health checks see the
loading state. SIGTERM/SIGINT stop accepting connections, let running work finish up to a
deadline, close sessions with 1001 and exit 0.
"""
import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

import tornado.httpserver
import tornado.web
import tornado.websocket

from . import protocol
from .session import Session
from .synthesis import Synthesizer

log = logging.getLogger("soprano.server")
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass
class ServerSettings:
    model: str
    device: str = "auto"
    cache_dir: str | None = None
    download: bool = True
    workers: int = 2
    tts_inflight: int = 4
    queue_limit: int = 64
    min_words: int = 2
    include_text: bool = False
    sample_rate: int = 32000
    temperature: float = 0.0
    top_p: float = 0.95
    repetition_penalty: float = 1.2
    max_new_tokens: int = 512
    chunk_tokens: int = 2
    shutdown_deadline_s: float = 10.0


@dataclass
class ServerState:
    settings: ServerSettings
    tts: object = None
    synth: Synthesizer | None = None
    load_error: str | None = None
    sessions: set = field(default_factory=set)


class HealthHandler(tornado.web.RequestHandler):
    def initialize(self, state: ServerState):
        self.state = state

    def get(self):
        self.set_header("Content-Type", "text/plain")
        if self.state.synth is None:
            self.set_status(503)
            self.finish(f"error: {self.state.load_error}" if self.state.load_error
                        else "loading")
        else:
            self.finish("ok")


class StreamHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, state: ServerState):
        self.state = state
        self.session = None

    def check_origin(self, origin):
        return True

    async def open(self):
        if self.state.synth is None:
            await self.write_message(protocol.error("model is still loading; retry shortly"))
            self.close(1013, "model loading")
            return
        s = self.state.settings
        self.session = Session(self.write_message,
                               lambda frame: self.write_message(frame, binary=True),
                               self.state.synth, min_words=s.min_words,
                               include_text=s.include_text, sample_rate=s.sample_rate,
                               model_rate=self.state.tts.sample_rate)
        self.state.sessions.add(self)
        await self.write_message(protocol.ready(self.session.id))

    def on_message(self, message):
        if self.session is not None:
            self.session.handle(message)

    def on_close(self):
        self.state.sessions.discard(self)
        if self.session is not None:
            self.session.close()


def make_app(state: ServerState) -> tornado.web.Application:
    return tornado.web.Application([
        (r"/healthz", HealthHandler, {"state": state}),
        (r"/v1/stream", StreamHandler, {"state": state}),
    ], websocket_max_message_size=MAX_MESSAGE_BYTES)


def _load(state: ServerState, loop) -> None:
    from ..api import SopranoTTS
    from ..runtime.sampling import SamplingParams
    s = state.settings
    started = time.perf_counter()
    tts = SopranoTTS(s.model, device=s.device, cache_dir=s.cache_dir, download=s.download)
    state.tts = tts
    state.synth = Synthesizer(tts, loop, workers=s.workers, inflight=s.tts_inflight,
                              queue_limit=s.queue_limit, chunk_tokens=s.chunk_tokens,
                              params=SamplingParams(s.temperature, s.top_p,
                                                    s.repetition_penalty),
                              max_new_tokens=s.max_new_tokens)
    log.info("model %s loaded on %s in %.1f s", tts.model_dir, tts.device,
             time.perf_counter() - started)


async def serve(settings: ServerSettings, host: str, port: int) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    loop = asyncio.get_running_loop()
    state = ServerState(settings)
    server = tornado.httpserver.HTTPServer(make_app(state))
    server.listen(port, address=host)
    log.info("listening on %s:%d", host, port)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loading = loop.run_in_executor(None, _load, state, loop)
    done, _ = await asyncio.wait([loading, asyncio.ensure_future(stopping.wait())],
                                 return_when=asyncio.FIRST_COMPLETED)
    if loading in done and loading.exception() is not None:
        state.load_error = str(loading.exception())
        log.error("cannot load the model: %s", state.load_error)
        server.stop()
        raise loading.exception()
    await stopping.wait()
    log.info("shutting down: draining %d session(s)", len(state.sessions))
    server.stop()
    deadline = time.monotonic() + settings.shutdown_deadline_s
    while time.monotonic() < deadline and any(
            h.session is not None and not h.session.idle() for h in state.sessions):
        await asyncio.sleep(0.05)
    for handler in list(state.sessions):
        handler.close(1001, "server shutting down")
    if state.synth is not None:
        state.synth.close()
    await asyncio.sleep(0.1)
    return 0
