"""The read-rate probe behind ``soprano-tts bench``'s step floor: it must read every byte it is
given (its sum is the words' sum), with any thread count, and refuse a ragged length."""
import numpy as np
import pytest

from soprano import _C
from soprano.bench import read_rate
from soprano.ops import native


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nbytes", [8, 64, 4096, 4104, 3 * 4096 + 72, 1 << 20])
def test_read_words_sums_every_word(nbytes, threads):
    words = np.random.default_rng(nbytes).integers(0, 2**63, nbytes // 8, dtype=np.uint64)
    before = native.num_threads()
    native.set_num_threads(threads)
    try:
        got = _C.read_words(words.ctypes.data, words.nbytes)
    finally:
        native.set_num_threads(before)
    assert got == int(words.sum(dtype=np.uint64))


def test_read_words_refuses_a_length_that_is_not_whole_words():
    buf = np.zeros(16, dtype=np.uint8)
    with pytest.raises(ValueError, match="bytes must be a multiple of 8, got 12"):
        _C.read_words(buf.ctypes.data, 12)


def test_read_rate_leaves_the_thread_count_as_it_was():
    before = native.num_threads()
    assert read_rate(1 << 20, threads=1, repeats=1) > 0
    assert native.num_threads() == before
