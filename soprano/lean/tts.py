"""``LeanTTS``: a model on the CPU without torch, one sentence at a time.

``import torch`` alone is ~218 MB of resident memory and 1.3-1.7 s on the Intel Xeon of
bench/RESULTS.md, more than a Q8_0 model's weights. On the CPU every step and decoder pass is
already one native call over raw pointers, so what torch did around them is done here with
numpy: the load (``weights``: a GGUF, or the published safetensors and ``decoder.pth``), the
prompt's prefill and the steps over a one-slot KV cache, the
next token's choice, the decoder's interpolation and inverse DFT (``decoder``). Text, prompts,
seeds, retries and the chunk schedule are the torch engine's own modules (``soprano.text``,
``runtime.sentences``, ``runtime.chunks``).

The same model gives the torch engine's greedy tokens and hidden states bit for bit (the same
native step over the same weight bytes and rotary tables, ``model.rope``) and its audio within
the inverse DFT's rounding (pocketfft in ``_C`` against MKL's, which the torch engine takes for
passes of more than 32 frames), ~1e-7. Sampling draws from
numpy's PCG64 seeded by ``sentence_seed``, so a seed gives other audio than the torch engine's
(which draws from torch's generator), the same audio on every run. Out of scope: GPUs, batches
of sentences, tempo changes, the server (``SopranoTTS``).
"""
import os
from typing import Iterator

import numpy as np

from .. import _C
from .. import text as textproc
from ..audio import SAMPLE_RATE, joined, write_numbered, write_wav
from ..errors import SopranoError
from ..gguf.file import close_gguf_files
from ..model.files import DEFAULT_MODEL_ID
from ..model.locate import locate_files
from ..model.resolve import resolve_model_dir
from ..runtime.sentences import (HallucinationDetector, SamplingParams, prompt_ids,
                                 sentence_seed)
from ..runtime.threads import requested_threads
from .decoder import LeanDecoder, LeanStream
from .weights import LeanDecoderWeights, decoder_reader, load_backbone


def token_probabilities(logits: np.ndarray, seen: np.ndarray, temperature: float, top_p: float,
                        penalty: float) -> np.ndarray:
    """Next-token probabilities [V] in Hugging Face's order (``runtime.sampling``): repetition
    penalty over ``seen``, temperature, then top-p (sorted ascending, a cumulative probability
    <= 1 - top_p dropped, the most likely kept)."""
    scores = logits.astype(np.float32, copy=True)
    if penalty != 1.0:
        hit = scores[seen]
        scores[seen] = np.where(hit < 0, hit * np.float32(penalty), hit / np.float32(penalty))
    scores /= np.float32(temperature)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(scores, kind="stable")
        drop = np.cumsum(probs[order]) <= 1 - top_p
        drop[-1] = False
        probs[order[drop]] = 0
        probs /= probs.sum()
    return probs


def sample_token(logits: np.ndarray, seen: np.ndarray, temperature: float, top_p: float,
                 penalty: float, rng: np.random.Generator) -> int:
    """One token drawn from ``token_probabilities``."""
    cumulative = np.cumsum(token_probabilities(logits, seen, temperature, top_p, penalty))
    drawn = np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")
    return int(min(drawn, len(cumulative) - 1))


