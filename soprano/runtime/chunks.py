"""When a stream's chunks of audio go out, and how many samples each holds: the schedule alone,
without arrays, shared by the torch engine's ``StreamingDecoder`` and the torch-free one.

Once T states have arrived, every sample below ``2048 (T - 1) - margin`` is final (margin =
512 (receptive_frames - 1) + 1024: 4608 for Soprano-1.1, 5120 for Soprano-80M's k=3 embed). The
first chunk goes out once ``first_chunk_size`` tokens' worth of states beyond the context has
arrived (for 1 token that is the 4th state, and the chunk holds the 1536 samples already final),
then every ``size`` states, ``size`` doubling from the first chunk's up to ``chunk_size``; the
last chunk, at the end, holds the rest: ``2048 (T - 1)`` samples in all.
"""
import math

from ..model.vocos_shape import HOP, N_FFT, SAMPLES_PER_TOKEN


class ChunkSchedule:
    def __init__(self, receptive_frames: int, chunk_size: int = 1,
                 first_chunk_size: int | None = None):
        if first_chunk_size is None:
            first_chunk_size = chunk_size
        if min(chunk_size, first_chunk_size) < 1:
            raise ValueError(f"chunk sizes must be >= 1, got {first_chunk_size} first, "
                             f"then {chunk_size}")
        self.chunk_size, self.first_chunk_size = chunk_size, first_chunk_size
        self.margin = HOP * (receptive_frames - 1) + N_FFT // 2
        self.reset()

    def reset(self) -> None:
        """Start over, as for a new sequence of states (nothing sent yet)."""
        context = math.ceil(self.margin / SAMPLES_PER_TOKEN)
        self.size = self.first_chunk_size          # tokens in the next chunk
        self.due = self.first_chunk_size + context  # states needed for the next chunk
        self.count = 0                              # states pushed
        self.emitted = 0                            # samples handed out

    def push(self) -> int | None:
        """One more state: the samples of the chunk now due, or None."""
        self.count += 1
        if self.count < self.due:
            return None
        self.size = min(self.chunk_size, 2 * self.size)
        self.due = self.count + self.size
        return self._upto(SAMPLES_PER_TOKEN * (self.count - 1) - self.margin)

    def finish(self) -> int | None:
        """The samples of the chunk that ends the stream, or None when none are left."""
        return self._upto(SAMPLES_PER_TOKEN * max(0, self.count - 1))

    def _upto(self, upto: int) -> int | None:
        if upto <= self.emitted:
            return None
        samples, self.emitted = upto - self.emitted, upto
        return samples
