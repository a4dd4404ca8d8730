"""The Synthesizer in-process: concurrent jobs share decode steps (continuous batching) and
decoder calls (--decoder-batch-size), and each still gets exactly the audio it gets alone."""
import asyncio

import numpy as np
import pytest

from helpers import SERVER_MAX_NEW_TOKENS as MAX_NEW_TOKENS
from soprano.server.jobs import Busy, Job
from soprano.server.synthesis import Synthesizer

TEXTS = ["The first job speaks this sentence.", "A second job, with other words in it.",
         "Third job here.", "The fourth and last job of the group."]


class Recorder:
    """Wraps a callable and records the first dimension of its first argument per call."""

    def __init__(self, fn):
        self.fn, self.sizes = fn, []

    def __getattr__(self, name):
        return getattr(self.fn, name)

    def __call__(self, x, *args, **kwargs):
        self.sizes.append(len(x))
        return self.fn(x, *args, **kwargs)


async def run_jobs(synth, texts, speed=1.0):
    loop = asyncio.get_running_loop()
    audio = {t: [] for t in texts}
    finished = {t: loop.create_future() for t in texts}
    jobs = []
    for text in texts:
        def on_chunk(job, chunk, text=text):
            audio[text].append(chunk)
            synth.ack(job)
        job = Job(text, on_chunk, lambda job, reason, text=text: finished[text].set_result(reason),
                  speed=speed)
        synth.submit(job)
        jobs.append(job)
    reasons = await asyncio.wait_for(asyncio.gather(*finished.values()), 120)
    return reasons, {t: np.concatenate(a) if a else np.zeros(0, np.float32)
                     for t, a in audio.items()}


@pytest.fixture
def make_synth(tiny_tts):
    made = []

    def make(loop, **kwargs):
        kwargs.setdefault("max_new_tokens", MAX_NEW_TOKENS)
        synth = Synthesizer(tiny_tts, loop, **kwargs)
        made.append(synth)
        return synth
    yield make
    for synth in made:
        synth.close()


@pytest.mark.parametrize("decoder_batch_size", [1, 4])
def test_jobs_share_steps_and_decoder_calls_and_get_their_own_audio(
        tiny_tts, make_synth, monkeypatch, decoder_batch_size):
    async def go():
        synth = make_synth(asyncio.get_running_loop(), max_batch=4, workers=1,
                           decoder_batch_size=decoder_batch_size)
        steps = Recorder(synth.engine.runner.step_into)
        monkeypatch.setattr(synth.engine.runner, "step_into", steps)
        decoder = Recorder(tiny_tts.decoder.run_layers)  # every decoder pass, batch = streams
        monkeypatch.setattr(tiny_tts.decoder, "run_layers", decoder)
        reasons, audio = await run_jobs(synth, TEXTS)
        return reasons, audio, steps.sizes, decoder.sizes

    reasons, audio, step_rows, decoder_batches = asyncio.run(go())
    assert reasons == ["done"] * len(TEXTS)
    for text in TEXTS:
        want = tiny_tts.infer(text, max_new_tokens=MAX_NEW_TOKENS)
        assert audio[text].shape == want.shape
        assert np.abs(audio[text] - want).max() <= 1e-4
    # one prefill row-set per sentence, then decode steps of several jobs at once
    assert max(step_rows) > 1 and max(step_rows) <= 4
    if decoder_batch_size == 1:
        assert set(decoder_batches) == {1}
    else:
        assert max(decoder_batches) > 1


def test_speed_jobs_and_cancel_in_the_same_batch(tiny_tts, make_synth):
    async def go():
        loop = asyncio.get_running_loop()
        synth = make_synth(loop, max_batch=2, queue_limit=1)
        cancelled = loop.create_future()
        victim = Job("This job is cancelled right after it starts to run.",
                     lambda job, chunk: synth.ack(job),
                     lambda job, reason: cancelled.set_result(reason))
        synth.submit(victim)
        synth.cancel(victim)
        reasons, audio = await run_jobs(synth, TEXTS[:2], speed=1.5)
        return await cancelled, reasons, audio, synth.stats()

    cancel_reason, reasons, audio, stats = asyncio.run(go())
    assert cancel_reason == "cancelled" and reasons == ["done", "done"]
    for text in TEXTS[:2]:
        want = tiny_tts.infer(text, max_new_tokens=MAX_NEW_TOKENS, speed=1.5)
        assert np.abs(audio[text] - want).max() <= 1e-4
    assert stats == {"slots_free": 2, "waiting": 0, "running": 0}


def test_beyond_inflight_and_queue_is_busy(make_synth):
    async def go():
        synth = make_synth(asyncio.get_running_loop(), max_batch=1, queue_limit=1)
        jobs = [Job(t, lambda job, chunk: None, lambda job, reason: None) for t in TEXTS[:3]]
        synth.submit(jobs[0])
        synth.submit(jobs[1])
        with pytest.raises(Busy, match="server busy"):
            synth.submit(jobs[2])
        for job in jobs[:2]:
            synth.cancel(job)
    asyncio.run(go())


