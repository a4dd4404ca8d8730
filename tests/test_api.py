"""SopranoTTS end to end on the tiny checkpoint: lengths, streaming == whole, batching, files."""
import wave

import numpy as np
import pytest
import torch

from soprano.runtime.pipeline import is_hallucination
from soprano.errors import SopranoError
from soprano.runtime.streaming import StreamingDecoder

TEXT = "Hello there, how are you doing on this fine day? I am doing very well, thank you for asking."
N = 24


@pytest.fixture(scope="module")
def whole(tiny_tts):
    return tiny_tts.infer(TEXT, max_new_tokens=N)


def test_infer_length_is_2048_per_token_gap(tiny_tts, whole):
    sents = tiny_tts.generate([TEXT], max_new_tokens=N)[0]
    assert len(sents) == 2
    expected = sum(2048 * (len(s.generated.token_ids) - 1) for s in sents)
    assert whole.dtype == np.float32 and whole.shape == (expected,)
    assert np.isfinite(whole).all() and np.abs(whole).max() > 0


@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_stream_concatenation_equals_infer(tiny_tts, whole, chunk_size):
    chunks = list(tiny_tts.infer_stream(TEXT, chunk_size=chunk_size, max_new_tokens=N))
    assert all(c.dtype == np.float32 for c in chunks)
    assert len(chunks) > 2 * (N // chunk_size) // 2
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() <= 1e-4


def test_stream_chunks_are_chunk_size_tokens(tiny_tts):
    chunks = list(tiny_tts.infer_stream("A single sentence that is long enough.", chunk_size=3,
                                        max_new_tokens=N))
    # the first chunk holds what is final when its states are in: 512 samples short of 3 tokens
    assert len(chunks[0]) == 3 * 2048 - 512
    assert all(len(c) == 3 * 2048 for c in chunks[1:-1])


def test_smaller_first_chunk_keeps_stream_equal_to_whole(tiny_tts):
    hidden = torch.from_numpy(tiny_tts.generate([TEXT], max_new_tokens=N)[0][0].generated.hidden)
    whole = tiny_tts.decoder(hidden.T[None])[0].numpy()
    stream = StreamingDecoder(tiny_tts.decoder, chunk_size=4, first_chunk_size=1)
    chunks = [c for c in map(stream.push, hidden) if c is not None] + [stream.finish()]
    assert [len(c) for c in chunks[:3]] == [1536, 2 * 2048, 4 * 2048]
    assert np.abs(np.concatenate(chunks) - whole).max() <= 1e-4


def test_batch_equals_single(tiny_tts, whole):
    other = "A second text, different from the first one, for the batch."
    batch = tiny_tts.infer_batch([TEXT, other], max_new_tokens=N)
    assert np.abs(batch[0] - whole).max() <= 1e-4
    single = tiny_tts.infer(other, max_new_tokens=N)
    assert np.abs(batch[1] - single).max() <= 1e-4


def test_greedy_is_deterministic_and_sampling_is_seeded(tiny_tts):
    a = tiny_tts.generate([TEXT], max_new_tokens=N, temperature=0.8, seed=7)[0][0]
    b = tiny_tts.generate([TEXT], max_new_tokens=N, temperature=0.8, seed=7)[0][0]
    c = tiny_tts.generate([TEXT], max_new_tokens=N, temperature=0.8, seed=8)[0][0]
    greedy = tiny_tts.generate([TEXT], max_new_tokens=N)[0][0]
    assert a.generated.token_ids == b.generated.token_ids
    assert a.generated.token_ids != c.generated.token_ids
    assert a.generated.token_ids != greedy.generated.token_ids


def test_max_new_tokens_bounds_and_reports_length(tiny_tts):
    s = tiny_tts.generate(["Count the tokens in this one please."], max_new_tokens=5)[0][0]
    assert len(s.generated.token_ids) == 5
    assert s.generated.hidden.shape == (5, 512)
    assert s.generated.finish_reason == "length"


def test_out_path_writes_32k_int16_wav(tiny_tts, tmp_path, whole):
    path = tmp_path / "x.wav"
    audio = tiny_tts.infer(TEXT, out_path=str(path), max_new_tokens=N)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 32000)
        assert w.getnframes() == len(audio) == len(whole)


def test_empty_text_gives_empty_audio(tiny_tts):
    assert tiny_tts.infer("   ", max_new_tokens=N).shape == (0,)
    assert list(tiny_tts.infer_stream("", max_new_tokens=N)) == []


