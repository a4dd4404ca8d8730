"""StreamingDecoder: chunks as soon as their samples are final, equal to the whole decode."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soprano.model.loader import load_decoder
from soprano.ops import OpTable, native
from soprano.runtime.streaming import StreamingDecoder, decode_pieces
from soprano.testing import write_checkpoint


@pytest.fixture(scope="module", params=["real", "real-80m"])
def decoder(request, tmp_path_factory):
    """Soprano-1.1's decoder (k=1 embed) and Soprano-80M's (k=3 embed: one frame more reach)."""
    path = write_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt", request.param)
    return load_decoder(Path(path), 512, OpTable("cpu", torch.float32))


def run(decoder, states, chunk_size, first_chunk_size):
    stream = StreamingDecoder(decoder, chunk_size, first_chunk_size)
    chunks, arrivals = [], []
    for i, h in enumerate(states):
        chunk = stream.push(h)
        if chunk is not None:
            chunks.append(chunk)
            arrivals.append(i + 1)
    chunks.append(stream.finish())
    return chunks, arrivals


def test_first_audio_comes_with_the_fourth_state(decoder):
    states = torch.randn(12, 512, generator=torch.Generator().manual_seed(1))
    chunks, arrivals = run(decoder, states, 4, 1)
    # 2048 (4 - 1) samples minus the margin (4608 with a k=1 embed, 5120 with k=3) are final
    final_after_4 = 3 * 2048 - (4608 if decoder.receptive_frames == 8 else 5120)
    assert arrivals[0] == 4 and len(chunks[0]) == final_after_4
    # then 2, 4, 4 tokens: each chunk carries what became final since the last one
    assert arrivals[1:] == [6, 10]
    assert [len(c) for c in chunks[1:3]] == [2 * 2048, 4 * 2048]


@pytest.mark.parametrize("chunk_size,first_chunk_size", [(4, 1), (1, 1), (3, 3), (5, 2),
                                                             (2, 6)])
@pytest.mark.parametrize("n_states", [2, 4, 5, 23])
def test_concatenation_equals_the_whole_decode(decoder, chunk_size, first_chunk_size,
                                               n_states):
    states = torch.randn(n_states, 512, generator=torch.Generator().manual_seed(n_states))
    whole = decoder(states.T[None])[0].numpy()
    chunks, _ = run(decoder, states, chunk_size, first_chunk_size)
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape == (2048 * (n_states - 1),)
    assert np.abs(streamed - whole).max() <= 1e-5


@pytest.mark.parametrize("state", [6, 9])
def test_margin_is_where_the_next_state_starts_to_matter(decoder, state):
    """Changing state T moves no sample below 2048 (T - 1) - margin, and does move samples
    right after it: the margin is the receptive field, not padded for safety. (The first few
    samples past the edge round to the same float: the Hann window's tail is ~0 there.)"""
    states = torch.randn(16, 512, generator=torch.Generator().manual_seed(3))
    margin = StreamingDecoder(decoder).margin
    base = decoder(states.T[None])[0].numpy()
    states[state] += 100.0
    moved = np.nonzero(decoder(states.T[None])[0].numpy() != base)[0]
    edge = 2048 * (state - 1) - margin
    assert edge <= moved[0] <= edge + 64


def pieces_of(decoder, states, chunk_size=2, first_chunk_size=1):
    stream = StreamingDecoder(decoder, chunk_size, first_chunk_size)
    pieces = [stream.push_piece(h) for h in states]
    return [p for p in pieces + [stream.finish_piece()] if p is not None]


def test_pieces_of_many_streams_decode_together_as_alone(decoder):
    """decode_pieces packs the pieces of many streams (of different lengths, several pieces of
    one stream in the same call) into passes: each chunk equals the stream decoded alone."""
    gen = torch.Generator().manual_seed(4)
    inputs = [torch.randn(5 + 3 * i, 512, generator=gen) for i in range(3)]
    alone = [decode_pieces(decoder, pieces_of(decoder, states)) for states in inputs]
    mixed = [pieces_of(decoder, states) for states in inputs]
    order = [p for group in zip(*mixed) for p in group] + [p for m in mixed
                                                           for p in m[len(mixed[0]):]]
    together = dict(zip(map(id, order), decode_pieces(decoder, order)))
    for pieces, chunks in zip(mixed, alone):
        assert len(pieces) == len(chunks) > 1
        for piece, chunk in zip(pieces, chunks):
            assert together[id(piece)].shape == chunk.shape == (piece.samples,)
            assert np.abs(together[id(piece)] - chunk).max() <= 1e-5


def test_a_stream_with_one_state_or_none_has_no_audio(decoder):
    for n in (0, 1):
        stream = StreamingDecoder(decoder)
        assert all(stream.push(h) is None for h in torch.randn(n, 512))
        assert stream.finish().shape == (0,)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_states=st.integers(1, 200), chunk_size=st.integers(1, 16),
       first_chunk_size=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_any_stream_equals_the_whole_decode(decoder, n_states, chunk_size, first_chunk_size,
                                            seed):
    """Every frame is computed once, in pieces of any size, and the stream still equals the
    one-shot decode (fp32, within 1e-4) for every length and chunk schedule."""
    states = torch.randn(n_states, 512, generator=torch.Generator().manual_seed(seed))
    whole = decoder(states.T[None])[0].numpy()
    chunks, _ = run(decoder, states, chunk_size, first_chunk_size)
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape == (2048 * (n_states - 1),)
    assert np.abs(streamed - whole).max(initial=0.0) <= 1e-4


@pytest.mark.skipif(not native.has_cpu(), reason="soprano._C is not built")
@pytest.mark.parametrize("pieces", [[2, 1, 1, 0], [3, 0, 5, 2], [4, 0, 3], [7]])
def test_native_overlap_add_is_the_torch_one(pieces):
    """A stream's pieces overlap-added in one C++ pass each, against the torch version (fold,
    envelope tables): the same samples and tails, empty pieces included, the last piece ending
    the stream (a stream's first piece always reaches past the centre trim)."""
    from soprano.model.vocos import HOP, N_FFT
    from soprano.runtime import streaming
    gen = torch.Generator().manual_seed(len(pieces))
    window = torch.hann_window(N_FFT)
    running = streaming._envelope(window, torch.arange(N_FFT), N_FFT)
    ours, theirs = (streaming.DecoderState(pending=None) for _ in range(2))
    for i, n in enumerate(pieces):
        frames = torch.randn(n, N_FFT, generator=gen) * window
        final = i == len(pieces) - 1
        got = streaming._overlap_add_native(ours, frames, window, running, final)
        want = streaming._overlap_add(theirs, frames, window, running, final)
        assert got.shape == want.shape and torch.equal(got, want), (i, n)
        assert torch.equal(ours.tail, theirs.tail) and ours.frames == theirs.frames
