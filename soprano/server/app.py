"""Tornado application: the route table, thin handlers, model loading and graceful shutdown.

Routes: ``GET /healthz`` (503 while the model loads, then ``ok``), the ``/v1/stream``
WebSocket, the OpenAI-style ``POST /v1/audio/speech`` and ``GET /v1/models``, and the demo
page ``GET /`` with its ``/static/`` files. The model loads in a thread after the port is open,
so health checks see the loading state. SIGTERM/SIGINT stop accepting connections, let running
work finish up to a deadline, close sessions with 1001 and exit 0. ``GET /metrics`` serves the
Prometheus metrics of ``metrics.py``; ``CountingApplication`` counts every request by route for
them. With API keys (``auth.py``) the ``/v1/`` routes need one; health, metrics and the page
stay open.
"""
import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import tornado.httpserver
import tornado.log
import tornado.web
import tornado.websocket

from . import protocol
from .auth import QUERY_PARAM, ApiKeys, bearer, redact
from .metrics import ServerMetrics
from .openai_speech import ModelsHandler, SpeechHandler, unauthorized
from .session import Session
from .synthesis import Synthesizer

log = logging.getLogger("soprano.server")
MAX_MESSAGE_BYTES = 64 * 1024  # one client message; a bigger one is closed with 1009
# Close codes (RFC 6455 section 7.4.1) besides 1000/1001 and Tornado's 1009 (message too big)
CLOSE_INVALID_UTF8 = 1007
CLOSE_IDLE = 1008       # policy violation: no first message within --first-message-timeout
CLOSE_FULL = 1013       # try again later: --max-sessions reached, or the model still loading
STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class ServerSettings:
    model: str
    decoder_path: str | None = None
    device: str = "auto"
    cache_dir: str | None = None
    download: bool = True
    backend: str = "auto"
    workers: int = 2
    threads: int | None = None  # CPU threads of the kernels (None: SOPRANO_THREADS or cores)
    max_batch: int = 16  # jobs synthesizing at once (--tts-inflight): the engine's KV slots
    decoder_batch_size: int = 1
    queue_limit: int = 64
    min_words: int = 2
    include_text: bool = False
    sample_rate: int = 32000
    temperature: float = 0.0
    top_p: float = 0.95
    repetition_penalty: float = 1.2
    max_new_tokens: int = 512
    retries: int = 0  # --hallucination-retries
    # The stateful decoder computes each frame once, but a pass reads every decoder weight
    # (~60 MB in fp16 or bf16) once for however few frames it has: the first chunk is 1 token
    # (out with the 4th hidden state), and chunks double after it (1, 2, 4, 8, 16), so each
    # holds about as much audio as was sent before it. Up to 16 tokens (1 s of audio, 64 frames
    # a pass): the Q8_0 server on 2 Xeon cores, 32 sessions, went 24.5-25.8 -> 28.5-28.9x real
    # time from chunks of 4, with a lower time to first audio (bench/RESULTS.md).
    chunk_size: int = 16
    first_chunk_size: int = 1
    shutdown_deadline_s: float = 10.0
    # Slow or idle clients (--idle-timeout, --body-timeout, --first-message-timeout), seconds:
    # an HTTP connection idle between requests or still sending its headers; a request body
    # from its first byte to its last; a WebSocket from its upgrade to its first message.
    idle_timeout: float = 60.0
    body_timeout: float = 30.0
    first_message_timeout: float = 30.0
    # A client (WebSocket or speech response) that takes nothing for this long while something
    # waits for it is closed: its parked job would otherwise keep a synthesis place.
    write_timeout: float = 30.0
    max_sessions: int = 128  # WebSocket sessions open at once (--max-sessions)
    max_messages_per_second: int = 200  # per session, a token bucket; 0: no limit
    # Origins (scheme://host[:port], lower case) whose pages may open WebSocket sessions besides
    # the server's own; "*" lets any in (--allowed-origins).
    allowed_origins: tuple = ()
    # --api-key / SOPRANO_API_KEY / --api-key-file: any one of them opens /v1/; none: all open
    api_keys: tuple = field(default=(), repr=False)


