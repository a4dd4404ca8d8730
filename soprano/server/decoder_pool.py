"""The server's audio decoding: work items of any jobs, decoded in batched Vocos calls.

A work item is a streaming ``Piece`` (the states a chunk's samples complete, pushed through its
stream's decoder state; a stream's pieces are decoded in order, one worker at a time) or, for
a sentence at another speed, the whole sentence's states and its speed. ``decode_work`` turns
each job's items into chunks, the pieces of one call in one batched decoder pass.
``DecoderPool`` runs ``workers`` threads that take up to ``batch_size`` items (of any jobs) from
the scheduler, decode them and hand the chunks back; the scheduler owns the queue and the lock,
so the pool knows nothing of jobs or sessions. The workers share the process's CPU threads
(each runs its kernels on count / workers of them): a full team each, beside the step's, only
made the threads take turns on the same cores (Q8_0 server on 2 cores, 32 sessions: +6%).
"""
import logging
import threading
from typing import Callable

import numpy as np

from ..model.vocos import SAMPLES_PER_TOKEN
from ..ops import native
from ..runtime.streaming import Piece, decode_pieces
from . import faults

log = logging.getLogger("soprano.server")


def decode_work(tts, chunk_size: int, per_job: list[list]) -> list[list[np.ndarray]]:
    """Chunks of every job's work items, in order; all pieces in one batched pass. A whole
    sentence (another speed) is cut into chunks of ``chunk_size`` tokens' worth of samples."""
    pieces = [item for items in per_job for item in items if isinstance(item, Piece)]
    decoded = iter(decode_pieces(tts.decoder, pieces) if pieces else [])
    out = []
    for items in per_job:
        chunks = []
        for item in items:
            if isinstance(item, Piece):
                chunks.append(next(decoded))
            else:
                audio = tts.decode_hidden(*item)
                piece = chunk_size * SAMPLES_PER_TOKEN
                chunks += [audio[i:i + piece] for i in range(0, len(audio), piece)]
        out.append(chunks)
    return out


class DecoderPool:
    """``take(budget)`` (blocks; None when closing) -> [(job's run, items)];
    ``deliver(taken, chunks or None, error or None)`` hands the result back."""

    def __init__(self, tts, chunk_size: int, batch_size: int, workers: int,
                 take: Callable[[int], list | None], deliver: Callable):
        self.tts, self.chunk_size, self.batch_size = tts, chunk_size, max(1, batch_size)
        self.take, self.deliver = take, deliver
        self.threads_per_worker = max(1, native.num_threads() // max(1, workers))
        self.threads = [threading.Thread(target=self._loop, name=f"synth-decoder-{i}",
                                         daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        native.set_thread_threads(self.threads_per_worker)
        while True:
            taken = self.take(self.batch_size)
            if taken is None:
                return
            self.decode_and_deliver(taken)

    def decode_and_deliver(self, taken: list) -> None:
        """Decode ``taken`` (also called by the model thread for first chunks) and deliver."""
        try:
            if faults.MARKERS:  # tests only (faults.py)
                faults.check("decode", [run.job.text for run, _ in taken])
            chunks = decode_work(self.tts, self.chunk_size, [items for _, items in taken])
        except Exception as e:
            log.exception("audio decoding failed")
            self.deliver(taken, None, f"synthesis failed: {e}")
            return
        self.deliver(taken, chunks, None)
