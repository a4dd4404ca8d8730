"""The server's synthesis scheduler: text jobs in, audio chunks out, cancellable per step.

The boundary to the rest of the server is small on purpose (``submit``, chunk/finish callbacks,
``cancel``, ``ack``), so the scheduler can change without touching sessions or handlers.

Inside, continuous batching on the one engine of the ``SopranoTTS`` it serves (no second
engine or cache). Up to ``max_batch`` jobs (the engine's slots, ``--tts-inflight``) hold a
place; each job's current sentence is a ``SentenceRun`` in the engine. One model thread loops:
start at most one sentence (its prefill), then one ``Engine.step`` for every running sentence at
once, which on a CPU costs about what a step for one sentence does (the step streams the weights
once). Each emitted state goes through ``SentenceRun.take`` (retries, streaming pieces), as in
``SopranoTTS.infer``. A job's first chunk is decoded by the model thread as soon as it is due (a
listener waits for exactly that one); later chunks by the ``DecoderPool`` while the model
thread steps on. A cancel takes effect before the next step. A job whose session has
``max_unacked`` frames not yet written (a slow reader) has its sentence paused: it keeps its
slot and skips steps. Jobs beyond ``max_batch`` wait in a bounded queue; beyond that ``submit``
raises ``Busy``. Only the model thread touches the engine. The event loop never runs model code:
callbacks reach it through ``call_soon_threadsafe``.
"""
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from ..runtime.engine import stack_hidden
from ..runtime.pipeline import SentenceRun, Take
from ..runtime.sampling import SamplingParams
from ..runtime.streaming import Piece, StreamingDecoder
from . import faults
from .decoder_pool import DecoderPool
from .jobs import Busy, Job

log = logging.getLogger("soprano.server")


# Stands in a run's ``sentence`` while its next sentence prefills, so it is not started twice.
_PREFILLING = SentenceRun("", [])


@dataclass(eq=False)
class _Run:
    """A job's progress: sentences left, the one in the engine, audio work not yet decoded."""
    job: Job
    sentences: collections.deque = None
    sentence: SentenceRun | None = None
    work: collections.deque = field(default_factory=collections.deque)  # Piece | (states, speed)
    decoding: bool = False   # a decoder worker holds this run's work
    generated: bool = False  # every sentence has left the engine
    error: str | None = None


def _live(sentence) -> bool:
    return sentence is not None and sentence is not _PREFILLING


