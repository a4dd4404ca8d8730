"""A deterministic stand-in for speech, for checking the audio path without any model.

``generate --synthetic`` writes this instead of running the model (Soprano-RS's generate
defaulted to such a signal), so files, rates, tempo and batching can be tested on machines
without model files, quickly, and without importing torch. Each utterance gets its own chirp:
the start pitch comes from a checksum of the text (the same text always sounds the same), the
duration from its length as if spoken at about 15 characters a second. ``speed`` shortens or
lengthens it without moving the pitch, like the model's ``--speed``.
"""
import zlib

import numpy as np

from .audio import SAMPLE_RATE

SECONDS_PER_CHAR = 0.066
MIN_SECONDS = 0.5
FADE_SECONDS = 0.01   # fade in and out, so the file starts and ends without a click
LOW_HZ, SPAN_HZ = 110.0, 220.0
SWEEP = 1.5           # the chirp ends a fifth above where it started
LEVEL = 0.5


def chirp_hz(text: str) -> tuple[float, float]:
    """Start and end pitch of ``text``'s chirp: in [110, 330) Hz, fixed by the text."""
    start = LOW_HZ + zlib.crc32(text.encode("utf-8")) % int(SPAN_HZ)
    return start, start * SWEEP


def synthesize(text: str, speed: float = 1.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 chirp for ``text``: duration ~ len(text) / speed, pitch independent of speed."""
    seconds = max(MIN_SECONDS, SECONDS_PER_CHAR * len(text)) / speed
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0, f1 = chirp_hz(text)
    # phase is the integral of a frequency sweeping linearly from f0 to f1 over the duration
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / FADE_SECONDS)
    return (LEVEL * fade * np.sin(phase)).astype(np.float32)