@dataclass
class ServerState:
    settings: ServerSettings
    tts: object = None
    synth: Synthesizer | None = None
    load_error: str | None = None
    sessions: set = field(default_factory=set)
    speech_streams: int = 0  # /v1/audio/speech responses still streaming
    metrics: ServerMetrics = field(init=False)
    keys: ApiKeys = field(init=False)

    def __post_init__(self):
        self.keys = ApiKeys(self.settings.api_keys)
        self.metrics = ServerMetrics(lambda: self.synth.stats() if self.synth else None,
                                     lambda: len(self.sessions))


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


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, state: ServerState):
        self.state = state

    def get(self):
        body, content_type = self.state.metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class _StreamProtocol(tornado.websocket.WebSocketProtocol13):
    """Tornado's WebSocket protocol, plus RFC 6455's close frame for a text message that is not
    UTF-8 (1007; Tornado drops the TCP connection without one). Once closing, further data
    messages are ignored."""

    def _handle_message(self, opcode: int, data: bytes):
        if opcode in (0x1, 0x2) and self.server_terminated:
            return None
        if opcode == 0x1 and not self._frame_compressed:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.close(CLOSE_INVALID_UTF8, "text message is not valid UTF-8")
                return None
        return super()._handle_message(opcode, data)


class StreamHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, state: ServerState):
        self.state = state
        self.session = self.first_timer = None

    def prepare(self):
        """The key, from ``Authorization: Bearer`` or else ``?api_key=``, checked before the
        upgrade: a wrong or missing one is answered 401 and no session opens. The query
        parameter is cut from the request's URI first, so no log line can show it."""
        key = self.get_query_argument(QUERY_PARAM, None)
        if key is not None:
            self.request.uri = redact(self.request.uri)
            self.request.query = self.request.uri.partition("?")[2]
        header = bearer(self.request.headers.get("Authorization"))
        if not self.state.keys.allows(header or key):
            err = unauthorized(header or key)
            self.state.metrics.errors.labels("unauthorized").inc()
            self.set_status(err.status)
            self.set_header("WWW-Authenticate", "Bearer")
            self.finish(err.body())

    def get_websocket_protocol(self):
        protocol = super().get_websocket_protocol()
        return protocol and _StreamProtocol(self, False, protocol.params)

    def check_origin(self, origin: str) -> bool:
        """A browser page may open a session when it comes from this server (Origin's host:port
        is the Host header: the demo page) or from an allowed origin; others get 403, so a site
        a user visits cannot drive a server on their machine. Clients that are not browsers send
        no Origin and are not checked."""
        allowed = self.state.settings.allowed_origins
        if "*" in allowed or origin.lower().rstrip("/") in allowed:
            return True
        return super().check_origin(origin)

    async def open(self):
        s = self.state.settings
        if self.state.synth is None:
            return await self._refuse("loading", "model is still loading; retry shortly",
                                      "model loading")
        if len(self.state.sessions) >= s.max_sessions:
            return await self._refuse("full", f"server full: {s.max_sessions} sessions at most; "
                                      "retry shortly", "server full")
        self.session = Session(self.write_message,
                               lambda frame: self.write_message(frame, binary=True),
                               self.state.synth, self.state.metrics, min_words=s.min_words,
                               include_text=s.include_text, sample_rate=s.sample_rate,
                               model_rate=self.state.tts.sample_rate, on_overflow=self.close,
                               max_messages_per_second=s.max_messages_per_second,
                               write_timeout=s.write_timeout)
        self.state.sessions.add(self)
        self.state.metrics.sessions_opened.inc()
        self.first_timer = asyncio.get_running_loop().call_later(
            s.first_message_timeout, self.close, CLOSE_IDLE,
            f"no message within {s.first_message_timeout:g} s of connecting")
        await self.write_message(protocol.ready(self.session.id))

    async def _refuse(self, kind: str, message: str, reason: str) -> None:
        self.state.metrics.errors.labels(kind).inc()
        await self.write_message(protocol.error(message))
        self.close(CLOSE_FULL, reason)

    def on_message(self, message):
        if self.session is not None:
            if self.first_timer is not None:
                self.first_timer.cancel()
                self.first_timer = None
            self.session.handle(message)

    def on_close(self):
        self.state.sessions.discard(self)
        if self.first_timer is not None:
            self.first_timer.cancel()
        if self.session is not None:
            self.session.close()


