"""StreamingDecoder: chunks as soon as their samples are final, equal to the whole decode."""
from pathlib import Path

import numpy as np
import pytest
import torch

from soprano.model.loader import load_decoder
from soprano.ops import OpTable
from soprano.runtime.streaming import StreamingDecoder, decode_windows
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


def test_windows_of_many_streams_decode_together_as_alone(decoder):
    """decode_windows batches windows of equal length: each chunk is the one decoded alone."""
    gen = torch.Generator().manual_seed(4)
    streams = [StreamingDecoder(decoder, 2, 1) for _ in range(3)]
    windows = []
    for i, stream in enumerate(streams):
        for h in torch.randn(5 + 2 * i, 512, generator=gen):
            window = stream.push_window(h)
            if window is not None:
                windows.append(window)
    assert len({w.states.shape[0] for w in windows}) < len(windows)  # some share a length
    together = decode_windows(decoder, windows)
    for window, chunk in zip(windows, together):
        alone = decode_windows(decoder, [window])[0]
        assert chunk.shape == alone.shape == (window.hi - window.lo,)
        assert np.abs(chunk - alone).max() <= 1e-5
