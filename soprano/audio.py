"""Float audio -> 16-bit PCM and WAV files.

The model's float output can exceed [-1, 1]. Conversion to int16 optionally peak-normalizes a
whole utterance (never per chunk: levels must not jump inside a stream), then passes the signal
through a soft clipper: identity up to the knee (0.9 of full scale), and above it a tanh curve
``knee + (1 - knee) * tanh((|x| - knee) / (1 - knee))`` that has slope 1 at the knee (no kink, so
no audible click) and approaches full scale (reaching it only by float32 rounding of far-out
peaks). Samples are rounded, not truncated.

Rates other than the model's 32 kHz are really resampled (soxr: band-limited, no aliasing), not
relabelled. Out of scope: tempo changes (inside the decoder: ``VocosDecoder(hidden, speed)``),
compressed formats (``soprano.encoders``).
"""
import os
import wave

import numpy as np

SAMPLE_RATE = 32000
SOFT_CLIP_KNEE = 0.9
NORMALIZE_PEAK = SOFT_CLIP_KNEE  # a normalized file never reaches the clipper


def soft_clip(x: np.ndarray, knee: float = SOFT_CLIP_KNEE) -> np.ndarray:
    """Identity below ``knee``; above it a smooth curve bounded by 1 (float32)."""
    x = np.asarray(x, dtype=np.float32)
    mag = np.abs(x)
    over = mag > knee
    if not over.any():
        return x
    out = x.copy()
    span = 1.0 - knee
    out[over] = np.sign(x[over]) * (knee + span * np.tanh((mag[over] - knee) / span))
    return out


def normalize_peak(x: np.ndarray, peak: float = NORMALIZE_PEAK) -> np.ndarray:
    """Scale so the largest magnitude is ``peak``; silence stays silence."""
    x = np.asarray(x, dtype=np.float32)
    top = float(np.max(np.abs(x))) if x.size else 0.0
    return x if top == 0.0 else x * np.float32(peak / top)


def to_int16(x: np.ndarray, normalize: bool = False) -> np.ndarray:
    """float audio -> int16 PCM (soft clipped, rounded)."""
    x = normalize_peak(x) if normalize else np.asarray(x, dtype=np.float32)
    return np.round(soft_clip(x) * 32767.0).astype(np.int16)


def write_wav(path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
              normalize: bool = True) -> None:
    """Mono 16-bit PCM WAV."""
    pcm = to_int16(audio, normalize=normalize)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def joined(parts: list[np.ndarray]) -> np.ndarray:
    """A text's sentences' audio, one after another (empty for none)."""
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def write_numbered(out_dir, audios: list[np.ndarray], sample_rate: int = SAMPLE_RATE) -> None:
    """``{i}.wav`` in ``out_dir`` (created) for each of ``audios``, as upstream's infer_batch."""
    os.makedirs(out_dir, exist_ok=True)
    for i, a in enumerate(audios):
        write_wav(os.path.join(out_dir, f"{i}.wav"), a, sample_rate)


def stream_resampler(rate_in: int, rate_out: int):
    """A soxr stream for audio that arrives in chunks (``resample_chunk(x, last=...)``), float32
    in and out; None when the rates agree."""
    if rate_in == rate_out:
        return None
    import soxr
    return soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32")


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """float32 audio at ``rate_in`` -> ``rate_out`` (soxr high quality); same rate: unchanged."""
    audio = np.asarray(audio, dtype=np.float32)
    if rate_in == rate_out or audio.size == 0:
        return audio
    import soxr  # only resampling callers pay for the import
    return soxr.resample(audio, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)