class Synthesizer:
    def __init__(self, tts, loop, workers: int = 2, max_batch: int | None = None,
                 queue_limit: int = 64, chunk_size: int = 4, first_chunk_size: int = 1,
                 max_unacked: int = 16, params: SamplingParams = None,
                 max_new_tokens: int = 512, decoder_batch_size: int = 1, retries: int = 0):
        self.tts, self.loop, self.engine = tts, loop, tts.engine
        self.max_batch = max_batch or self.engine.max_batch
        if not 0 < self.max_batch <= self.engine.max_batch:
            raise ValueError(f"max_batch must be 1..{self.engine.max_batch} (the engine's "
                             f"slots), got {self.max_batch}")
        if self.engine.members():
            raise ValueError("the engine is in use: one scheduler drives it at a time")
        self.chunk_size, self.first_chunk_size = chunk_size, first_chunk_size
        self.max_unacked, self.max_new_tokens = max_unacked, max_new_tokens
        self.queue_limit, self.retries = queue_limit, retries
        self.params = params or SamplingParams()
        self.runs: dict[Job, _Run] = {}
        self.waiting: collections.deque[Job] = collections.deque()
        self.to_decode: collections.deque[_Run] = collections.deque()
        self.cv = threading.Condition()
        self.closing = False
        self.decoders = DecoderPool(tts, chunk_size, decoder_batch_size, workers,
                                    self._take_work, self._deliver)
        self.model_thread = threading.Thread(target=self._model_loop, name="synth-model",
                                             daemon=True)
        self.model_thread.start()

    # --- called from the event loop -------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.runs) < self.max_batch:
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
            if run is not None and _live(run.sentence) and job.unacked < self.max_unacked:
                run.sentence.seq.active = True
                self.cv.notify_all()

    def stats(self) -> dict:
        with self.cv:
            return {"slots_free": self.max_batch - len(self.runs), "waiting": len(self.waiting),
                    "running": len(self.runs)}

    def close(self) -> None:
        """Stop the threads; the engine is left empty for its next user."""
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        if threading.current_thread() is not self.model_thread:
            self.model_thread.join()
        for seq in self.engine.members():
            self.engine.remove(seq)

    # --- bookkeeping, with self.cv held --------------------------------------------------------
    def _start(self, job: Job) -> None:
        job.started = time.perf_counter()
        self.runs[job] = _Run(job)

    def _report(self, job: Job, reason: str) -> None:
        self._call(job.on_finish, job, reason)

    def _call(self, callback, *args) -> None:
        """Run ``callback`` on the event loop; once that loop has closed (shutdown) nobody is
        listening, and the worker thread must not die of it."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            if not self.loop.is_closed():
                raise

    def _end(self, run: _Run, reason: str) -> None:
        """The run leaves (it has no sentence in the engine): its place goes to the next job."""
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
        model thread touches the engine, so a run whose sentence is in it (or prefilling) waits
        for the model thread to take it out; a run being decoded, for its decoder thread."""
        if run.decoding or run.sentence is not None or self.runs.get(run.job) is not run:
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
        if not self.engine.free_slots:
            return None
        for run in self.runs.values():
            if run.sentence is None and not run.generated and not run.job.cancelled \
                    and run.error is None:
                return run
        return None

    def _drop_stopped(self) -> None:
        """Model thread, self.cv held: take cancelled and failed runs' sentences out."""
        for run in list(self.runs.values()):
            if run.job.cancelled or run.error is not None:
                if _live(run.sentence):
                    self.engine.remove(run.sentence.seq)
                    run.sentence = None
                run.work.clear()
                self._settle(run)

    def _model_loop(self) -> None:
        while True:
            with self.cv:
                self._drop_stopped()
                starting = self._next_sentence()
                while not self.closing and starting is None and not any(
                        s.active for s in self.engine.members()):
                    self.cv.wait()
                    self._drop_stopped()
                    starting = self._next_sentence()
                if self.closing:
                    return
                if starting is not None:
                    starting.sentence = _PREFILLING
            if starting is not None:
                try:
                    self._begin_sentence(starting)
                except Exception as e:  # this job's text or prefill failed, not the others'
                    log.exception("starting a sentence failed")
                    self._fail([starting], e)
            try:
                if faults.MARKERS:  # tests only (faults.py)
                    faults.check("step", [s.owner.owner.text for s in self.engine.members()])
                emitted = self.engine.step()
            except Exception as e:  # a model failure ends the jobs running, not the server
                log.exception("synthesis step failed")
                self._fail(None, e)
                continue
            restarts = []
            with self.cv:
                for e in emitted:
                    run = self.runs.get(e.seq.owner.owner)
                    if run is not None and run.sentence is e.seq.owner:
                        if self._route(run, e):
                            restarts.append(run.sentence)
                first = self._take_first_pieces()
            for sentence in restarts:  # flagged by the hallucination detector: again
                self.engine.add(sentence.start())
            if first:
                self.decoders.decode_and_deliver(first)

    def _fail(self, runs: list[_Run] | None, error: Exception) -> None:
        """Model thread: ``runs`` (None: every run with a sentence in the engine) end in error."""
        with self.cv:
            if runs is None:
                runs = [run for run in self.runs.values() if _live(run.sentence)]
            for run in runs:
                run.error = f"synthesis failed: {error}"
                if _live(run.sentence):
                    self.engine.remove(run.sentence.seq)
                run.sentence = None
                self._settle(run)

    def _begin_sentence(self, run: _Run) -> None:
        """Prefill ``run``'s next sentence into the engine (or mark the run generated)."""
        job = run.job
        if run.sentences is None:
            run.sentences = collections.deque(self.tts.sentence_runs(
                job.text, self.params, self.max_new_tokens, retries=self.retries))
        if not run.sentences:
            with self.cv:
                run.sentence = None
                run.generated = True
                self._settle(run)
            return
        sentence = run.sentences.popleft()
        sentence.owner = job
        if job.speed == 1.0:
            sentence.stream = StreamingDecoder(self.tts.decoder, self.chunk_size,
                                               self.first_chunk_size)
        with self.cv:
            if job.cancelled:
                run.sentence = None
                self._settle(run)
                return
        seq = sentence.start()
        self.engine.add(seq)
        with self.cv:
            if job.cancelled or run.error is not None:  # stopped while it prefilled
                self.engine.remove(seq)
                run.sentence = None
                self._settle(run)
                return
            run.sentence = sentence
            seq.active = job.unacked < self.max_unacked

    def _take_first_pieces(self) -> list[tuple[_Run, list]]:
        """With self.cv held: the pending first pieces of jobs with no audio out yet. The model
        thread decodes them itself before the next step: a listener waits for exactly that
        chunk, and on a small CPU a decoder thread would share the cores with the next step."""
        taken = []
        for run in self.to_decode:
            if len(taken) == self.decoders.batch_size:
                break
            if run.job.samples == 0 and run.work and isinstance(run.work[0], Piece):
                run.decoding = True
                taken.append((run, [run.work.popleft()]))
        for run, _ in taken:
            self.to_decode.remove(run)
        return taken

    def _route(self, run: _Run, e) -> bool:
        """With self.cv held: one emitted token of ``run``'s sentence. True: the sentence was
        flagged and must start again (the model thread re-adds it)."""
        sentence = run.sentence
        action, pieces = sentence.take(e, self.engine.eos)
        for piece in pieces:
            self._queue_work(run, piece)
        if action is Take.RESTART:
            self.engine.remove(e.seq)
            return True
        if action is Take.CUT:
            self.engine.remove(e.seq)
        elif not e.finished:
            return False
        if sentence.stream is None and sentence.states:
            states = stack_hidden(sentence.states, self.engine.backbone.cfg.hidden_size)
            self._queue_work(run, (states, run.job.speed))
        run.sentence = None
        run.generated = not run.sentences
        self._settle(run)
        self.cv.notify_all()
        return False

    # --- the decoder pool's side ----------------------------------------------------------------
    def _take_work(self, budget: int) -> list | None:
        """Decoder thread: up to ``budget`` work items of any runs (blocks; None: closing)."""
        with self.cv:
            while not self.closing and not self.to_decode:
                self.cv.wait()
            if self.closing:
                return None
            taken = []
            while self.to_decode and budget > 0:
                run = self.to_decode.popleft()
                run.decoding = True
                items = [run.work.popleft() for _ in range(min(budget, len(run.work)))]
                budget -= len(items)
                taken.append((run, items))
            return taken

    def _deliver(self, taken: list, chunks: list | None, error: str | None) -> None:
        """Hand decoded chunks to their jobs (or mark the runs failed)."""
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
                            self._call(run.job.on_chunk, run.job, chunk)
                    if _live(run.sentence) and run.job.unacked >= self.max_unacked:
                        run.sentence.seq.active = False
                if run.work and not run.job.cancelled and run.error is None:
                    if run not in self.to_decode:
                        self.to_decode.append(run)
                else:
                    self._settle(run)
            self.cv.notify_all()
