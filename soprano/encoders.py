"""Streaming audio encoders: int16 PCM chunks in, bytes of an audio file out, as they come.

The HTTP speech API sends its body while the audio is still being synthesized, so every encoder
takes mono int16 PCM chunks (``encode``) and returns the bytes that can be sent right away, and
``finish`` returns the rest. Output does not depend on how the PCM was cut into chunks. The
total length is unknown while a stream is sent, so containers that record it say "unknown":
WAV carries placeholder sizes (0xFFFFFFFF, read as "up to the end of the data" by Python's
``wave``, libsndfile and ffmpeg) and FLAC's STREAMINFO holds 0 samples, the FLAC format's value
for "unknown" (libFLAC/ffmpeg decode it; python-soundfile reads the samples but its bookkeeping
seek fails at the end of such a stream).

Compressed formats use PyAV (ffmpeg's native FLAC, libmp3lame, libopus), picked by measurement
on 10 s of audio fed in the server's 4096-sample chunks (CPU time per audio second on this
2-core machine): libsndfile (python-soundfile) streams MP3 with a placeholder Xing frame that
makes mpg123 decode 26% of the audio, and holds Ogg Opus back in 1 s pages (its page-latency
setting is reachable only through soundfile's private cffi handle) while encoding it in 22 ms
against PyAV's 6-8 ms; lameenc (7 ms) is faster than PyAV (13 ms) at MP3 but does nothing
else; FLAC costs about 1 ms either way. PyAV hands out every chunk's packets at once. Codecs
that accept only some rates (MP3, Opus) get the PCM resampled with soxr to the next rate they
take.

Out of scope: AAC (not offered by this server), more than one channel, tags and metadata.
"""
import struct

import av
import numpy as np

from .audio import stream_resampler

FORMATS = ("mp3", "opus", "flac", "wav", "pcm")
WAV_PLACEHOLDER = 0xFFFFFFFF


def content_type(fmt: str, sample_rate: int) -> str:
    """The response's Content-Type; raw PCM names its rate, which nothing else would tell."""
    return {"mp3": "audio/mpeg", "opus": "audio/ogg; codecs=opus", "flac": "audio/flac",
            "wav": "audio/wav", "pcm": f"audio/pcm; rate={sample_rate}; channels=1"}[fmt]


def _le16(pcm: np.ndarray) -> bytes:
    return np.asarray(pcm, dtype=np.int16).astype("<i2", copy=False).tobytes()


class PcmEncoder:
    """Raw signed 16-bit little-endian mono: the samples and nothing else."""

    def encode(self, pcm: np.ndarray) -> bytes:
        return _le16(pcm)

    def finish(self) -> bytes:
        return b""


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """44-byte RIFF/WAVE header for mono 16-bit PCM; ``None`` writes the streaming placeholder."""
    riff = WAV_PLACEHOLDER if data_bytes is None else 36 + data_bytes
    data = WAV_PLACEHOLDER if data_bytes is None else data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16)
            + b"data" + struct.pack("<I", data))


class WavEncoder:
    """The placeholder header before the first samples, then the samples as they come."""

    def __init__(self, sample_rate: int):
        self.header = wav_header(sample_rate)

    def encode(self, pcm: np.ndarray) -> bytes:
        out, self.header = self.header + _le16(pcm), b""
        return out

    def finish(self) -> bytes:
        return self.encode(np.zeros(0, np.int16))  # a stream without samples is still a file


class _Sink:
    """Write-only file object for PyAV: without ``seek`` ffmpeg treats the output as a stream,
    so no muxer tries to go back and patch a header."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


# format -> (ffmpeg muxer, codec, rates the codec takes (None: any), bit rate, muxer options).
# MP3 at a constant 128 kbit/s: without a Xing frame (a stream cannot go back to write one)
# players estimate a VBR file's duration wrongly. Opus at 64 kbit/s VBR: a test sweep comes
# back at 42 dB SNR (at 48 kbit/s libopus leaves the waveform behind: 10 dB). page_duration
# gives each 20 ms Opus packet its own Ogg page (ffmpeg's default holds pages for 1 s): about
# 12 kbit/s of page headers, no added latency. flush_packets: hand every packet to the sink at
# once; bitexact: no random Ogg serial number or encoder version string, so the bytes are
# reproducible; id3v2_version 0: plain MPEG frames from the first byte.
_CODECS = {
    "flac": ("flac", "flac", None, None, {}),
    "mp3": ("mp3", "libmp3lame", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
            128_000, {"id3v2_version": "0"}),
    "opus": ("ogg", "libopus", (8000, 12000, 16000, 24000, 48000), 64_000,
             {"page_duration": "20000"}),
}


def _codec_rate(rate: int, supported) -> int:
    """``rate`` if the codec takes it, else the next higher rate it takes (or its highest)."""
    if supported is None or rate in supported:
        return rate
    return min((r for r in supported if r > rate), default=max(supported))


def _round16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


class AvEncoder:
    """FLAC, MP3 or Ogg Opus through PyAV, muxed into a stream as packets come out."""

    def __init__(self, fmt: str, sample_rate: int):
        muxer, codec, rates, bit_rate, options = _CODECS[fmt]
        self.rate = _codec_rate(sample_rate, rates)
        # float32 in, not int16: soxr's int16 output depends on where the input was cut
        self.resampler = stream_resampler(sample_rate, self.rate)
        self.sink = _Sink()
        self.container = av.open(self.sink, "w", format=muxer,
                                 options={"flush_packets": "1", "fflags": "+bitexact",
                                          **options})
        self.stream = self.container.add_stream(codec, rate=self.rate, layout="mono")
        if bit_rate:
            self.stream.bit_rate = bit_rate
        self.container.start_encoding()
        self.samples = 0

    def _mux(self, frame) -> None:
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def _mux_pcm(self, pcm: np.ndarray) -> None:
        """int16 PCM at the codec's rate."""
        if pcm.size:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm)[None], format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts = self.rate, self.samples
            self.samples += pcm.size
            self._mux(frame)

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = np.asarray(pcm, dtype=np.int16)
        if self.resampler is not None:
            pcm = _round16(self.resampler.resample_chunk(pcm.astype(np.float32)))
        self._mux_pcm(pcm)
        return self.sink.drain()

    def finish(self) -> bytes:
        if self.resampler is not None:
            self._mux_pcm(_round16(self.resampler.resample_chunk(np.zeros(0, np.float32),
                                                                 last=True)))
        self._mux(None)  # drain the codec's delay buffer
        self.container.close()
        return self.sink.drain()


def make_encoder(fmt: str, sample_rate: int):
    """An encoder for ``fmt`` (one of ``FORMATS``) fed mono int16 PCM at ``sample_rate``."""
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavEncoder(sample_rate)
    if fmt in _CODECS:
        return AvEncoder(fmt, sample_rate)
    raise ValueError(f"unknown audio format '{fmt}': use one of {', '.join(FORMATS)}")
