"""Audio for a growing sequence of hidden states, each frame computed once, equal to decoding
the whole sequence at once.

The decoder is local. Its x4 interpolation makes frames 4t-3..4t from states t-1 and t; each
convolution needs ``radius`` input frames on either side of an output frame; the ISTFT adds a
frame into the 2048 samples around its centre. So a stream keeps, between pieces, only: the
last state, each convolution's pending input rows (``VocosDecoder.run_layers``), and the
overlap-add tail of the frames already synthesized. Once T states have arrived, every sample
below ``2048 (T - 1) - margin`` is final (margin = 512 (receptive_frames - 1) + 1024 = 4608 for
Soprano-1.1, 5120 for Soprano-80M's k=3 embed); at the end the right edge is zero-padded as in
the whole decode. The concatenated chunks are exactly ``2048 (T - 1)`` samples.

When chunks go out: ``runtime.chunks``. A chunk is a ``Piece``: the states since the last one,
decoded later (by ``decode_pieces``, which batches the pieces of many streams into one pass), so
bookkeeping and decoding can run on different threads. Pieces of one stream must be decoded in
order.
"""
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..model.vocos import HOP, N_FFT, VocosDecoder, frames_between
from ..ops import native, native_vocos
from .chunks import ChunkSchedule


@dataclass(eq=False)
class DecoderState:
    """What a stream's next piece needs of the earlier ones."""
    pending: object                           # VocosDecoder.fresh_pending / run_layers
    last: torch.Tensor | None = None          # the last state seen [C]
    frames: int = 0                           # ISTFT frames overlap-added so far
    tail: torch.Tensor = field(default_factory=lambda: torch.zeros(N_FFT - HOP))


@dataclass(eq=False)
class Piece:
    """States [n, C] to push through a stream's decoder state; ``final``: the stream ends."""
    state: DecoderState
    states: torch.Tensor
    final: bool
    samples: int  # what its chunk will hold (the bookkeeping's count, checked on decode)


class StreamingDecoder:
    """One stream's states in, its pieces (then chunks) out, on ``ChunkSchedule``'s schedule."""

    def __init__(self, decoder: VocosDecoder, chunk_size: int = 1,
                 first_chunk_size: int | None = None):
        self.decoder = decoder
        self.schedule = ChunkSchedule(decoder.receptive_frames, chunk_size, first_chunk_size)
        self.reset()

    @property
    def margin(self) -> int:
        """Samples short of the last state's that are not final yet (``ChunkSchedule``)."""
        return self.schedule.margin

    def reset(self) -> None:
        """Start over, as for a new sequence of states (nothing sent yet)."""
        self.schedule.reset()
        self.state = DecoderState(self.decoder.fresh_pending())
        self.states: list[torch.Tensor] = []    # [C] each, since the last piece

    @property
    def emitted(self) -> int:
        """Samples handed out in pieces."""
        return self.schedule.emitted

    def push(self, hidden: torch.Tensor) -> np.ndarray | None:
        """Add one hidden state [C]; returns the next chunk of audio when one is due."""
        piece = self.push_piece(hidden)
        return None if piece is None else decode_pieces(self.decoder, [piece])[0]

    def finish(self) -> np.ndarray:
        """The remaining audio up to the last state (empty if nothing is left)."""
        piece = self.finish_piece()
        if piece is None:
            return np.zeros(0, np.float32)
        return decode_pieces(self.decoder, [piece])[0]

    def push_piece(self, hidden: torch.Tensor) -> Piece | None:
        """``push`` without decoding: the piece to decode when a chunk is due."""
        self.states.append(hidden)
        return self._piece(self.schedule.push(), final=False)

    def finish_piece(self) -> Piece | None:
        """The piece that ends the stream, or None when no audio is left to send."""
        return self._piece(self.schedule.finish(), final=True)

    def _piece(self, samples: int | None, final: bool) -> Piece | None:
        if samples is None:
            return None
        states = (torch.stack(self.states) if self.states
                  else torch.zeros(0, self.decoder.input_channels))
        self.states = []
        return Piece(self.state, states, final, samples)


def decode_pieces(decoder: VocosDecoder, pieces: list[Piece]) -> list[np.ndarray]:
    """Each piece's chunk, in order. The pieces of different streams go through the decoder
    in one packed pass; a stream's later pieces wait for a later pass."""
    chunks: list[np.ndarray | None] = [None] * len(pieces)
    todo = list(range(len(pieces)))
    while todo:
        batch, seen, later = [], set(), []
        for i in todo:
            (later if pieces[i].state in seen else batch).append(i)
            seen.add(pieces[i].state)
        for i, chunk in zip(batch, _decode_pass(decoder, [pieces[i] for i in batch])):
            chunks[i] = chunk
        todo = later
    return chunks


