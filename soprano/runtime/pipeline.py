"""The one sentence pipeline: sentence -> prompt -> ids -> hidden states -> audio pieces.

``SentenceRun`` carries one sentence through the engine for every caller (``SopranoTTS.infer``,
``infer_batch``, ``infer_stream``, the CLI and the server): its prompt ids, its sampling
parameters and generator, the states it produced, its hallucination retries and, when
streaming, the pieces of audio ready to decode. ``drive`` runs sentences to completion as a
loop over ``Engine.step``; the server runs its own loop (admission, pauses, cancellation) over
the same ``SentenceRun.take``.

Retries and the hallucination check: ``runtime.sentences``.
"""
import enum
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .engine import Emitted, Engine, Generated, Sequence, stack_hidden
from .sampling import SamplingParams
from .sentences import HallucinationDetector
from .streaming import Piece, StreamingDecoder


def is_hallucination(hidden: np.ndarray) -> bool:
    """Whether upstream's detector flags a whole sentence's states [N, H]."""
    detector = HallucinationDetector()
    return any(detector.push(h) for h in torch.from_numpy(np.asarray(hidden, np.float32)))


class Take(enum.Enum):
    CONTINUE = "continue"
    RESTART = "restart"  # flagged: the caller removes the sequence and starts the run again
    CUT = "cut"          # flagged after audio went out: the caller removes the sequence


@dataclass(eq=False)
class SentenceRun:
    text: str
    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 512
    generator: torch.Generator | None = None
    retries: int = 0
    stream: StreamingDecoder | None = None
    owner: object = None
    tokens: list[int] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS), "length", or "cut" (see the module doc)
    detector: HallucinationDetector | None = None
    seq: Sequence | None = None

    def start(self) -> Sequence:
        """A fresh sequence for the next attempt (its states so far are dropped)."""
        self.tokens, self.states = [], []
        self.detector = HallucinationDetector() if self.retries > 0 else None
        if self.stream is not None:
            self.stream.reset()
        self.seq = Sequence(self.prompt, self.max_new_tokens, self.params, self.generator,
                            owner=self)
        return self.seq

    def take(self, e: Emitted, eos: int) -> tuple[Take, list[Piece]]:
        """One emitted token of this run's sequence -> what the caller does next, and the
        audio pieces now due (streaming runs)."""
        pieces: list[Piece] = []
        if e.token != eos:
            self.tokens.append(e.token)
            self.states.append(e.hidden)
            if self.stream is not None:
                piece = self.stream.push_piece(e.hidden)
                if piece is not None:
                    pieces.append(piece)
            if self.detector is not None and self.detector.push(e.hidden.float()):
                if self.stream is None or not self.stream.emitted:
                    self.retries -= 1
                    return Take.RESTART, []
                self.finish_reason = "cut"
                self.retries = 0
                return Take.CUT, pieces + self._finish_pieces()
        if e.finished:
            self.finish_reason = "stop" if e.token == eos else "length"
            pieces += self._finish_pieces()
        return Take.CONTINUE, pieces

    def _finish_pieces(self) -> list[Piece]:
        piece = self.stream.finish_piece() if self.stream is not None else None
        return [piece] if piece is not None else []

    def generated(self, hidden_size: int) -> Generated:
        return Generated(list(self.tokens), stack_hidden(self.states, hidden_size),
                         self.finish_reason)


def drive(engine: Engine, runs: list[SentenceRun]) -> Iterator[tuple[SentenceRun, list[Piece]]]:
    """Run every sentence to completion, ``engine.max_batch`` at a time, newcomers joining as
    others finish: a loop over ``engine.step``. Yields (run, pieces) when a run has audio
    pieces due (streaming runs) or has just finished (its ``finish_reason`` set); the caller
    owns the engine meanwhile. Closing it early frees its runs' cache slots."""
    waiting = list(reversed(runs))
    live = 0
    try:
        while waiting or live:
            while waiting and engine.free_slots:
                engine.add(waiting.pop().start())
                live += 1
            for e in engine.step():
                run: SentenceRun = e.seq.owner
                action, pieces = run.take(e, engine.eos)
                if action is not Take.CONTINUE:
                    engine.remove(e.seq)
                if action is Take.RESTART:
                    waiting.append(run)
                if action is not Take.CONTINUE or e.finished:
                    live -= 1
                if pieces or run.finish_reason is not None:
                    yield run, pieces
    finally:
        # Closed early (a stream abandoned) or failed: its sentences must not keep their slots,
        # or the engine's next caller would step them along with its own.
        mine = {id(run) for run in runs}
        for seq in engine.members():
            if id(seq.owner) in mine:
                engine.remove(seq)
