"""The server's synthesis scheduler: text jobs in, audio chunks out, cancellable per step.

The boundary to the rest of the server is small on purpose (``submit``, chunk/finish callbacks,
``cancel``, ``ack``), so the scheduler can change without touching sessions or handlers.

Inside, continuous batching. Up to ``inflight`` jobs hold a place; each job's current sentence
is a row of one ``ContinuousBatch`` (its own KV-cache slot). One model thread loops: start at
most one sentence (its prefill), then one decode step for every running sentence at once, which
on a CPU costs about what a step for one sentence does (the step streams the weights once).
Hidden states go to each sentence's ``StreamingDecoder``. A job's first chunk is decoded by the
model thread as soon as it is due (a listener waits for exactly that one); later chunks by
``workers`` decoder threads, each taking up to ``decoder_batch_size`` windows of any jobs into
one batched Vocos call while the model thread steps on. A cancel takes effect before the next
step. A job whose session has ``max_unacked`` frames not yet written (a slow reader) has its
sentence paused: it keeps its slot and skips steps. Jobs beyond ``inflight`` wait in a bounded
queue; beyond that ``submit`` raises ``Busy``. Only the model thread changes the batch. The
event loop never runs model code: callbacks reach it through ``call_soon_threadsafe``.
"""
import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import text as textproc
from ..model.vocos import SAMPLES_PER_TOKEN
from ..runtime.continuous import ContinuousBatch, Sequence
from ..runtime.engine import Engine
from ..runtime.sampling import SamplingParams
from ..runtime.streaming import StreamingDecoder, Window, decode_windows

log = logging.getLogger("soprano.server")


# Stands in a run's ``seq`` while its next sentence prefills, so it is not started twice.
_PREFILLING = Sequence([], 0, active=False)


class Busy(Exception):
    """Every place is taken and the waiting queue is full."""


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
    # For /metrics: time to first audio counts from submission, x real time from start to finish.
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    finished: float = 0.0
    samples: int = 0


@dataclass(eq=False)
class _Run:
    """A job's progress: sentences left, the one in the batch, audio work not yet decoded."""
    job: Job
    sentences: collections.deque = None
    seq: Sequence | None = None
    stream: StreamingDecoder | None = None
    hidden: list = field(default_factory=list)   # a sentence at another speed, until it ends
    work: collections.deque = field(default_factory=collections.deque)  # Window | (states, speed)
    decoding: bool = False   # a decoder worker holds this run's work
    generated: bool = False  # every sentence has left the batch
    error: str | None = None


