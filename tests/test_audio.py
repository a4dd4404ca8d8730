"""Float -> int16 conversion, soft clipping and WAV output."""
import wave

import numpy as np

from soprano.audio import soft_clip, to_int16, write_wav


def test_soft_clip_is_identity_below_knee_and_bounded_above():
    x = np.linspace(-0.9, 0.9, 101, dtype=np.float32)
    assert np.array_equal(soft_clip(x), x)
    big = np.array([1.0, 2.0, 50.0, -3.0], np.float32)
    y = soft_clip(big)
    assert (np.abs(y) <= 1.0).all() and (np.abs(y) > 0.9).all()
    assert np.all(np.diff(soft_clip(np.linspace(0.8, 5, 200, dtype=np.float32))) >= 0)


def test_soft_clip_has_no_kink_at_the_knee():
    eps = 1e-3
    xs = np.array([0.9 - eps, 0.9, 0.9 + eps], np.float32)
    y = soft_clip(xs)
    left, right = (y[1] - y[0]) / eps, (y[2] - y[1]) / eps
    assert abs(left - 1) < 1e-2 and abs(right - 1) < 1e-2


def test_to_int16_rounds_and_never_wraps():
    pcm = to_int16(np.array([0.0, 0.5, -0.5, 1e-5, 4.0, -4.0], np.float32))
    assert pcm.dtype == np.int16
    assert pcm[:4].tolist() == [0, 16384, -16384, 0]
    assert 29490 < pcm[4] <= 32767 and -32767 <= pcm[5] < -29490


def test_normalize_scales_peak():
    pcm = to_int16(np.array([0.1, -0.2, 0.05], np.float32), normalize=True)
    assert pcm[1] == round(-0.9 * 32767)


def test_write_wav_round_trip(tmp_path):
    audio = (0.3 * np.sin(np.arange(3200) / 10)).astype(np.float32)
    write_wav(tmp_path / "a.wav", audio, normalize=False)
    with wave.open(str(tmp_path / "a.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 32000)
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert np.array_equal(data, to_int16(audio))