def _decode_pass(decoder: VocosDecoder, pieces: list[Piece]) -> list[np.ndarray]:
    """Pieces of distinct streams, decoded together; each stream's state moves on."""
    frames = [_interpolate(p.state, p.states.to(decoder.device).float()) for p in pieces]
    spec, pending = decoder.run_layers([p.state.pending for p in pieces], frames,
                                       [p.final for p in pieces])
    counts = [s.shape[0] for s in spec]
    windowed = decoder.ops.istft_frames(torch.cat(spec), decoder.w.window).cpu()
    window, running = _window_tables(decoder)
    chunks = []
    add = _overlap_add_native if native.has_cpu() else _overlap_add
    for p, rows, new_pending in zip(pieces, windowed.split(counts), pending):
        p.state.pending = new_pending
        chunk = add(p.state, rows, window, running, p.final)
        if chunk.shape[0] != p.samples:
            raise RuntimeError(f"streaming decoder: a piece gave {chunk.shape[0]} samples, "
                               f"its bookkeeping {p.samples}")
        chunks.append(chunk.numpy())
    return chunks


# Per decoder, its window on the CPU and the running envelope: fixed for the decoder's life, so
# built at its first pass, not at every one (weakly keyed: a dropped decoder takes them along).
_WINDOW_TABLES: "weakref.WeakKeyDictionary[VocosDecoder, tuple]" = weakref.WeakKeyDictionary()


def _window_tables(decoder: VocosDecoder) -> tuple[torch.Tensor, torch.Tensor]:
    tables = _WINDOW_TABLES.get(decoder)
    if tables is None:
        window = decoder.w.window.cpu()
        tables = _WINDOW_TABLES[decoder] = (window,
                                            _envelope(window, torch.arange(N_FFT), N_FFT))
    return tables


def _interpolate(state: DecoderState, states: torch.Tensor) -> torch.Tensor:
    """The x4 frames the new states complete, as F.interpolate with align_corners computes
    them: the first state is frame 0, and each later one brings the 3 frames between it and
    the state before, and itself."""
    seq = states if state.last is None else torch.cat([state.last[None], states])
    first = seq[:1] if state.last is None else seq[:0]
    if states.shape[0]:
        state.last = states[-1]
    return torch.cat([first, frames_between(seq)])


def _overlap_add(state: DecoderState, frames: torch.Tensor, window: torch.Tensor,
                 running: torch.Tensor, final: bool) -> torch.Tensor:
    """Add windowed frames [n, N_FFT] at HOP apart after the ones before; return the samples no
    later frame can touch (all of them at the end), divided by the summed squared window and
    without the first N_FFT // 2 (torch.istft's center trim). ``running``: the envelope of
    positions 0..N_FFT-1 with every later frame present; from N_FFT - HOP on it repeats every
    HOP."""
    n = frames.shape[0]
    length = HOP * (n - 1) + N_FFT if n else N_FFT - HOP
    summed = (F.fold(frames.T[None], (1, length), (1, N_FFT), stride=(1, HOP))[0, 0, 0]
              if n else torch.zeros(length))
    summed[:N_FFT - HOP] += state.tail
    first = state.frames * HOP  # padded position of summed[0]
    state.frames += n
    done = HOP * n + (HOP if final else 0)
    state.tail = summed[HOP * n:]
    positions = torch.arange(max(first, N_FFT // 2), first + done)
    if final:  # the last frames have no right neighbours: the envelope falls off
        envelope = _envelope(window, positions, state.frames - 1)
    else:  # every frame covering these positions exists
        envelope = running[torch.where(positions < N_FFT, positions,
                                       N_FFT - HOP + positions % HOP)]
    return summed[positions - first] / envelope


def _overlap_add_native(state: DecoderState, frames: torch.Tensor, window: torch.Tensor,
                        running: torch.Tensor, final: bool) -> torch.Tensor:
    """``_overlap_add`` in one C++ pass (its ~10 torch ops were ~0.15 ms of a chunk-per-token
    stream's 2 ms a token); ``running`` is recomputed there."""
    chunk, state.tail = native_vocos.overlap_add_stream_cpu(frames, window, state.tail,
                                                            state.frames, HOP, final)
    state.frames += frames.shape[0]
    return chunk


def _envelope(window: torch.Tensor, positions: torch.Tensor, last_frame: int) -> torch.Tensor:
    """The summed squared window at padded positions, over frames 0..last_frame."""
    total = torch.zeros(positions.shape[0])
    squared = window.float() ** 2
    for back in range(N_FFT // HOP):
        frame = positions // HOP - back
        offset = positions - frame * HOP
        ok = (frame >= 0) & (frame <= last_frame)
        total += torch.where(ok, squared[offset.clamp(0, N_FFT - 1)], 0.0)
    return total
