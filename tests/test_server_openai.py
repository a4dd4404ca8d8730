"""``/v1/audio/speech`` and ``/v1/models`` through the official ``openai`` client.

A real server (tiny checkpoint, in a subprocess) for audio and request errors. An in-process app
with a scripted synthesizer for what a real model cannot be made to do on cue: still loading,
busy, failing before or after its first audio, streaming until the client hangs up.
"""
import asyncio
import base64
import io
import json
import types
import urllib.error
import urllib.request
import wave

import numpy as np
import openai
import pytest
import soundfile as sf
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from helpers import SERVER_MAX_NEW_TOKENS, assert_same_audio, with_total_samples
from soprano.audio import to_int16
from soprano.server.app import ServerSettings, ServerState, make_app
from soprano.server.jobs import Busy

TEXT = "Hello there. This is the speech endpoint talking to you."
RATE = 32000


@pytest.fixture(scope="module")
def client(server):
    """The official client on this module's live server (conftest's ``server``)."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="unused",
                         max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def want(expected):
    """int16 PCM of the whole input, as one job synthesizes it (sentence by sentence)."""
    return expected(TEXT)


def speak(client, **kw) -> bytes:
    kw = {"model": "tts-1", "voice": "alloy", "input": TEXT, **kw}
    return client.audio.speech.create(**kw).content


def decode_lossless(fmt, data, samples):
    if fmt == "pcm":
        return np.frombuffer(data, "<i2")
    if fmt == "wav":
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
            return np.frombuffer(w.readframes(w.getnframes()), "<i2")
    # STREAMINFO says "length unknown": soundfile reads to the end once told the true one
    pcm, rate = sf.read(io.BytesIO(with_total_samples(data, samples)), dtype="int16")
    assert rate == RATE
    return pcm


# --- audio from the real server ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac"])
def test_lossless_formats_carry_the_models_audio(client, want, fmt):
    data = speak(client, response_format=fmt)
    assert_same_audio(decode_lossless(fmt, data, len(want)), want)


def test_mp3_is_the_default_and_decodes(client, want):
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT) as r:
        assert r.headers["content-type"] == "audio/mpeg"
        data = r.read()
    assert int.from_bytes(data[:2], "big") >> 5 == 0x7FF  # MPEG frame sync, no ID3 in front
    pcm, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == RATE and len(want) <= len(pcm) <= len(want) + 3 * 1152


def test_opus_decodes_to_the_same_duration(client, want):
    data = speak(client, response_format="opus")
    assert data[:4] == b"OggS"
    pcm, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 48000 and len(pcm) == len(want) * 3 // 2


def test_streamed_pcm_is_chunked_at_the_server_rate(client, want):
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice={"id": "any"}, input=TEXT, response_format="pcm") as r:
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.headers["content-type"] == f"audio/pcm; rate={RATE}; channels=1"
        data = b"".join(r.iter_bytes())
    assert_same_audio(np.frombuffer(data, "<i2"), want)


def test_sse_deltas_then_done(client, want):
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="pcm",
            stream_format="sse") as r:
        assert r.headers["content-type"] == "text/event-stream"
        lines = list(r.iter_lines())
    events = [json.loads(line.removeprefix("data: ")) for line in lines if line]
    assert all(line.startswith("data: ") for line in lines if line)
    assert events[-1] == {"type": "speech.audio.done"}
    deltas = events[:-1]
    assert len(deltas) > 1 and {e["type"] for e in deltas} == {"speech.audio.delta"}
    pcm = np.frombuffer(b"".join(base64.b64decode(e["audio"]) for e in deltas), "<i2")
    assert_same_audio(pcm, want)


def test_longest_input_is_taken_and_hanging_up_leaves_the_server_well(client, want):
    text = ("Hello there. " * 400)[:4096]
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm") as r:
        assert r.status_code == 200 and next(r.iter_bytes())
    # the hung-up request was cancelled; the server goes on serving
    assert_same_audio(np.frombuffer(speak(client, response_format="pcm"), "<i2"), want)


def test_models_lists_the_loaded_model(client):
    models = client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [("tiny", "model",
                                                                     "soprano-tts")]


# --- request errors from the real server ----------------------------------------------------
BAD = [
    ({"input": ""}, "input", "empty_string"),
    ({"input": "   "}, "input", "empty_string"),
    ({"input": "x" * 4097}, "input", "string_above_max_length"),
    ({"input": 12}, "input", "invalid_value"),
    ({"response_format": "aac"}, "response_format", "invalid_value"),
    ({"stream_format": "chunks"}, "stream_format", "invalid_value"),
    ({"speed": 9.0}, "speed", "invalid_value"),
    ({"speed": 0.25}, "speed", "invalid_value"),  # OpenAI allows it; soprano.speed does not
    ({"voice": {"name": "x"}}, "voice", "invalid_value"),
    ({"instructions": "whisper"}, "instructions", "unsupported_value"),
    ({"extra_body": {"loudness": 3}}, "loudness", "unknown_parameter"),
]


@pytest.mark.parametrize("change,param,code", BAD, ids=[c for _, _, c in BAD])
def test_bad_request_is_400_with_openai_error(client, change, param, code):
    with pytest.raises(openai.BadRequestError) as e:
        speak(client, **change)
    assert e.value.status_code == 400
    assert set(e.value.response.json()) == {"error"}
    assert e.value.body["type"] == "invalid_request_error"
    assert (e.value.body["param"], e.value.body["code"]) == (param, code)
    assert isinstance(e.value.body["message"], str) and e.value.body["message"]


def post_raw(port, body: bytes, method="POST"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/audio/speech", method=method,
                                 data=body if method == "POST" else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]


@pytest.mark.parametrize("body,status,code", [
    (b'{"model": "tts-1", "input": ', 400, "invalid_json"),
    (b"\xff\xfe", 400, "invalid_json"),
    (b'["model", "input"]', 400, "invalid_json"),
    (b"[" * 60_000, 400, "invalid_json"),  # nested past Python's recursion limit
    (b'{"model": "m", "input": "hi", "speed": ' + b"9" * 5000 + b"}", 400,
     "invalid_json"),  # past Python's 4300-digit int limit
    (b'{"model": "m", "input": "hi", "speed": 1' + b"0" * 400 + b"}", 400, "invalid_value"),
    (b'{"input": "Hello."}', 400, "missing_required"),
    (json.dumps({"model": "m", "input": "hi", "voice": "a" * 70_000}).encode(), 413,
     "request_too_large"),
])
def test_unparsable_or_oversized_body(server, body, status, code):
    got, error = post_raw(server, body)
    assert (got, error["code"]) == (status, code)
    assert set(error) == {"message", "type", "param", "code"}


def test_wrong_method_is_an_openai_error_too(server):
    assert post_raw(server, b"", method="GET") == (405, {
        "message": "Method Not Allowed", "type": "invalid_request_error", "param": None,
        "code": None})


# --- an in-process app with a scripted synthesizer -------------------------------------------
class ScriptedSynth:
    """The synthesizer's interface (submit, cancel, ack): ``chunks`` chunks of a tone per job
    (``None``: until cancelled), then ``reason``; ``busy`` refuses every job."""
    CHUNK = (0.3 * np.sin(np.arange(4096) / 5)).astype(np.float32)

    def __init__(self, chunks=3, reason="done", busy=False):
        self.chunks, self.reason, self.busy = chunks, reason, busy
        self.emitted = self.acked = 0
        self.cancelled = []

    def submit(self, job):
        if self.busy:
            raise Busy("server busy: too many synthesis jobs queued, try again later")
        asyncio.get_running_loop().call_soon(self._step, job, 0)

    def _step(self, job, sent):
        if job.cancelled:
            return job.on_finish(job, "cancelled")
        if sent == self.chunks:
            return job.on_finish(job, self.reason)
        self.emitted += 1
        job.on_chunk(job, self.CHUNK)
        asyncio.get_running_loop().call_later(0.005, self._step, job, sent + 1)

    def cancel(self, job):
        job.cancelled = True
        self.cancelled.append(job)

    def ack(self, job):
        self.acked += 1


def run_app(synth, go, sample_rate=RATE) -> ServerState:
    """``await go(client)`` against the app holding ``synth`` (None: model still loading)."""
    state = ServerState(ServerSettings(model="ekwek/Soprano-1.1-80M", sample_rate=sample_rate))
    state.tts = types.SimpleNamespace(sample_rate=RATE, model_dir=".")
    state.synth = synth

    async def main():
        sock, port = bind_unused_port()
        server = HTTPServer(make_app(state))
        server.add_sockets([sock])
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                    max_retries=0, timeout=30)
        try:
            await go(client)
        finally:
            await client.close()
            server.stop()
    asyncio.run(main())
    return state


async def aspeak(client, **kw):
    kw = {"model": "tts-1", "voice": "alloy", "input": TEXT, **kw}
    return (await client.audio.speech.create(**kw)).content


def test_loading_model_is_503_for_speech_and_models():
    async def go(client):
        with pytest.raises(openai.InternalServerError) as e:
            await aspeak(client)
        assert e.value.status_code == 503
        assert e.value.body == {"message": "the model is still loading; retry shortly",
                                "type": "server_error", "param": None,
                                "code": "model_not_ready"}
        with pytest.raises(openai.InternalServerError) as e:
            await client.models.list()
        assert e.value.status_code == 503
    run_app(None, go)


def test_busy_synthesizer_is_429():
    async def go(client):
        with pytest.raises(openai.RateLimitError) as e:
            await aspeak(client)
        assert e.value.status_code == 429
        assert (e.value.body["type"], e.value.body["code"]) == ("rate_limit_error", "server_busy")
    metrics = run_app(ScriptedSynth(busy=True), go).metrics.registry
    assert metrics.get_sample_value("soprano_errors_total", {"kind": "busy"}) == 1


def test_hub_model_id_and_every_chunk_acked():
    synth = ScriptedSynth()

    async def go(client):
        assert [m.id for m in (await client.models.list()).data] == ["ekwek/Soprano-1.1-80M"]
        pcm = np.frombuffer(await aspeak(client, response_format="pcm"), "<i2")
        assert np.array_equal(pcm, np.tile(to_int16(ScriptedSynth.CHUNK), 3))
    metrics = run_app(synth, go).metrics.registry
    assert synth.emitted == synth.acked == 3
    assert metrics.get_sample_value("soprano_time_to_first_audio_seconds_count") == 1


def test_client_hanging_up_cancels_the_job():
    synth = ScriptedSynth(chunks=None)  # never ends: any bytes read came before the job's end

    async def go(client):
        async with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=TEXT, response_format="pcm") as r:
            async for _ in r.iter_bytes():
                break
        for _ in range(200):
            if synth.cancelled:
                break
            await asyncio.sleep(0.01)
        assert len(synth.cancelled) == 1
        await asyncio.sleep(0.05)  # the cancelled job finishes on its next step
    run_app(synth, go)
    assert synth.acked == synth.emitted  # chunks made after the hang-up are acked unsent


def test_server_sample_rate_applies():
    async def go(client):
        with wave.open(io.BytesIO(await aspeak(client, response_format="wav"))) as w:
            assert w.getframerate() == 16000
            assert w.readframes(w.getnframes()) and w.getnframes() > 3 * 2048 - 8
        pcm = await aspeak(client, response_format="pcm")
        assert abs(len(pcm) // 2 - 3 * 2048) <= 2
    run_app(ScriptedSynth(), go, sample_rate=16000)


def test_failure_before_audio_is_500_json():
    async def go(client):
        with pytest.raises(openai.InternalServerError) as e:
            await aspeak(client)
        assert e.value.status_code == 500
        assert e.value.body == {"message": "synthesis failed: boom", "type": "server_error",
                                "param": None, "code": "synthesis_failed"}
    run_app(ScriptedSynth(chunks=0, reason="error: synthesis failed: boom"), go)


def test_failure_after_audio_breaks_the_stream_or_sends_an_sse_error():
    async def go(client):
        with pytest.raises(openai.APIConnectionError):  # incomplete chunked body
            await aspeak(client, response_format="pcm")
        async with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=TEXT, response_format="pcm",
                stream_format="sse") as r:
            events = [json.loads(line.removeprefix("data: "))
                      async for line in r.iter_lines() if line]
        assert [e["type"] for e in events] == ["speech.audio.delta"] * 2 + ["error"]
        assert events[-1]["error"]["code"] == "synthesis_failed"
    run_app(ScriptedSynth(chunks=2, reason="error: synthesis failed: boom"), go)


def test_sigterm_lets_a_running_speech_stream_finish(start_server, want):
    import http.client
    import signal
    live = start_server()
    proc, port = live.proc, live.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/audio/speech", json.dumps(
        {"model": "soprano", "input": TEXT, "voice": "default", "response_format": "pcm"}),
        {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read1(4096)
    assert first
    proc.send_signal(signal.SIGTERM)
    rest = resp.read()
    assert_same_audio(np.frombuffer(first + rest, "<i2"), want)
    assert proc.wait(timeout=30) == 0


def test_speed_changes_duration_not_pitch(client, tiny_tts):
    """speed 2 halves the frames the decoder makes of each sentence's hidden states."""
    fast = np.frombuffer(speak(client, response_format="pcm", speed=2.0), "<i2")
    sentences = tiny_tts.generate([TEXT], max_new_tokens=SERVER_MAX_NEW_TOKENS)[0]
    want_fast = np.concatenate([
        to_int16(tiny_tts.decode_hidden(s.generated.hidden, 2.0)) for s in sentences])
    assert_same_audio(fast, want_fast)
    assert abs(len(fast) / sum(2048 * (len(s.generated.token_ids) - 1) for s in sentences)
               - 0.5) < 0.02
