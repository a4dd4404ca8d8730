"""The Vocos decoder without torch: hidden states -> audio, streamed a piece at a time.

The torch engine's streamed decode (``runtime.streaming``) with numpy arrays around the same
native calls: the x4 interpolation here (``model.vocos.frames_between``'s arithmetic, so the
same bits), the whole layer pass in ``_C.VocosLayersCpu``, the windowed frames (spectrum,
inverse DFT, window) in ``_C.istft_frames_cpu``, the overlap-add in
``_C.istft_overlap_add_stream_cpu``. A whole sentence is a stream whose pieces are
``DECODE_PIECE_TOKENS`` long, as the torch engine decodes a long one: its audio equals the
one-pass decode within 1e-4 (fp32) and its buffers stay the size of a piece. Pieces of 64
tokens: a Q8_0 model's decode of 128 tokens peaked 15 MB lower than in one piece (250 MB
against 263, Intel Xeon, 2026-12-02) at the same ms a token (0.48-0.50); pieces of 32 were 6%
slower.
"""
import numpy as np

from .. import _C
from ..model.vocos_shape import HOP, MAX_MAGNITUDE, UPSCALE
from ..runtime.chunks import ChunkSchedule
from .weights import LeanDecoderWeights, aligned, aligned_concat

DECODE_PIECE_TOKENS = 64
_LERP = (np.arange(1, UPSCALE + 1, dtype=np.float32) / np.float32(UPSCALE))[:, None]


def frames_between(seq: np.ndarray) -> np.ndarray:
    """States [T, C] fp32 -> the x4 frames after the first one [4 (T-1), C]: frame 4t + j is
    (1 - j/4) s_t + j/4 s_t+1, computed as the torch decoder computes it."""
    out = (1 - _LERP) * seq[:-1, None, :] + _LERP * seq[1:, None, :]
    return out.reshape(-1, seq.shape[1])


class LeanDecoder:
    def __init__(self, weights: LeanDecoderWeights):
        self.w = weights
        self.n_fft = weights.n_fft
        self.receptive_frames = sum(weights.radii)

    def decode(self, hidden: np.ndarray) -> np.ndarray:
        """One sentence's states [N, C] -> float32 audio, 2048 (N - 1) samples."""
        stream = LeanStream(self, DECODE_PIECE_TOKENS, DECODE_PIECE_TOKENS)
        chunks = [c for c in map(stream.push, hidden) if c is not None]
        return np.concatenate(chunks + [stream.finish()])


class LeanStream:
    """One stream's states in, chunks of audio out on ``ChunkSchedule``'s schedule; each frame
    computed once."""

    def __init__(self, decoder: LeanDecoder, chunk_size: int = 1,
                 first_chunk_size: int | None = None):
        self.decoder = decoder
        self.schedule = ChunkSchedule(decoder.receptive_frames, chunk_size, first_chunk_size)
        self.reset()

    def reset(self) -> None:
        """Start over, as for a new sequence of states (nothing sent yet)."""
        w = self.decoder.w
        self.schedule.reset()
        self.pending = aligned(w.native.pending_floats, np.float32, zeros=True)
        self.counts = np.array(w.radii, np.int64)
        self.last: np.ndarray | None = None
        self.frames = 0
        self.tail = np.zeros(self.decoder.n_fft - HOP, np.float32)
        self.states: list[np.ndarray] = []

    @property
    def emitted(self) -> int:
        return self.schedule.emitted

    def push(self, hidden: np.ndarray) -> np.ndarray | None:
        """Add one state [C]; the next chunk of audio when one is due."""
        self.states.append(hidden)
        samples = self.schedule.push()
        return None if samples is None else self._decode(samples, final=False)

    def finish(self) -> np.ndarray:
        """The rest of the audio up to the last state (empty when nothing is left)."""
        samples = self.schedule.finish()
        return np.zeros(0, np.float32) if samples is None else self._decode(samples, final=True)

    def _decode(self, samples: int, final: bool) -> np.ndarray:
        w, n_fft = self.decoder.w, self.decoder.n_fft
        states = (np.stack(self.states).astype(np.float32, copy=False) if self.states
                  else np.zeros((0, w.input_channels), np.float32))
        self.states = []
        seq = states if self.last is None else np.concatenate([self.last[None], states])
        first = seq[:1] if self.last is None else seq[:0]
        if len(states):
            self.last = states[-1]
        frames = aligned_concat([first, frames_between(seq)])
        bound = len(frames) + (self.decoder.receptive_frames if final else 0)
        spec = aligned((bound, w.head_rows), np.float32)
        pending = aligned(self.pending.shape, np.float32)
        counts = np.empty_like(self.counts)
        rows = w.native.run([self.pending.ctypes.data], [self.counts.ctypes.data],
                            [pending.ctypes.data], [counts.ctypes.data], [frames.ctypes.data],
                            [len(frames)], [final], spec.ctypes.data, bound)[0]
        self.pending, self.counts = pending, counts
        windowed = aligned((rows, n_fft), np.float32)
        _C.istft_frames_cpu(spec.ctypes.data, w.window.ctypes.data, rows, n_fft, w.head_rows,
                            MAX_MAGNITUDE, windowed.ctypes.data)
        out = np.empty(HOP * (rows + 1), np.float32)
        tail = np.empty_like(self.tail)
        count = _C.istft_overlap_add_stream_cpu(windowed.ctypes.data, w.window.ctypes.data,
                                                self.tail.ctypes.data, rows, self.frames, n_fft,
                                                HOP, final, tail.ctypes.data, out.ctypes.data)
        self.tail, self.frames = tail, self.frames + rows
        if count != samples:
            raise RuntimeError(f"lean decoder: a piece gave {count} samples, its schedule "
                               f"{samples}")
        return out[:count]
