"""The server's synthesis scheduler: text jobs in, audio chunks out, cancellable per step.

The boundary to the rest of the server is small on purpose (``submit``, chunk/finish callbacks,
``cancel``, ``ack``) so a GPU scheduler with continuous batching can replace it later. Here,
``inflight`` lanes each own a one-slot KV cache over the shared model weights; a job holds a lane
while it runs. ``workers`` threads advance runnable jobs one decode step at a time, round-robin,
so every job progresses, a cancel takes effect within one step, and a job whose session has
``max_unacked`` frames not yet written is parked (its reader is slow) without holding a thread.
Jobs beyond the lanes wait in a bounded queue; beyond that ``submit`` raises ``Busy``.
The event loop never runs model code: callbacks are handed to it with ``call_soon_threadsafe``.
"""
import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import text as textproc
from ..model.vocos import SAMPLES_PER_TOKEN
from ..runtime.engine import Engine
from ..runtime.sampling import SamplingParams
from ..runtime.streaming import StreamingDecoder


class Busy(Exception):
    """Every lane is taken and the waiting queue is full."""


@dataclass(eq=False)
class Job:
    """One text chunk of one session. Callbacks run on the caller's event loop."""
    text: str
    on_chunk: Callable[["Job", np.ndarray], None]
    on_finish: Callable[["Job", str], None]  # reason: "done" | "cancelled" | "error: ..."
    speed: float = 1.0  # tempo; other than 1 a sentence's audio comes when it is complete
    id: int = field(default_factory=itertools.count(1).__next__)
    cancelled: bool = False
    unacked: int = 0
    # For /metrics: time to first audio counts from submission, x real time from lane to finish.
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    finished: float = 0.0
    samples: int = 0


class Synthesizer:
    def __init__(self, tts, loop, workers: int = 2, inflight: int = 4, queue_limit: int = 64,
                 chunk_tokens: int = 4, first_chunk_tokens: int = 1, max_unacked: int = 16,
                 params: SamplingParams = None, max_new_tokens: int = 512):
        self.tts, self.loop = tts, loop
        self.params = params or SamplingParams()
        self.chunk_tokens, self.first_chunk_tokens = chunk_tokens, first_chunk_tokens
        self.max_unacked = max_unacked
        self.max_new_tokens, self.queue_limit = max_new_tokens, queue_limit
        self.inflight = inflight
        self.free_lanes = [Engine(tts.backbone, tts.tokenizer, max_batch=1)
                           for _ in range(inflight)]
        self.waiting: collections.deque[Job] = collections.deque()
        self.runnable: collections.deque = collections.deque()   # (job, lane, steps)
        self.parked: dict[Job, tuple] = {}
        self.cv = threading.Condition()
        self.closing = False
        self.threads = [threading.Thread(target=self._work, name=f"synth-{i}", daemon=True)
                        for i in range(workers)]
        for t in self.threads:
            t.start()

    # --- called from the event loop -------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.cv:
            if self.free_lanes:
                self._start(job, self.free_lanes.pop())
            elif len(self.waiting) < self.queue_limit:
                self.waiting.append(job)
            else:
                raise Busy("server busy: too many synthesis jobs queued, try again later")
            self.cv.notify()

    def cancel(self, job: Job) -> None:
        with self.cv:
            job.cancelled = True
            if job in self.waiting:
                self.waiting.remove(job)
                self._finish(job, None, "cancelled")
            elif job in self.parked:
                self.runnable.append(self.parked.pop(job))
            self.cv.notify()

    def ack(self, job: Job) -> None:
        """One frame of ``job`` was written to its client."""
        with self.cv:
            job.unacked -= 1
            if job in self.parked and job.unacked < self.max_unacked:
                self.runnable.append(self.parked.pop(job))
                self.cv.notify()

    def stats(self) -> dict:
        with self.cv:
            # Lanes held, not runnable + parked: a job being stepped by a worker is in neither.
            return {"lanes_free": len(self.free_lanes), "waiting": len(self.waiting),
                    "running": self.inflight - len(self.free_lanes)}

    def close(self) -> None:
        with self.cv:
            self.closing = True
            self.cv.notify_all()

    # --- worker threads ----------------------------------------------------------------------
    def _start(self, job: Job, lane: Engine) -> None:
        job.started = time.perf_counter()
        self.runnable.append((job, lane, self._steps(job, lane)))

    def _finish(self, job: Job, lane, reason: str) -> None:
        """With ``self.cv`` held: free the lane for the next waiting job and tell the session."""
        if lane is not None:
            job.finished = time.perf_counter()
            if self.waiting:
                self._start(self.waiting.popleft(), lane)
            else:
                self.free_lanes.append(lane)
        self.loop.call_soon_threadsafe(job.on_finish, job, reason)

    def _steps(self, job: Job, lane: Engine):
        """Yields None per decode step and float32 audio whenever a chunk is complete."""
        for sentence in textproc.prepare_sentences(job.text):
            prompt = lane.encode(textproc.format_prompt(sentence))
            if job.speed != 1.0:
                yield from self._sentence_at_speed(job, lane, prompt)
                continue
            stream = StreamingDecoder(self.tts.decoder, self.chunk_tokens,
                                      self.first_chunk_tokens)
            for step in lane.steps([prompt], self.params, self.max_new_tokens):
                chunk = None
                if step.tokens[0] != lane.eos:
                    chunk = stream.push(step.hidden[0])
                yield chunk
            tail = stream.finish()
            if tail.size:
                yield tail

    def _sentence_at_speed(self, job: Job, lane: Engine, prompt: list[int]):
        """A tempo change re-times the whole sentence's frame grid (``VocosDecoder(h, speed)``),
        so the windows of the exact streaming decoder do not apply: decode the sentence once
        it is complete, then hand it out in chunk-sized pieces."""
        hidden = []
        for step in lane.steps([prompt], self.params, self.max_new_tokens):
            if step.tokens[0] != lane.eos:
                hidden.append(step.hidden[0].float().cpu().numpy())
            yield None
        audio = self.tts.decode_hidden(np.array(hidden, np.float32), job.speed)
        piece = self.chunk_tokens * SAMPLES_PER_TOKEN
        for start in range(0, len(audio), piece):
            yield audio[start:start + piece]

    def _work(self) -> None:
        while True:
            with self.cv:
                while not self.runnable and not self.closing:
                    self.cv.wait()
                if self.closing:
                    return
                job, lane, steps = entry = self.runnable.popleft()
                if job.cancelled:
                    self._finish(job, lane, "cancelled")
                    continue
            try:
                chunk = next(steps)
            except StopIteration:
                with self.cv:
                    self._finish(job, lane, "done")
                continue
            except Exception as e:  # a model failure ends this job, not the server
                with self.cv:
                    self._finish(job, lane, f"error: synthesis failed: {e}")
                continue
            with self.cv:
                if chunk is not None and chunk.size:
                    job.unacked += 1
                    job.samples += chunk.size
                    self.loop.call_soon_threadsafe(job.on_chunk, job, chunk)
                if job.unacked >= self.max_unacked and not job.cancelled:
                    self.parked[job] = entry
                else:
                    self.runnable.append(entry)
                self.cv.notify()
