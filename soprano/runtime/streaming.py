"""Audio for a growing sequence of hidden states, equal to decoding the whole sequence at once.

The decoder is local. Output sample s depends only on the ISTFT frames within half a window
(1024 samples) of it, and each frame only on the frames within the decoder's receptive field
(``VocosDecoder.receptive_frames``: 8 ConvNeXt blocks with k=3 reach 8 frames, a k=3 embed one
more), which come from the hidden states around s / 2048. So once T states have arrived, every
sample below ``2048 (T - 1) - margin`` (margin = 512 (receptive_frames - 1) + 1024 = 4608 for
Soprano-1.1) is final: decoding a window of states that reaches ``margin`` samples to the left
of the first unsent sample reproduces the full decode to float rounding; at the true start and
end the window's edges are the sequence's edges, as in the full decode. The concatenated chunks
are exactly ``2048 (T - 1)`` samples, like ``VocosDecoder(all states)``.

When chunks go out: the first once ``first_chunk_size`` tokens' worth of states beyond the
context has arrived (for 1 token that is the 4th state, and the chunk holds the 1536 samples
already final: one decode step sooner than waiting for a whole token), then every ``size``
states, ``size`` doubling from the first chunk's up to ``chunk_size``, so a listener's buffer
grows faster than it drains while the re-decoded context (about ``2 margin`` samples per window)
is amortized over ever larger chunks. Each chunk carries every sample final at that moment.
Chunk sizes do not change the samples, only where they are cut.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..model.vocos import HOP, N_FFT, SAMPLES_PER_TOKEN, VocosDecoder


class StreamingDecoder:
    def __init__(self, decoder: VocosDecoder, chunk_size: int = 1,
                 first_chunk_size: int | None = None):
        if first_chunk_size is None:
            first_chunk_size = chunk_size
        if min(chunk_size, first_chunk_size) < 1:
            raise ValueError(f"chunk sizes must be >= 1, got {first_chunk_size} first, "
                             f"then {chunk_size}")
        self.decoder = decoder
        self.chunk_size, self.first_chunk_size = chunk_size, first_chunk_size
        self.margin = HOP * (decoder.receptive_frames - 1) + N_FFT // 2
        self.reset()

    def reset(self) -> None:
        """Start over, as for a new sequence of states (nothing sent yet)."""
        context = math.ceil(self.margin / SAMPLES_PER_TOKEN)
        self.size = self.first_chunk_size          # tokens in the next chunk
        self.due = self.first_chunk_size + context  # states needed for the next chunk
        self.states: list[torch.Tensor] = []    # [C] each; only the tail still needed is kept
        self.first_index = 0                    # global index of self.states[0]
        self.emitted = 0                        # samples sent

    def push(self, hidden: torch.Tensor) -> np.ndarray | None:
        """Add one hidden state [C]; returns the next chunk of audio when one is due."""
        window = self.push_window(hidden)
        return None if window is None else decode_windows(self.decoder, [window])[0]

    def finish(self) -> np.ndarray:
        """The remaining audio up to the last state (empty if nothing is left)."""
        window = self.finish_window()
        if window is None:
            return np.zeros(0, np.float32)
        return decode_windows(self.decoder, [window])[0]

    def push_window(self, hidden: torch.Tensor) -> "Window | None":
        """``push`` without decoding: the window to decode when a chunk is due (the stream's
        bookkeeping already moved on, so windows of many streams can be decoded together)."""
        self.states.append(hidden)
        total = self.first_index + len(self.states)
        if total < self.due:
            return None
        self.size = min(self.chunk_size, 2 * self.size)
        self.due = total + self.size
        return self._window(SAMPLES_PER_TOKEN * (total - 1) - self.margin, window_end=total)

    def finish_window(self) -> "Window | None":
        total = self.first_index + len(self.states)
        return self._window(SAMPLES_PER_TOKEN * max(0, total - 1), window_end=total)

    def _window(self, upto: int, window_end: int) -> "Window | None":
        """Samples [emitted, upto) from a window of states ending at ``window_end``."""
        if upto <= self.emitted:
            return None
        start = max(0, (self.emitted - self.margin) // SAMPLES_PER_TOKEN)
        states = torch.stack(self.states[start - self.first_index:window_end - self.first_index])
        offset = start * SAMPLES_PER_TOKEN
        window = Window(states, self.emitted - offset, upto - offset)
        self.emitted = upto
        keep_from = max(0, (self.emitted - self.margin) // SAMPLES_PER_TOKEN)
        del self.states[:keep_from - self.first_index]
        self.first_index = keep_from
        return window


@dataclass
class Window:
    """Hidden states [T, C] to decode, and the slice [lo, hi) of the decoded samples to send."""
    states: torch.Tensor
    lo: int
    hi: int


def decode_windows(decoder: VocosDecoder, windows: list[Window]) -> list[np.ndarray]:
    """Each window's chunk, in order. Windows with the same number of states are decoded as one
    batch; each row is computed on its own, equal to decoding it alone up to float rounding."""
    chunks: list[np.ndarray | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_length.setdefault(w.states.shape[0], []).append(i)
    for indices in by_length.values():
        states = torch.stack([windows[i].states for i in indices]).float().transpose(1, 2)
        audio = decoder(states).cpu().numpy()
        for row, i in enumerate(indices):
            chunks[i] = audio[row, windows[i].lo:windows[i].hi]
    return chunks