class LeanTTS:
    """A model loaded once (``model``: as ``SopranoTTS``'s, a directory in the published
    layout, a backbone ``.gguf`` or a directory of GGUF files, or a hub id fetched into
    ``cache_dir`` unless ``download`` is False); texts in, 32 kHz float32 audio out, as
    ``SopranoTTS``'s ``infer``, ``infer_batch`` and ``infer_stream``. ``threads``: the native
    kernels' (default ``SOPRANO_THREADS``, else the physical cores). One KV cache serves every
    call, so calls must not overlap: a stream still being read when another call starts is
    overwritten by it."""

    def __init__(self, model=DEFAULT_MODEL_ID, *, decoder_path=None, cache_dir=None,
                 download: bool = True, threads: int | None = None):
        try:
            self.threads = requested_threads(threads)
        except ValueError as e:
            raise SopranoError(str(e)) from None
        _C.set_num_threads(self.threads)
        self.model_files = locate_files(resolve_model_dir(model, cache_dir, download),
                                        decoder_path)
        close_gguf_files()  # locating parsed the headers; each is parsed once more, and freed
        self.backbone = load_backbone(self.model_files)
        self.decoder = LeanDecoder(LeanDecoderWeights(decoder_reader(self.model_files.decoder),
                                                      self.backbone.cfg.hidden_size))
        self.tokenizer = self.backbone.tokenizer
        cfg = self.backbone.cfg
        self.eos = cfg.eos_token_id
        self.sample_rate = SAMPLE_RATE
        self._hidden = np.zeros((1, cfg.hidden_size), np.float32)
        self._logits = np.zeros((1, cfg.vocab_size), np.float32)
        self._seen = np.zeros((1, cfg.vocab_size), np.bool_)
        self._slot = np.zeros(1, np.int64)
        self._token = np.zeros(1, np.int64)

    def _run(self, tokens: np.ndarray, positions: np.ndarray) -> None:
        """The native step over ``tokens`` at ``positions`` of slot 0: the last row's hidden
        state and logits into the buffers (a whole prompt is a causal prefill)."""
        n = len(tokens)
        slots = np.zeros(n, np.int64)
        self.backbone.native.step(tokens.ctypes.data, positions.ctypes.data, slots.ctypes.data,
                                  n, n - 1, self._hidden.ctypes.data, self._logits.ctypes.data)

    def states(self, prompt: list[int], max_new_tokens: int = 512,
               params: SamplingParams = SamplingParams(),
               rng: np.random.Generator | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(token, the hidden state [H] that chose it) as each is chosen, EOS last (when the
        sentence ends before ``max_new_tokens``), as the torch engine emits them."""
        if not prompt:
            raise ValueError("a sequence needs a non-empty prompt")
        max_len = self.backbone.max_len
        if len(prompt) >= max_len:
            raise ValueError(f"a prompt of {len(prompt)} tokens does not fit the cache "
                             f"({max_len} positions)")
        ids = np.array(prompt, np.int64)
        self._run(ids, np.arange(len(ids), dtype=np.int64))
        self._seen[:] = False
        self._seen[0, ids] = True
        rng = rng if rng is not None else np.random.default_rng()
        start = len(prompt)
        for generated in range(min(max_new_tokens, max_len - start)):
            if generated:  # feed the token chosen last
                self._run(self._token, np.array([start + generated - 1], np.int64))
            if params.greedy:
                _C.greedy_tokens_cpu(self._logits.ctypes.data, self._seen.ctypes.data,
                                     self._slot.ctypes.data, 1, self._logits.shape[1], 1,
                                     params.repetition_penalty, self._token.ctypes.data)
            else:
                self._token[0] = sample_token(self._logits[0], self._seen[0], params.temperature,
                                              params.top_p, params.repetition_penalty, rng)
            token = int(self._token[0])
            yield token, self._hidden[0].copy()
            if token == self.eos:
                return
            self._seen[0, token] = True

    def _sentences(self, text: str):
        return [(s, prompt_ids(self.tokenizer, s)) for s in textproc.prepare_sentences(text)]

    def _generate(self, prompt: list[int], max_new_tokens: int, params: SamplingParams,
                  retries: int,
                  rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
        """One sentence's tokens (no EOS) and states [N, H]; generated again, up to
        ``retries`` times, while the hallucination check flags it."""
        for attempt in range(retries + 1):
            detector = HallucinationDetector()
            tokens, states = [], []
            for token, state in self.states(prompt, max_new_tokens, params, rng):
                if token == self.eos:
                    break
                tokens.append(token)
                states.append(state)
                if attempt < retries and detector.push(state):
                    break
            if not detector.flagged:
                break
        hidden = (np.stack(states) if states
                  else np.zeros((0, self.backbone.cfg.hidden_size), np.float32))
        return tokens, hidden

    def generate(self, text: str, max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 0.95, repetition_penalty: float = 1.2, retries: int = 0,
                 seed: int | None = None) -> list[tuple[list[int], np.ndarray]]:
        """Per sentence of ``text``: its tokens (no EOS) and hidden states [N, H] fp32."""
        return self._generate_all(self._sentences(text), max_new_tokens,
                                  SamplingParams(temperature, top_p, repetition_penalty), retries,
                                  seed)

    def _generate_all(self, sentences, max_new_tokens: int, params: SamplingParams, retries: int,
                      seed: int | None, first: int = 0, done=None) -> list:
        """``generate`` over ``_sentences``' output; sentence i draws from a generator seeded
        from ``seed`` and ``first + i``; ``done(tokens)`` is called as each one finishes."""
        out = []
        for i, (_, prompt) in enumerate(sentences):
            rng = np.random.default_rng(sentence_seed(seed, first + i))
            out.append(self._generate(prompt, max_new_tokens, params, retries, rng))
            if done is not None:
                done(len(out[-1][0]))
        return out

    def decode_hidden(self, hidden: np.ndarray) -> np.ndarray:
        """One sentence's states [N, H] -> float32 audio (empty below 2 states)."""
        if len(hidden) < 2:
            return np.zeros(0, np.float32)
        return self.decoder.decode(hidden)

    def infer_batch(self, texts: list[str], out_dir=None, top_p=0.95, temperature=0.0,
                    repetition_penalty=1.2, retries=0, max_new_tokens=512, seed=None,
                    speed: float = 1.0, progress=None) -> list[np.ndarray]:
        """``SopranoTTS.infer_batch``'s contract, one sentence at a time: one float32 array per
        text (``{i}.wav`` files in ``out_dir``), ``progress(done, total, tokens)`` per sentence.
        Only ``speed`` 1: a tempo change is the torch decoder's."""
        if speed != 1.0:
            raise SopranoError("the torch-free engine synthesizes at speed 1 only; use the "
                               "torch engine for another tempo")
        per_text = [self._sentences(t) for t in texts]
        total = sum(map(len, per_text))
        done = tokens = 0

        def sentence_done(n):
            nonlocal done, tokens
            done, tokens = done + 1, tokens + n
            if progress is not None:
                progress(done, total, tokens)
        audios, first = [], 0
        params = SamplingParams(temperature, top_p, repetition_penalty)
        for sentences in per_text:
            parts = [self.decode_hidden(h) for _, h in self._generate_all(
                sentences, max_new_tokens, params, retries, seed, first, sentence_done)]
            first += len(sentences)
            audios.append(joined(parts))
        if out_dir:
            write_numbered(out_dir, audios, self.sample_rate)
        return audios

    def infer(self, text: str, out_path=None, top_p=0.95, temperature=0.0,
              repetition_penalty=1.2, retries=0, max_new_tokens=512, seed=None) -> np.ndarray:
        """float32 audio [samples] at 32 kHz; with ``out_path``, also a 16-bit WAV file."""
        audio = self.infer_batch([text], None, top_p, temperature, repetition_penalty, retries,
                                 max_new_tokens, seed)[0]
        if out_path:
            write_wav(os.fspath(out_path), audio, self.sample_rate)
        return audio

    def infer_stream(self, text: str, chunk_size: int = 1, top_p=0.95, temperature=0.0,
                     repetition_penalty=1.2, max_new_tokens=512, seed=None,
                     retries=0) -> Iterator[np.ndarray]:
        """float32 chunks as they are decoded, as ``SopranoTTS.infer_stream``: the first once
        its states are in, each a sentence's next ``chunk_size`` tokens (doubling up to it), the
        rest at its end. A sentence flagged before its first chunk is generated again (up to
        ``retries`` times), after it is cut there."""
        params = SamplingParams(temperature, top_p, repetition_penalty)
        stream = LeanStream(self.decoder, chunk_size)
        for i, (_, prompt) in enumerate(self._sentences(text)):
            rng = np.random.default_rng(sentence_seed(seed, i))
            left = retries
            while True:
                stream.reset()
                detector = HallucinationDetector()
                restart = False
                for token, state in self.states(prompt, max_new_tokens, params, rng):
                    if token == self.eos:
                        break
                    chunk = stream.push(state)
                    if chunk is not None and chunk.size:
                        yield chunk
                    if left > 0 and detector.push(state):
                        restart = not stream.emitted
                        break
                if not restart:
                    break
                left -= 1
            chunk = stream.finish()
            if chunk.size:
                yield chunk
