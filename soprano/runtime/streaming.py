"""Audio for a growing sequence of hidden states, equal to decoding the whole sequence at once.

The decoder is local: the sample range of token i (``[2048 i, 2048 (i+1))``) depends only on a
few neighbouring hidden states (8 ConvNeXt blocks with k=3 on 4x-upsampled frames reach 2 tokens,
the ISTFT window half a token more). So a window that has ``CONTEXT`` = 3 real tokens on each side
of the samples it emits reproduces the full decode to float rounding; at the true start and end
the window's edges are the sequence's edges, as in the full decode. The concatenated chunks are
exactly ``2048 (T - 1)`` samples, like ``VocosDecoder(all states)``. This re-decodes
``2 * CONTEXT`` tokens of context per window: larger ``chunk_tokens`` amortize it. A smaller
``first_chunk_tokens`` gets the first audio out sooner (a listener waits for that one only);
chunk sizes do not change the samples, only where they are cut.
"""
import numpy as np
import torch

from ..model.vocos import SAMPLES_PER_TOKEN, VocosDecoder

CONTEXT = 3


class StreamingDecoder:
    def __init__(self, decoder: VocosDecoder, chunk_tokens: int = 1,
                 first_chunk_tokens: int | None = None):
        if first_chunk_tokens is None:
            first_chunk_tokens = chunk_tokens
        if min(chunk_tokens, first_chunk_tokens) < 1:
            raise ValueError(f"chunk sizes must be >= 1, got {first_chunk_tokens} first, "
                             f"then {chunk_tokens}")
        self.decoder = decoder
        self.chunk_tokens, self.first_chunk_tokens = chunk_tokens, first_chunk_tokens
        self.states: list[torch.Tensor] = []  # [C] each; only the tail still needed is kept
        self.first_index = 0                  # global index of self.states[0]
        self.emitted = 0                      # tokens whose samples were emitted

    def push(self, hidden: torch.Tensor) -> np.ndarray | None:
        """Add one hidden state [C]; returns the next chunk of audio when one is complete."""
        self.states.append(hidden)
        total = self.first_index + len(self.states)
        size = self.chunk_tokens if self.emitted else self.first_chunk_tokens
        if total - 1 - self.emitted < size + CONTEXT:
            return None
        return self._emit(self.emitted + size, window_end=total)

    def finish(self) -> np.ndarray:
        """The remaining audio up to the last state (empty if nothing is left)."""
        total = self.first_index + len(self.states)
        if total - 1 <= self.emitted:
            return np.zeros(0, np.float32)
        return self._emit(total - 1, window_end=total)

    def _emit(self, upto: int, window_end: int) -> np.ndarray:
        """Samples of tokens [emitted, upto) from a window of states ending at ``window_end``."""
        start = max(0, self.emitted - CONTEXT)
        window = torch.stack(self.states[start - self.first_index:window_end - self.first_index])
        audio = self.decoder(window.float().T[None])[0]
        lo = (self.emitted - start) * SAMPLES_PER_TOKEN
        hi = (upto - start) * SAMPLES_PER_TOKEN
        chunk = audio[lo:hi].cpu().numpy()
        self.emitted = upto
        keep_from = max(0, self.emitted - CONTEXT)
        del self.states[:keep_from - self.first_index]
        self.first_index = keep_from
        return chunk