class Synthesizer:
    def __init__(self, tts, loop, workers: int = 2, inflight: int = 16, queue_limit: int = 64,
                 chunk_tokens: int = 4, first_chunk_tokens: int = 1, max_unacked: int = 16,
                 params: SamplingParams = None, max_new_tokens: int = 512,
                 decoder_batch_size: int = 1):
        self.tts, self.loop = tts, loop
        self.chunk_tokens, self.first_chunk_tokens = chunk_tokens, first_chunk_tokens
        self.max_unacked, self.max_new_tokens = max_unacked, max_new_tokens
        self.inflight, self.queue_limit = inflight, queue_limit
        self.decoder_batch_size = max(1, decoder_batch_size)
        self.batch = ContinuousBatch(Engine(tts.backbone, tts.tokenizer, max_batch=inflight),
                                     params or SamplingParams())
        self.runs: dict[Job, _Run] = {}
        self.waiting: collections.deque[Job] = collections.deque()
        self.to_decode: collections.deque[_Run] = collections.deque()
        self.cv = threading.Condition()
        self.closing = False
        self.threads = [threading.Thread(target=self._model_loop, name="synth-model",
                                         daemon=True)]
        self.threads += [threading.Thread(target=self._decoder_loop, name=f"synth-decoder-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    # --- called from the event loop -------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.runs) < self.inflight:
                self._start(job)
            elif len(self.waiting) < self.queue_limit:
                self.waiting.append(job)
            else:
                raise Busy("server busy: too many synthesis jobs queued, try again later")
            self.cv.notify_all()

    def cancel(self, job: Job) -> None:
        with self.cv:
            job.cancelled = True
            if job in self.waiting:
                self.waiting.remove(job)
                self._report(job, "cancelled")
            self.cv.notify_all()

    def ack(self, job: Job) -> None:
        """One frame of ``job`` was written to its client."""
        with self.cv:
            job.unacked -= 1
            run = self.runs.get(job)
            if run is not None and self._live(run.seq) and job.unacked < self.max_unacked:
                run.seq.active = True
                self.cv.notify_all()

    def stats(self) -> dict:
        with self.cv:
            return {"lanes_free": self.inflight - len(self.runs), "waiting": len(self.waiting),
                    "running": len(self.runs)}

    def close(self) -> None:
        with self.cv:
            self.closing = True
            self.cv.notify_all()

    # --- bookkeeping, with self.cv held --------------------------------------------------------
    def _start(self, job: Job) -> None:
        job.started = time.perf_counter()
        self.runs[job] = _Run(job)

    def _report(self, job: Job, reason: str) -> None:
        self.loop.call_soon_threadsafe(job.on_finish, job, reason)

    @staticmethod
    def _live(seq) -> bool:
        return seq is not None and seq is not _PREFILLING

    def _end(self, run: _Run, reason: str) -> None:
        """The run leaves (it has no sequence in the batch): its place goes to the next job."""
        job = run.job
        del self.runs[job]
        run.work.clear()
        if run in self.to_decode:
            self.to_decode.remove(run)
        job.finished = time.perf_counter()
        self._report(job, reason)
        if self.waiting:
            self._start(self.waiting.popleft())
        self.cv.notify_all()

    def _settle(self, run: _Run) -> None:
        """End ``run`` if nothing of it is left to do (or it was cancelled or failed). Only the
        model thread touches the batch, so a run whose sentence is in it (or prefilling) waits
        for the model thread to take it out; a run being decoded, for its decoder thread."""
        if run.decoding or run.seq is not None or self.runs.get(run.job) is not run:
            return
        if run.job.cancelled:
            self._end(run, "cancelled")
        elif run.error is not None:
            self._end(run, f"error: {run.error}")
        elif run.generated and not run.work:
            self._end(run, "done")

    def _queue_work(self, run: _Run, item) -> None:
        run.work.append(item)
        if not run.decoding and run not in self.to_decode:
            self.to_decode.append(run)
            self.cv.notify_all()

    # --- the model thread ----------------------------------------------------------------------
    def _next_sentence(self) -> _Run | None:
        """A run whose next sentence can start now, if a slot is free."""
        if not self.batch.free_slots:
            return None
        for run in self.runs.values():
            if run.seq is None and not run.generated and not run.job.cancelled \
                    and run.error is None:
                return run
        return None

    def _drop_stopped(self) -> None:
        """Model thread, self.cv held: take cancelled and failed runs' sentences out."""
        for run in list(self.runs.values()):
            if run.job.cancelled or run.error is not None:
                if self._live(run.seq):
                    self.batch.leave(run.seq)
                    run.seq = None
                run.work.clear()
                self._settle(run)

    def _model_loop(self) -> None:
        while True:
            with self.cv:
                self._drop_stopped()
                starting = self._next_sentence()
                while not self.closing and starting is None and not any(
                        s.active for s in self.batch.members()):
                    self.cv.wait()
                    self._drop_stopped()
                    starting = self._next_sentence()
                if self.closing:
                    return
                if starting is not None:
                    starting.seq = _PREFILLING
            if starting is not None:
                try:
                    self._begin_sentence(starting)
                except Exception as e:  # this job's text or prefill failed, not the others'
                    log.exception("starting a sentence failed")
                    self._fail([starting], e)
            try:
                emitted = self.batch.step()
            except Exception as e:  # a model failure ends the jobs running, not the server
                log.exception("synthesis step failed")
                self._fail(None, e)
                continue
            with self.cv:
                for e in emitted:
                    run = self.runs.get(e.seq.owner)
                    if run is not None and run.seq is e.seq:
                        self._route(run, e)
                first = self._take_first_windows()
            if first:
                self._decode_and_deliver(first)

    def _fail(self, runs: list[_Run] | None, error: Exception) -> None:
        """Model thread: ``runs`` (None: every run with a sentence in the batch) end in error."""
        with self.cv:
            if runs is None:
                runs = [run for run in self.runs.values() if self._live(run.seq)]
            for run in runs:
                run.error = f"synthesis failed: {error}"
                if self._live(run.seq):
                    self.batch.leave(run.seq)
                run.seq = None
                self._settle(run)

    def _begin_sentence(self, run: _Run) -> None:
        """Prefill ``run``'s next sentence into the batch (or mark the run generated)."""
        if run.sentences is None:
            run.sentences = collections.deque(textproc.prepare_sentences(run.job.text))
        if not run.sentences:
            with self.cv:
                run.seq = None
                run.generated = True
                self._settle(run)
            return
        sentence = run.sentences.popleft()
        prompt = self.batch.engine.encode(textproc.format_prompt(sentence))
        seq = Sequence(prompt, self.max_new_tokens)
        seq.owner = run.job
        with self.cv:
            if run.job.cancelled:
                run.seq = None
                self._settle(run)
                return
        self.batch.join(seq)
        with self.cv:
            if run.job.cancelled or run.error is not None:  # stopped while it prefilled
                self.batch.leave(seq)
                run.seq = None
                self._settle(run)
                return
            run.seq = seq
            run.hidden = []
            run.stream = (StreamingDecoder(self.tts.decoder, self.chunk_tokens,
                                           self.first_chunk_tokens)
                          if run.job.speed == 1.0 else None)
            seq.active = run.job.unacked < self.max_unacked

    def _take_first_windows(self) -> list[tuple[_Run, list]]:
        """With self.cv held: the pending first windows of jobs with no audio out yet. The model
        thread decodes them itself before the next step: a listener waits for exactly that
        chunk, and on a small CPU a decoder thread would share the cores with the next step."""
        taken = []
        for run in self.to_decode:
            if len(taken) == self.decoder_batch_size:
                break
            if run.job.samples == 0 and run.work and isinstance(run.work[0], Window):
                run.decoding = True
                taken.append((run, [run.work.popleft()]))
        for run, _ in taken:
            self.to_decode.remove(run)
        return taken

    def _route(self, run: _Run, e) -> None:
        """With self.cv held: one emitted token of ``run``'s sentence."""
        if e.token != self.batch.engine.eos:
            if run.stream is not None:
                window = run.stream.push_window(e.hidden)
                if window is not None:
                    self._queue_work(run, window)
            else:
                run.hidden.append(e.hidden.float().cpu().numpy())
        if not e.finished:
            return
        if run.stream is not None:
            window = run.stream.finish_window()
            if window is not None:
                self._queue_work(run, window)
        elif run.hidden:
            self._queue_work(run, (np.array(run.hidden, np.float32), run.job.speed))
        run.seq = None
        run.generated = not run.sentences
        self._settle(run)
        self.cv.notify_all()

    # --- decoder threads -----------------------------------------------------------------------
    def _decoder_loop(self) -> None:
        while True:
            with self.cv:
                while not self.closing and not self.to_decode:
                    self.cv.wait()
                if self.closing:
                    return
                taken, budget = [], self.decoder_batch_size
                while self.to_decode and budget > 0:
                    run = self.to_decode.popleft()
                    run.decoding = True
                    items = [run.work.popleft() for _ in range(min(budget, len(run.work)))]
                    budget -= len(items)
                    taken.append((run, items))
            self._decode_and_deliver(taken)

    def _decode_and_deliver(self, taken: list[tuple[_Run, list]]) -> None:
        """Decode runs' work items (the runs are marked ``decoding``) and hand out the chunks."""
        error = None
        try:
            chunks = self._decode([items for _, items in taken])
        except Exception as e:
            log.exception("audio decoding failed")
            error = f"synthesis failed: {e}"
        with self.cv:
            for i, (run, _) in enumerate(taken):
                run.decoding = False
                if error is not None:
                    run.error = error
                elif not run.job.cancelled:
                    for chunk in chunks[i]:
                        if chunk.size:
                            run.job.unacked += 1
                            run.job.samples += chunk.size
                            self.loop.call_soon_threadsafe(run.job.on_chunk, run.job, chunk)
                    if self._live(run.seq) and run.job.unacked >= self.max_unacked:
                        run.seq.active = False
                if run.work and not run.job.cancelled and run.error is None:
                    if run not in self.to_decode:
                        self.to_decode.append(run)
                else:
                    self._settle(run)
            self.cv.notify_all()

    def _decode(self, per_run: list[list]) -> list[list[np.ndarray]]:
        """Chunks of every run's work items, in order; all windows in one batched call."""
        windows = [item for items in per_run for item in items if isinstance(item, Window)]
        decoded = iter(decode_windows(self.tts.decoder, windows) if windows else [])
        out = []
        for items in per_run:
            chunks = []
            for item in items:
                if isinstance(item, Window):
                    chunks.append(next(decoded))
                else:
                    audio = self.tts.decode_hidden(*item)
                    piece = self.chunk_tokens * SAMPLES_PER_TOKEN
                    chunks += [audio[i:i + piece] for i in range(0, len(audio), piece)]
            out.append(chunks)
        return out
