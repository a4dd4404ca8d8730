"""Streaming encoders without a server: chunking never changes the bytes, and the bytes decode.

Lossy formats are decoded by libsndfile (mpg123, libopus), not by the ffmpeg that encoded them.
"""
import io
import struct
import wave

import numpy as np
import pytest
import soundfile as sf

from helpers import with_total_samples
from soprano.encoders import FORMATS, content_type, make_encoder, wav_header

RATE = 32000


def sweep(seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    """A 100 -> 1700 Hz sweep under a raised-cosine envelope: no period for a codec delay to
    hide in, so alignment by cross-correlation is unambiguous."""
    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 * (1 - np.cos(2 * np.pi * t / seconds))
    return np.round(0.7 * 32767 * env * np.sin(2 * np.pi * (100 * t + 800 * t ** 2 / seconds))
                    ).astype(np.int16)


def encode(fmt, pcm, cuts, rate=RATE) -> tuple[bytes, list[bytes]]:
    """The whole stream and the bytes each ``encode`` call returned."""
    enc = make_encoder(fmt, rate)
    parts = [enc.encode(p) for p in np.split(pcm, cuts)]
    return b"".join(parts) + enc.finish(), parts


def every(n, step=4096):
    return list(range(step, n, step))


def snr_db(decoded: np.ndarray, ref: np.ndarray, max_lag: int = 1500) -> float:
    """SNR after aligning ``decoded`` to ``ref`` (codecs delay the signal)."""
    d, r = decoded.astype(np.float64), ref.astype(np.float64)[:len(decoded) - max_lag]
    size = len(d) + len(r)  # cross-correlation by FFT: entry k is sum d[t + k] r[t]
    corr = np.fft.irfft(np.fft.rfft(d, size) * np.conj(np.fft.rfft(r, size)), size)
    lag = int(np.argmax(corr[:max_lag]))
    return 10 * np.log10((r ** 2).sum() / ((d[lag:lag + len(r)] - r) ** 2).sum())


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunking_does_not_change_the_stream(fmt):
    pcm = sweep(rate=22050)  # MP3 and Opus resample 22050 Hz: the resampler must not care either
    one_shot, _ = encode(fmt, pcm, [], rate=22050)
    cuts = sorted(np.random.default_rng(1).integers(0, len(pcm), 40))
    assert encode(fmt, pcm, cuts, rate=22050)[0] == one_shot


@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_come_out_while_audio_goes_in(fmt):
    # Server chunks are 4096 samples; the first one already yields a decodable start.
    _, parts = encode(fmt, sweep(), every(RATE))
    assert all(parts[:-1])


def test_wav_header_placeholder_and_exact_sizes():
    head = wav_header(RATE)
    assert len(head) == 44 and head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", head[4:8]) == struct.unpack("<I", head[40:44]) == (0xFFFFFFFF,)
    assert struct.unpack("<IHHIIHH", head[16:36]) == (16, 1, 1, RATE, 2 * RATE, 2, 16)
    exact = wav_header(RATE, 1000)
    assert struct.unpack("<I", exact[4:8]) == (1036,) and struct.unpack("<I", exact[40:]) == (1000,)


def test_streamed_wav_reads_back_exactly_with_wave_and_soundfile():
    pcm = sweep()
    data, parts = encode("wav", pcm, every(len(pcm)))
    assert parts[0][:44] == wav_header(RATE) and data == wav_header(RATE) + pcm.tobytes()
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), pcm)
    assert np.array_equal(sf.read(io.BytesIO(data), dtype="int16")[0], pcm)
    assert encode("wav", pcm[:0], [])[0] == wav_header(RATE)  # no audio: still a WAV file


def test_pcm_is_the_samples_little_endian():
    pcm = sweep()
    assert encode("pcm", pcm, every(len(pcm)))[0] == pcm.astype("<i2").tobytes()


def test_flac_is_lossless_and_says_length_unknown():
    pcm = sweep()
    data, _ = encode("flac", pcm, every(len(pcm)))
    assert data[:4] == b"fLaC"
    fields = int.from_bytes(data[18:26], "big")
    assert (fields >> 44, fields & (2 ** 36 - 1)) == (RATE, 0)  # rate; 0 samples = unknown
    got, rate = sf.read(io.BytesIO(with_total_samples(data, len(pcm))), dtype="int16")
    assert rate == RATE and np.array_equal(got, pcm)


def test_mp3_is_plain_mpeg_frames_that_mpg123_decodes():
    pcm = sweep()
    data, _ = encode("mp3", pcm, every(len(pcm)))
    header = int.from_bytes(data[:4], "big")
    assert header >> 21 == 0x7FF and (header >> 17) & 3 == 1  # frame sync, layer III
    got, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == RATE and len(pcm) <= len(got) <= len(pcm) + 3 * 1152
    assert snr_db(got, pcm) > 20


def test_opus_is_ogg_at_48k_and_libopus_decodes_it_whole():
    pcm = sweep()
    data, _ = encode("opus", pcm, every(len(pcm)))
    assert data[:4] == b"OggS" and data[28:36] == b"OpusHead"
    got, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 48000 and len(got) == len(pcm) * 3 // 2  # end trimmed by granule position
    import soxr
    ref = soxr.resample(pcm.astype(np.float32), RATE, 48000)
    assert snr_db(got, ref, max_lag=10) > 30


def test_codecs_get_rates_they_accept():
    pcm = sweep(0.5, 40000)
    got, rate = sf.read(io.BytesIO(encode("mp3", pcm, [], rate=40000)[0]), dtype="int16")
    assert rate == 44100 and len(got) >= len(pcm) * 44100 // 40000
    got, rate = sf.read(io.BytesIO(encode("opus", sweep(0.5, 16000), [], rate=16000)[0]))
    assert rate == 16000 and len(got) == 8000  # a rate Opus takes is kept


def test_content_types_and_unknown_format():
    assert content_type("mp3", RATE) == "audio/mpeg"
    assert content_type("pcm", 24000) == "audio/pcm; rate=24000; channels=1"
    with pytest.raises(ValueError, match="unknown audio format 'aac'"):
        make_encoder("aac", RATE)
