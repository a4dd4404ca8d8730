"""Property-based fuzzing of what clients control: the ``/v1/stream`` parser and session, the
chunker and sentence splitter, the ``/v1/audio/speech`` body.

In process wherever possible, so ``HYPOTHESIS_PROFILE=soak`` can run 10 000 examples per target
in minutes; one live-server target checks the same messages end to end. Each target asserts
values, not only "no exception": the answer the documentation promises (fuzz_strategies.py's
oracles), state left consistent, every frame accounted for.
"""
import asyncio
import json
import re

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fuzz_strategies import (INT_LIMITS, TEXT, judge_speech, judge_stream, raw_messages,
                             speech_bodies)
from helpers import SENTENCE, collect, connect, send, speaks
from soprano.audio import to_int16
from soprano.server import protocol, session as session_mod
from soprano.server.chunker import Chunker
from soprano.server.jobs import Busy
from soprano.server.openai_request import ApiError, SpeechRequest, parse_request
from soprano.text.split import prepare_sentences, split_sentences

KINDS = {"invalid_json", "binary", "bad_message", "bad_field", "oversized"}
DEFAULTS = {"voice_path": None, "speed": 1.0, "language_id": "en", "min_chars": 24,
            "min_words": 2, "max_chars": 160, "max_delay_ms": 220}
MAX_ERROR_CHARS = protocol.ECHO_CHARS + 100  # a quoted value plus the sentence around it


def config_dict(cfg: protocol.StreamConfig) -> dict:
    return {key: getattr(cfg, key) for key in DEFAULTS}


def squeeze(text: str) -> str:
    """``text`` without whitespace: the chunker strips the pieces it cuts."""
    return "".join(text.split())


# --- the parser -----------------------------------------------------------------------------------
@given(raw=raw_messages(), current=st.fixed_dictionaries({
    "min_chars": st.integers(1, 1000), "max_chars": st.integers(1000, 2000)}))
def test_parser_answers_every_message_as_documented(raw, current):
    cfg = protocol.StreamConfig(**current)
    want, new = judge_stream(raw, {**DEFAULTS, **current})
    try:
        msg = protocol.parse_client(raw, cfg)
    except protocol.ProtocolError as e:
        assert want is None, f"refused {raw!r}: {e}"
        assert e.kind in KINDS
        assert str(e) and len(str(e)) <= MAX_ERROR_CHARS, str(e)
        return
    assert want is not None, f"accepted {raw!r} as {msg}"
    assert type(msg).__name__.lower() == want
    if want == "config":
        assert {**config_dict(cfg), **msg.changes} == new
    if want == "text":
        assert msg.text == json.loads(raw)["text"]