def test_bad_sampling_arguments_raise(tiny_tts):
    with pytest.raises(ValueError, match="top_p"):
        tiny_tts.infer(TEXT, top_p=0.0, max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        tiny_tts.infer(TEXT, temperature=float("nan"), max_new_tokens=2)


def test_unknown_device_is_a_clear_error(tiny_ckpt):
    from soprano import SopranoTTS
    with pytest.raises(SopranoError, match="unknown device 'tpu'"):
        SopranoTTS(tiny_ckpt, device="tpu")


def test_hallucination_detector_counts_runs():
    rng = np.random.default_rng(0)
    varied = rng.normal(size=(40, 512)).astype(np.float32) * 10
    assert not is_hallucination(varied)
    stuck = np.repeat(varied[:1], 40, axis=0)
    assert is_hallucination(stuck)
    assert not is_hallucination(stuck[:16])


def test_retries_regenerate_flagged_sentences(tiny_tts, monkeypatch):
    """Every attempt but the last is dropped as soon as the detector flags it (here at once);
    the last runs to its end and is kept."""
    from soprano.runtime import pipeline
    starts = []
    real_start = pipeline.SentenceRun.start

    def counting(run):
        starts.append(run.text)
        return real_start(run)

    monkeypatch.setattr(pipeline.SentenceRun, "start", counting)
    monkeypatch.setattr(pipeline.HallucinationDetector, "push", lambda self, h: True)
    text = ("This is the first sentence of the text right here. And then there comes a second "
            "sentence right after it.")
    result = tiny_tts.generate([text], retries=2, max_new_tokens=4)[0]
    assert len(result) == 2 and len(starts) == 6  # two sentences, three attempts each
    assert [len(s.generated.token_ids) for s in result] == [4, 4]
    plain = tiny_tts.generate([text], max_new_tokens=4)[0]
    for got, want in zip(result, plain):
        assert got.generated.token_ids == want.generated.token_ids
        assert np.array_equal(got.generated.hidden, want.generated.hidden)


def test_streamed_sentence_flagged_after_audio_is_cut(tiny_tts, monkeypatch):
    from soprano.runtime import pipeline
    pushed = []

    def flag_at_twelve(self, h):
        pushed.append(1)
        return len(pushed) >= 12

    monkeypatch.setattr(pipeline.HallucinationDetector, "push", flag_at_twelve)
    chunks = list(tiny_tts.infer_stream("One sentence only.", chunk_size=2, retries=1,
                                        max_new_tokens=30))
    assert len(pushed) == 12  # cut at the flag, not run to 30 tokens
    assert sum(c.size for c in chunks) == 2048 * 11


def test_seeded_sentences_sound_the_same_batched_and_streamed(tiny_tts):
    text = ("The first sentence is right here and it is long. A second sentence follows it "
            "closely behind.")
    kw = dict(temperature=0.9, max_new_tokens=8, seed=3)
    whole = tiny_tts.infer(text, **kw)
    streamed = np.concatenate(list(tiny_tts.infer_stream(text, chunk_size=2, **kw)))
    assert streamed.shape == whole.shape and np.abs(streamed - whole).max() <= 1e-4
    sentences = tiny_tts.generate([text], **kw)[0]
    assert len(sentences) == 2
    other_seed = tiny_tts.generate([text], **{**kw, "seed": 4})[0]
    assert [s.generated.token_ids for s in sentences] != [
        s.generated.token_ids for s in other_seed]


def test_progress_reports_each_finished_sentence(tiny_tts):
    calls = []
    text = ("The first sentence of this text is here. The second one follows it. A third "
            "sentence closes the text.")
    result = tiny_tts.generate([text], max_new_tokens=5,
                               progress=lambda done, total, tokens: calls.append((done, total,
                                                                                  tokens)))[0]
    assert [c[:2] for c in calls] == [(i + 1, len(result)) for i in range(len(result))]
    assert calls[-1][2] == sum(len(s.generated.token_ids) for s in result)


@pytest.mark.parametrize("max_batch", [1, 2])
def test_an_abandoned_stream_frees_its_cache_slot(tiny_ckpt, max_batch):
    """Closing infer_stream after its first chunk (a client that hangs up) must leave the
    engine as it was: its sequence held the slot and later calls inherited its steps."""
    from soprano import SopranoTTS
    tts = SopranoTTS(tiny_ckpt, device="cpu", max_batch=max_batch)
    text = "One sentence here. And a second one."
    whole = tts.infer(text, max_new_tokens=24)
    stream = tts.infer_stream(text, max_new_tokens=24)
    assert next(stream).size > 0
    stream.close()
    assert tts.engine.free_slots == max_batch
    assert np.array_equal(tts.infer(text, max_new_tokens=24), whole)


@pytest.mark.parametrize("tokens", [256, 257, 700])
def test_a_long_sentence_is_decoded_in_pieces_as_in_one_pass(tiny_tts, monkeypatch, tokens):
    """decode_hidden on a CPU: past two pieces of DECODE_PIECE_TOKENS states a sentence goes
    through the stateful decoder a piece at a time (buffers the size of a piece, not of the
    sentence), with the one-pass audio."""
    from soprano import api
    hidden = np.random.default_rng(tokens).standard_normal((tokens, 512)).astype(np.float32)
    whole = tiny_tts.decoder(torch.from_numpy(hidden).T[None])[0].numpy()
    passes = []
    real = tiny_tts.decoder.run_layers
    monkeypatch.setattr(tiny_tts.decoder, "run_layers",
                        lambda pending, frames, final: passes.append(frames) or real(
                            pending, frames, final))
    audio = tiny_tts.decode_hidden(hidden)
    assert audio.shape == whole.shape == (2048 * (tokens - 1),)
    assert np.abs(audio - whole).max() <= 1e-4
    piece = api.DECODE_PIECE_TOKENS
    if tokens <= 2 * piece:
        assert len(passes) == 1
        return
    # a piece goes out once its states and the receptive field's context have arrived
    context = -(-StreamingDecoder(tiny_tts.decoder).margin // 2048)
    assert len(passes) >= tokens // (piece + context)
    assert max(sum(f.shape[0] for f in p) for p in passes) <= 4 * (piece + context) + 1