def test_cancel_with_audio_queued_for_busy_decoders_keeps_the_server_working(
        tiny_tts, make_synth, monkeypatch):
    """Jobs cancelled while their windows wait for a blocked decoder thread: the threads survive
    (a stale queue entry once ended a run twice and killed its thread) and the next job runs."""
    import threading
    gate = threading.Event()
    real = tiny_tts.decoder.run_layers

    def gated(*args, **kwargs):
        if threading.current_thread().name.startswith("synth-decoder"):
            gate.wait(30)
        return real(*args, **kwargs)

    async def go():
        loop = asyncio.get_running_loop()
        synth = make_synth(loop, max_batch=4, workers=1)
        monkeypatch.setattr(tiny_tts.decoder, "run_layers", gated)
        reasons = {}
        jobs = [Job(t, lambda job, chunk: synth.ack(job),
                    lambda job, reason: reasons.__setitem__(job.text, reason))
                for t in TEXTS[:3]]
        for job in jobs:
            synth.submit(job)
        while sum(len(run.work) for run in list(synth.runs.values())) < 3:
            await asyncio.sleep(0.01)  # windows pile up behind the blocked decoder
        for job in jobs:
            synth.cancel(job)
        gate.set()
        after, audio = await run_jobs(synth, [TEXTS[3]])
        threads = [synth.model_thread, *synth.decoders.threads]
        return reasons, after, audio, synth.stats(), [t.is_alive() for t in threads]

    reasons, after, audio, stats, alive = asyncio.run(go())
    assert set(reasons.values()) == {"cancelled"} and len(reasons) == 3
    assert after == ["done"] and audio[TEXTS[3]].size > 0
    assert stats == {"slots_free": 4, "waiting": 0, "running": 0}
    assert all(alive)


def test_first_audio_needs_the_prefill_and_three_decode_steps(tiny_tts, make_synth, monkeypatch):
    """The exact first chunk needs 4 hidden states: the prefill's and three decode steps'. The
    first window is decoded as soon as the 4th exists, before any further step."""
    async def go():
        synth = make_synth(asyncio.get_running_loop(), max_batch=2)
        steps = Recorder(synth.engine.runner.step_into)
        monkeypatch.setattr(synth.engine.runner, "step_into", steps)
        steps_at_first_window = []
        real = tiny_tts.decoder.run_layers

        def first_window(*args, **kwargs):
            steps_at_first_window.append(len(steps.sizes))
            return real(*args, **kwargs)

        monkeypatch.setattr(tiny_tts.decoder, "run_layers", first_window)
        reasons, _ = await run_jobs(synth, [TEXTS[0]])
        return reasons, steps_at_first_window

    reasons, steps_at_first_window = asyncio.run(go())
    assert reasons == ["done"] and steps_at_first_window[0] == 3


def test_flagged_sentences_are_regenerated_or_cut_on_the_server_path(tiny_tts, make_synth,
                                                                      monkeypatch):
    """The server's sentences go through the same pipeline as infer: a sentence flagged before
    any of its audio went out (here: at another speed, sent whole) is generated again and the
    last attempt kept; a streamed one flagged after its first chunk is cut at the flag."""
    from soprano.runtime import pipeline
    text = "This job speaks one sentence, long enough for the test."
    pushes = []

    def flag_from_twelve(self, h):
        pushes.append(1)
        return len(pushes) % 20 >= 12

    monkeypatch.setattr(pipeline.HallucinationDetector, "push", flag_from_twelve)

    async def go(speed):
        synth = make_synth(asyncio.get_running_loop(), max_batch=2, retries=1,
                           max_new_tokens=MAX_NEW_TOKENS + 20)
        try:
            return await run_jobs(synth, [text], speed=speed)
        finally:
            synth.close()

    reasons, audio = asyncio.run(go(1.0))
    assert reasons == ["done"] and len(pushes) == 12
    assert audio[text].size == 2048 * 11  # cut at the 12th state
    pushes.clear()
    monkeypatch.setattr(pipeline.HallucinationDetector, "push", lambda self, h: True)
    reasons, audio = asyncio.run(go(1.5))
    assert reasons == ["done"]
    want = tiny_tts.infer(text, max_new_tokens=MAX_NEW_TOKENS + 20, speed=1.5)
    assert audio[text].shape == want.shape and np.abs(audio[text] - want).max() <= 1e-4


def test_work_finishing_after_the_event_loop_closed_leaves_the_threads_alive(make_synth):
    """At shutdown the loop may close while a job still runs: handing its last chunk or its
    end to the closed loop once killed the model thread."""
    import time
    loop = asyncio.new_event_loop()
    synth = make_synth(loop, max_batch=1, workers=1)
    loop.close()
    synth.submit(Job(TEXTS[0], lambda job, chunk: None, lambda job, reason: None))
    deadline = time.monotonic() + 60
    while synth.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert synth.stats()["running"] == 0
    assert synth.model_thread.is_alive() and all(t.is_alive() for t in synth.decoders.threads)