# --- the session state machine, with a scripted synthesizer ---------------------------------------
class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when told: the delay timer and the token bucket
    then run on the fuzzer's time, not the machine's."""
    now = 0.0

    def time(self):
        return self.now


class FakeSynth:
    """The synthesizer's interface. A job yields ``1 + len(text) % 3`` chunks, one per loop
    turn, each audio encoding (job number, chunk index) so every frame on the wire can be
    traced back; a text with '#' fails after its audio; ``busy`` refuses jobs."""

    def __init__(self):
        self.busy = False
        self.jobs = []           # (job, epoch, chunk count) in submission order
        self.texts = []          # (text, epoch) of every job offered, refused ones too
        self.frames = {}         # PCM bytes -> (job number, chunk index)
        self.emitted, self.acked, self.finished = {}, {}, {}
        self.epoch = 0           # stops handled so far

    def submit(self, job):
        self.texts.append((job.text, self.epoch))
        if self.busy:
            raise Busy("server busy: too many synthesis jobs queued, try again later")
        n = len(self.jobs)
        self.jobs.append((job, self.epoch, 1 + len(job.text) % 3))
        self.emitted[job] = self.acked[job] = self.finished[job] = 0
        asyncio.get_running_loop().call_soon(self._step, job, n, 0)

    def _step(self, job, n, index):
        if job.cancelled or index == self.jobs[n][2]:
            self.finished[job] += 1
            reason = ("cancelled" if job.cancelled else
                      "error: synthetic failure" if "#" in job.text else "done")
            return job.on_finish(job, reason)
        audio = np.array([n, index], np.float32) / 32767
        self.frames[to_int16(audio).astype("<i2").tobytes()] = (n, index)
        self.emitted[job] += 1
        job.on_chunk(job, audio)
        asyncio.get_running_loop().call_soon(self._step, job, n, index + 1)

    def cancel(self, job):
        job.cancelled = True

    def ack(self, job):
        self.acked[job] += 1

    def active(self) -> bool:
        return any(not done for done in self.finished.values())


class FakeMetrics:
    def __init__(self):
        self.kinds = []
        outer = self

        class Errors:
            def labels(self, kind):
                outer.kinds.append(kind)
                return self

            def inc(self):
                pass
        self.errors = Errors()
        self.rtf = self.ttfa = type("Histogram", (), {"observe": lambda self, v: None})()


ACTIONS = st.one_of(
    st.tuples(st.just("msg"), raw_messages()),
    st.tuples(st.just("msg"), st.builds(lambda t: json.dumps({"type": "text", "text": t}),
                                        TEXT.filter(bool))),
    st.tuples(st.just("msg"), st.sampled_from(['{"type":"flush"}', '{"type":"stop"}'])),
    st.tuples(st.just("storm"), st.sampled_from(['{"type":"flush"}', '{"type":"stop"}',
                                                 '{"type":"dance"}']), st.integers(2, 80)),
    st.tuples(st.just("turns"), st.integers(1, 8)),  # let synthesis and sending run a little
    st.tuples(st.just("second")),                    # 1 s passes: timers fire, bucket refills
    st.tuples(st.just("reader"), st.booleans()),     # the client stops or resumes reading
    st.tuples(st.just("busy"), st.booleans()),       # the synthesizer refuses jobs or not
)


class Run:
    """One fuzzed session: the actions, an oracle beside the session, the wire."""

    def __init__(self, rate, max_buffered):
        self.synth, self.metrics = FakeSynth(), FakeMetrics()
        self.wire, self.closed_with, self.loop_errors = [], None, []
        self.reading = asyncio.Event()
        self.reading.set()
        self.rate = rate
        self.session = session_mod.Session(
            self._send, self._send, self.synth, self.metrics, min_words=2, include_text=False,
            sample_rate=32000, model_rate=32000, max_buffered_chars=max_buffered,
            on_overflow=self._overflow, max_messages_per_second=rate)
        loop = asyncio.get_running_loop()
        self.session.bucket = session_mod.TokenBucket(rate, clock=loop.time)
        loop.set_exception_handler(lambda _, context: self.loop_errors.append(context))
        self.config = dict(DEFAULTS)
        self.tokens, self.limited = rate, False
        self.accepted = [[]]        # texts accepted, by epoch (stops split epochs)
        self.refused_parse = self.rate_limited = self.flushes = self.stops = 0
        self.dones_cleared = 0      # flush dones a later stop took back before they were sent

    async def _send(self, message):
        await self.reading.wait()
        self.wire.append(message)

    def _overflow(self, code, reason):
        assert self.closed_with is None
        self.closed_with = (code, reason)

    def message(self, raw):
        if self.closed_with:  # Tornado delivers nothing once the close has begun
            return
        if self.rate:  # whole seconds only, so the bucket's float arithmetic is exact
            if self.tokens < 1:
                self.rate_limited += not self.limited
                self.limited = True
                self.session.handle(raw)
                return
            self.tokens -= 1
            self.limited = False
        kind, new = judge_stream(raw, self.config)
        errors = len(self.metrics.kinds)
        if kind == "stop":
            self.dones_cleared += sum(item is session_mod._DONE for item in self.session.pending)
            self.synth.epoch += 1
        self.session.handle(raw)
        if kind is None:
            self.refused_parse += 1
        elif kind == "text" and self.metrics.kinds[errors:] != ["oversized"]:
            self.accepted[-1].append(json.loads(raw)["text"])
        self.flushes += kind == "flush"
        if kind == "stop":
            self.stops += 1
            self.accepted.append([])
        self.config = new
        assert config_dict(self.session.config) == self.config  # all of a config, or nothing
        c = self.session.chunker
        assert (c.min_chars, c.min_words, c.max_chars) == (
            self.config["min_chars"], self.config["min_words"], self.config["max_chars"])

    async def turns(self, n):
        for _ in range(n):
            await asyncio.sleep(0)

    def second(self):
        asyncio.get_running_loop().now += 1.0
        self.tokens = self.rate

    async def settle(self):
        """Run until nothing moves: synthesis finished, every queued message sent."""
        for _ in range(10_000):
            await self.turns(3)
            s = self.session
            if not self.synth.active() and s.outgoing.empty() and s.queued_frames == 0:
                return
        raise AssertionError("the session never went quiet")


async def fuzz_session(actions, rate, max_buffered):
    run = Run(rate, max_buffered)
    for action in actions:
        if action[0] == "msg":
            run.message(action[1])
        elif action[0] == "storm":
            for _ in range(action[2]):
                run.message(action[1])
        elif action[0] == "turns":
            await run.turns(action[1])
        elif action[0] == "second":
            run.second()
            await run.turns(2)
        elif action[0] == "reader":
            (run.reading.set if action[1] else run.reading.clear)()
        else:
            run.synth.busy = action[1]
    run.reading.set()
    run.synth.busy = False
    for _ in range(11):  # the longest delay timer (10 s) fires, the bucket is full again
        run.second()
        await run.turns(2)
    await run.settle()
    run.message(json.dumps({"type": "text", "text": "Closing words, all of them spoken."}))
    run.message('{"type": "flush"}')
    await run.settle()
    run.session.close()
    await run.turns(3)
    return run


@given(actions=st.lists(ACTIONS, max_size=40), rate=st.sampled_from([0, 3, 50]),
       max_buffered=st.sampled_from([20_000, 200]))
# Found by this test: a stop dropped frames that had their chunk ids already, so the ids the
# client saw jumped (1, 3, 4)
@example(actions=[("msg", '{"type": "text", "text": "0"}'), ("msg", '{"type":"flush"}'),
                  ("second",), ("msg", '{"type":"stop"}')], rate=0, max_buffered=20_000)
# and: a session closed for not reading while a frame was being written never acknowledged it
@example(actions=[("msg", '{"type": "text", "text": "0"}'), ("storm", '{"type":"flush"}', 24),
                  ("reader", False), ("second",), ("storm", '{"type":"flush"}', 41)],
         rate=0, max_buffered=20_000)
# and: a stop drops the queued frames of a job that has already finished (not a bug)
@example(actions=[("msg", '{"type": "text", "text": "0"}'), ("reader", False), ("second",),
                  ("turns", 3), ("msg", '{"type":"stop"}')], rate=0, max_buffered=20_000)
def test_session_state_stays_consistent_under_any_message_sequence(actions, rate, max_buffered):
    loop = FakeTimeLoop()
    try:
        run = loop.run_until_complete(fuzz_session(actions, rate, max_buffered))
    finally:
        loop.close()
    s, synth = run.session, run.synth
    assert run.loop_errors == []                       # no callback raised
    # the sender ended by close() (cancelled before it ever ran, or returned), not by an error
    assert s.sender.done() and (s.sender.cancelled() or s.sender.exception() is None)
    # every frame the synthesizer produced was acknowledged, written or dropped; nothing left
    assert all(synth.acked[job] == synth.emitted[job] for job in synth.emitted)
    assert all(n == 1 for n in synth.finished.values())
    assert s.queued_messages == s.queued_bytes == s.queued_frames == 0
    assert set(run.metrics.kinds) <= KINDS | {"rate_limited", "busy", "synthesis", "not_reading"}
    if run.closed_with is not None:  # a client that stopped reading and kept sending
        code, reason = run.closed_with
        assert code == session_mod.CLOSE_NOT_READING and reason.startswith(
            "client is not reading: more than ")
        return
    texts = [json.loads(m) for m in run.wire if isinstance(m, str)]
    frames = [protocol.decode_frame(m) for m in run.wire if isinstance(m, bytes)]
    assert {t["type"] for t in texts} <= {"error", "done"}
    errors = [t["message"] for t in texts if t["type"] == "error"]
    assert len(errors) == len(run.metrics.kinds)
    assert sum(m.startswith("rate limited: ") for m in errors) == run.rate_limited
    session_errors = re.compile(r"rate limited: |too much text buffered|server busy: |"
                                r"synthetic failure$")
    assert sum(not session_errors.match(m) for m in errors) == run.refused_parse
    assert json.loads(run.wire[-1]) == {"type": "done"}  # the last flush's, after all audio
    assert sum(t["type"] == "done" for t in texts) == run.stops + run.flushes - run.dones_cleared
    # frames: chunk ids count from 1; each job's chunks in order, jobs in submission order, a
    # job's chunks all there unless a stop came after it (and dropped what was still queued)
    assert [h["chunk_id"] for h, _ in frames] == list(range(1, len(frames) + 1))
    traced = [synth.frames[pcm] for _, pcm in frames]
    assert traced == sorted(traced)
    for n, (job, epoch, chunks) in enumerate(synth.jobs):
        got = [index for m, index in traced if m == n]
        assert got == list(range(len(got)))
        assert len(got) == chunks or epoch < synth.epoch
    # text: what each epoch accepted reached the synthesizer (or was refused as busy), in order;
    # an epoch that a stop ended may have lost its tail
    for epoch, accepted in enumerate(run.accepted):
        sent = squeeze("".join(text for text, e in synth.texts if e == epoch))
        if epoch == len(run.accepted) - 1:
            assert sent == squeeze("".join(accepted)), (sent, accepted)
        else:
            assert squeeze("".join(accepted)).startswith(sent), (sent, accepted)


# --- the chunker and the sentence splitter --------------------------------------------------------
CHUNK_TEXT = st.text(st.sampled_from("ab .?!;:\n") | st.characters(), max_size=120)


@given(pieces=st.lists(CHUNK_TEXT, max_size=8), min_chars=st.integers(1, 30),
       min_words=st.integers(0, 4), extra=st.integers(0, 40))
# Found by this test: a boundary past max_chars was taken, making a chunk longer than max_chars
# (and different from the same text sent a character at a time)
@example(pieces=["0:"], min_chars=1, min_words=0, extra=0)
def test_chunker_keeps_all_text_within_bounds_however_it_arrives(pieces, min_chars, min_words,
                                                                 extra):
    """The chunks and what is left are the input (less whitespace at the cuts); each chunk is
    stripped, non-empty and at most ``max_chars`` long; after each push nothing left could
    still be cut; and the chunks do not depend on how the text was split into messages."""
    max_chars = min_chars + extra

    def chunks_of(parts):
        chunker = Chunker(min_chars, min_words, max_chars)
        out = []
        for part in parts:
            out += chunker.push(part)
            assert chunker._cut() is None and len(chunker.buffer) < max_chars
        return out, chunker.take_all()

    chunks, rest = chunks_of(pieces)
    assert squeeze("".join(chunks) + rest) == squeeze("".join(pieces))
    assert all(c and c == c.strip() and len(c) <= max_chars for c in chunks), chunks
    whole = "".join(pieces)
    assert chunks_of([whole]) == (chunks, rest)
    assert chunks_of(list(whole)) == (chunks, rest)


WORD_CHARS = re.compile(r"[\s.,;:!?]")


@given(text=st.text(st.sampled_from('ab ."!?\n“”') | st.characters(), max_size=900))
def test_sentence_splitter_keeps_every_word_within_300_characters(text):
    """Sentences are stripped, non-empty, at most 300 characters, and hold every character of
    the text but whitespace and the punctuation of dropped punctuation-only pieces."""
    sentences = split_sentences(text)
    assert all(s and s == s.strip() and len(s) <= 300 for s in sentences)
    want = WORD_CHARS.sub("", text.replace("“", '"').replace("”", '"'))
    assert WORD_CHARS.sub("", "".join(sentences)) == want


@given(text=st.text(max_size=300))
def test_text_preparation_never_fails_and_gives_ascii(text):
    """Whatever a client sends (emoji, lone surrogates, control characters), the model's
    input is a list of non-empty lower-case ASCII sentences."""
    sentences = prepare_sentences(text)
    assert all(s and s.isascii() and s == s.lower() for s in sentences), sentences


# --- the OpenAI speech request --------------------------------------------------------------------
@given(body=speech_bodies())
# Found by this test: unknown field names and bad formats were quoted back whole
@example(body=json.dumps({"model": "m", "input": "hi", "z" * 300: None}).encode())
@example(body=json.dumps({"model": "m", "input": "hi", "response_format": "x" * 300}).encode())
def test_speech_request_is_parsed_or_refused_as_documented(body):
    want = judge_speech(body)
    try:
        request = parse_request(body)
    except ApiError as e:
        assert want is not None, f"refused {body!r}: {e}"
        error = json.loads(json.dumps(e.body()))["error"]
        assert e.status == 400 and error["type"] == "invalid_request_error"
        assert (error["code"] == "invalid_json") == (want == "invalid_json"), (error, body)
        assert error["code"] in {"invalid_json", "invalid_value", "missing_required",
                                 "unknown_parameter", "empty_string", "string_above_max_length",
                                 "unsupported_value"}
        assert 0 < len(error["message"]) <= MAX_ERROR_CHARS, error["message"]
        assert error["param"] is None or len(error["param"]) <= protocol.ECHO_CHARS
        return
    assert want is None, f"accepted {body!r}"
    msg = json.loads(body)
    assert request == SpeechRequest(msg["input"], msg.get("response_format", "mp3"),
                                    msg.get("stream_format", "audio"),
                                    float(msg.get("speed", 1.0)))


# --- the same messages against a live server -------------------------------------------------
@settings(max_examples=max(20, settings.default.max_examples // 20))  # 20; 500 under soak
@given(raws=st.lists(raw_messages(), max_size=12))
def test_live_server_answers_fuzzed_messages_and_speaks_on(server, expected, raws):
    """Each message the oracle refuses gets one error (a binary frame too), the session is
    never closed, and after them it speaks SENTENCE as infer does."""
    config, refused = dict(DEFAULTS), 0
    for raw in raws:
        kind, config = judge_stream(raw, config)
        refused += kind is None

    async def go():
        ws = await connect(server)
        for raw in raws:
            await ws.write_message(raw, binary=isinstance(raw, bytes))
        await ws.write_message('{"type":"config","mark":1}')
        errors, ids = [], []
        while True:
            m = await asyncio.wait_for(ws.read_message(), 60)
            assert m is not None, f"closed with {ws.close_code}"
            if isinstance(m, bytes):
                ids.append(protocol.decode_frame(m)[0]["chunk_id"])
            elif json.loads(m)["type"] == "error":
                if json.loads(m)["message"] == "unknown config field(s): mark":
                    break
                errors.append(json.loads(m)["message"])
        assert len(errors) == refused, errors
        await ws.write_message('{"type":"stop"}')  # whatever the fuzz left buffered
        while (m := await asyncio.wait_for(ws.read_message(), 60)) != protocol.done():
            assert m is not None and isinstance(m, bytes) or json.loads(m)["type"] == "done"
        if config == DEFAULTS:  # other limits or speed cut or pace SENTENCE otherwise
            await speaks(ws, SENTENCE, expected(SENTENCE))
        else:
            await send(ws, type="text", text=SENTENCE)
            await send(ws, type="flush")
            headers, _, messages = await collect(ws)
            assert messages == [{"type": "done"}] and headers
        ws.close()
    asyncio.run(asyncio.wait_for(go(), 120))