class IndexHandler(tornado.web.RequestHandler):
    """The demo page: static files in the package, no build step. Served without a key; when
    the server has keys its ``<body>`` says ``data-api-key="required"`` and the page asks."""

    def initialize(self, state: ServerState):
        self.state = state

    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        page = (STATIC_DIR / "index.html").read_bytes()
        if self.state.keys:
            page = page.replace(b"<body>", b'<body data-api-key="required">', 1)
        self.finish(page)


class CountingApplication(tornado.web.Application):
    """Counts every finished request (WebSocket upgrades too) by route for ``/metrics``."""

    def __init__(self, metrics: ServerMetrics, handlers, **settings):
        super().__init__(handlers, **settings)
        self.metrics = metrics

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        """Tornado's access log line, its URI passed through ``auth.redact``."""
        # Label by route pattern, not request path: unknown paths must not grow the label set.
        endpoint = next((rule.matcher.regex.pattern.removesuffix("$")
                         for rule in self.wildcard_router.rules
                         if rule.matcher.match(handler.request) is not None), "other")
        self.metrics.requests.labels(endpoint).inc()
        status = handler.get_status()
        log_method = (tornado.log.access_log.info if status < 400 else
                      tornado.log.access_log.warning if status < 500 else
                      tornado.log.access_log.error)
        r = handler.request
        log_method("%d %s %s (%s) %.2fms", status, r.method, redact(r.uri), r.remote_ip,
                   1000.0 * r.request_time())


def make_app(state: ServerState) -> tornado.web.Application:
    return CountingApplication(state.metrics, [
        (r"/healthz", HealthHandler, {"state": state}),
        (r"/v1/audio/speech", SpeechHandler, {"state": state}),
        (r"/v1/models", ModelsHandler, {"state": state}),
        (r"/metrics", MetricsHandler, {"state": state}),
        (r"/v1/stream", StreamHandler, {"state": state}),
        (r"/", IndexHandler, {"state": state}),
    ], websocket_max_message_size=MAX_MESSAGE_BYTES, static_path=str(STATIC_DIR))


def _load(state: ServerState, loop) -> None:
    from ..api import SopranoTTS
    from ..runtime.sampling import SamplingParams
    s = state.settings
    started = time.perf_counter()
    tts = SopranoTTS(s.model, device=s.device, cache_dir=s.cache_dir, download=s.download,
                     backend=s.backend, max_batch=s.max_batch, decoder_path=s.decoder_path,
                     threads=s.threads)
    state.tts = tts
    state.synth = Synthesizer(tts, loop, workers=s.workers, queue_limit=s.queue_limit,
                              chunk_size=s.chunk_size, first_chunk_size=s.first_chunk_size,
                              decoder_batch_size=s.decoder_batch_size,
                              params=SamplingParams(s.temperature, s.top_p,
                                                    s.repetition_penalty),
                              max_new_tokens=s.max_new_tokens, retries=s.retries)
    log.info("model %s loaded on %s in %.1f s", tts.model_dir, tts.device,
             time.perf_counter() - started)


async def serve(settings: ServerSettings, host: str, port: int) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    loop = asyncio.get_running_loop()
    state = ServerState(settings)
    # idle_connection_timeout is also Tornado's header timeout: headers sent at a trickle end there
    server = tornado.httpserver.HTTPServer(make_app(state),
                                           idle_connection_timeout=settings.idle_timeout,
                                           body_timeout=settings.body_timeout)
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
        log.debug("cannot load the model: %s", state.load_error)  # the CLI prints it once
        server.stop()
        raise loading.exception()
    await stopping.wait()
    log.info("shutting down: draining %d session(s)", len(state.sessions))
    server.stop()
    deadline = time.monotonic() + settings.shutdown_deadline_s
    while time.monotonic() < deadline and (state.speech_streams or any(
            h.session is not None and not h.session.idle() for h in state.sessions)):
        await asyncio.sleep(0.05)
    for handler in list(state.sessions):
        handler.close(1001, "server shutting down")
    if state.synth is not None:
        state.synth.close()
    await asyncio.sleep(0.1)
    return 0
