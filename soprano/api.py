"""``SopranoTTS``: text in, 32 kHz float32 audio out; a drop-in for upstream soprano-tts 0.2.0.

Text -> sentences (``soprano.text``) -> ``SentenceRun``s through the one ``Engine`` (continuous
batching over a static KV cache) -> audio (``VocosDecoder``; streamed pieces for
``infer_stream``). Sentences are generated independently and their audio concatenated, as
upstream. Upstream's constructor and call keywords are accepted: ``backend``'s values
(auto, lmdeploy, transformers) all mean ``auto`` (ours: which kernels run each op, see
``soprano.ops``; ``SOPRANO_BACKEND`` or our names torch/cpu/cuda/triton force one);
``cache_size_mb`` is ignored. Audio is numpy float32 (upstream returns torch tensors).
"""
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from . import text as textproc
from .audio import SAMPLE_RATE, joined, write_numbered, write_wav
from .errors import SopranoError
from .model.files import DEFAULT_MODEL_ID
from .model.loader import load_model
from .model.locate import locate_files
from .model.resolve import resolve_model_dir
from .ops import OpTable
from .runtime.engine import Engine, Generated
from .runtime.pipeline import SentenceRun, drive
from .runtime.sampling import SamplingParams
from .runtime.sentences import prompt_ids, sentence_seed
from .runtime.streaming import StreamingDecoder, decode_pieces
from .runtime.threads import configure_threads

# On a CPU a sentence of more than two pieces' states is decoded a piece at a time. A one-pass
# decode's buffers grow with the sentence (the decoder's rows, the spectrum, the ISTFT frames:
# +132 MB of peak RSS at 512 tokens, +38 MB in pieces of 64), and past ~200 tokens its rows
# fall out of cache: ms a token, one pass / pieces of 128, Intel Xeon, 2026-12-01: 1.12 / -
# at 128 tokens, 1.19 / 1.21 at 256, 1.30 / 1.20 at 512. On a GPU one pass is cheaper.
DECODE_PIECE_TOKENS = 128

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def select_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "metal":
        raise SopranoError("device 'metal' (Apple GPUs) is not supported by soprano-tts; "
                           "use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SopranoError(f"unknown device '{device}': use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SopranoError(f"device '{device}' requested but torch sees no CUDA GPU")
    return torch.device(device)


def select_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SopranoError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class SentenceResult:
    text: str
    prompt_ids: list[int]
    generated: Generated


class SopranoTTS:
    """Load a Soprano model once; synthesize many texts.

    ``model``: a local directory in the published layout or a hub id (default
    ``ekwek/Soprano-1.1-80M``), fetched into ``cache_dir`` unless ``download=False``.
    ``device``: auto | cpu | cuda. ``dtype``: backbone dtype (default fp32 on CPU, bf16 on
    CUDA; the decoder always computes in fp32). ``backend``: auto | torch | cpu | cuda |
    triton (``soprano.ops``). ``max_batch``: sentences generated at once (the engine's KV-cache
    slots; the server's ``--tts-inflight``). ``cuda_graphs``: replay the decode step as CUDA
    graphs on a GPU (``False`` runs it eagerly). ``threads``: CPU threads of the kernels and of
    torch, for the whole process (default ``SOPRANO_THREADS``, else the physical cores; see
    ``soprano.runtime.threads``). One engine serves every call; calls on one
    ``SopranoTTS`` must not overlap (the server drives it from one thread).
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto",
                 dtype=None, *, model_path=None, backend: str = "auto",
                 decoder_batch_size: int = 1, cache_size_mb=None, cache_dir=None,
                 download: bool = True, max_batch: int = 8, cuda_graphs: bool = True,
                 decoder_path=None, threads: int | None = None):
        try:
            self.threads = configure_threads(threads)
        except ValueError as e:
            raise SopranoError(str(e)) from None
        self.device = select_device(device)
        self.dtype = select_dtype(dtype, self.device)
        try:
            self.ops = OpTable(self.device, self.dtype, backend)
        except ValueError as e:
            raise SopranoError(str(e)) from None
        self.decoder_ops = OpTable(self.device, torch.float32, self.ops.backend)
        self.model_files = locate_files(
            resolve_model_dir(model_path or model or DEFAULT_MODEL_ID, cache_dir, download),
            decoder_path)
        self.model_dir = self.model_files.root
        self.backbone, self.decoder, self.tokenizer = load_model(
            self.model_files, self.ops, self.decoder_ops)
        self.engine = Engine(self.backbone, max_batch=max_batch, cuda_graphs=cuda_graphs)
        self.decoder_batch_size = max(1, int(decoder_batch_size))
        self.sample_rate = SAMPLE_RATE

    def sentence_runs(self, text: str, params: SamplingParams, max_new_tokens: int = 512,
                      seed=None, retries: int = 0, first: int = 0) -> list[SentenceRun]:
        """``text``'s sentences ready for the engine; sentence i draws from its own generator
        (seeded from ``seed`` and ``first + i``)."""
        return [SentenceRun(s, prompt_ids(self.tokenizer, s), params, max_new_tokens,
                            self.engine.generator(sentence_seed(seed, first + i)), retries)
                for i, s in enumerate(textproc.prepare_sentences(text))]

    def generate(self, texts: list[str], top_p=0.95, temperature=0.0, repetition_penalty=1.2,
                 retries=0, max_new_tokens=512, seed=None,
                 progress=None) -> list[list[SentenceResult]]:
        """Tokens and hidden states for every sentence of every text (no audio).

        ``progress(done, total, tokens)``, if given, is called as each sentence finishes:
        sentences done and in all, tokens generated so far."""
        params = SamplingParams(temperature, top_p, repetition_penalty)
        per_text, first = [], 0
        for t in texts:
            per_text.append(self.sentence_runs(t, params, max_new_tokens, seed, retries, first))
            first += len(per_text[-1])
        runs = [r for text_runs in per_text for r in text_runs]
        done = tokens = 0
        for run, _ in drive(self.engine, runs):
            if run.finish_reason is not None and progress is not None:
                done, tokens = done + 1, tokens + len(run.tokens)
                progress(done, len(runs), tokens)
        H = self.backbone.cfg.hidden_size
        return [[SentenceResult(r.text, r.prompt, r.generated(H)) for r in text_runs]
                for text_runs in per_text]

    def decode_hidden(self, hidden: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """One sentence's hidden states [N, H] -> float32 audio at 32 kHz (empty below 2
        states); ``speed`` changes the tempo, not the pitch."""
        if len(hidden) < 2:
            return np.zeros(0, np.float32)
        h = torch.from_numpy(hidden).to(self.device)
        if speed == 1.0 and self.device.type == "cpu" and len(h) > 2 * DECODE_PIECE_TOKENS:
            return self._decode_in_pieces(h)
        return self.decoder(h.T[None], speed)[0].cpu().numpy()

    def _decode_in_pieces(self, hidden: torch.Tensor) -> np.ndarray:
        """A long sentence through the stateful decoder in pieces of DECODE_PIECE_TOKENS: the
        one-shot decode's audio (within 1e-4, fp32) with buffers the size of a piece."""
        stream = StreamingDecoder(self.decoder, DECODE_PIECE_TOKENS, DECODE_PIECE_TOKENS)
        chunks = [c for c in map(stream.push, hidden) if c is not None]
        return np.concatenate(chunks + [stream.finish()])

    def infer_batch(self, texts: list[str], out_dir=None, top_p=0.95, temperature=0.0,
                    repetition_penalty=1.2, retries=0, max_new_tokens=512,
                    seed=None, speed: float = 1.0, progress=None) -> list[np.ndarray]:
        """One float32 array (32 kHz) per text; with ``out_dir``, also ``{i}.wav`` files.

        ``speed``: tempo factor (2 = half the duration), pitch unchanged. ``progress``: as
        ``generate``'s.
        """
        sentences = self.generate(texts, top_p, temperature, repetition_penalty, retries,
                                  max_new_tokens, seed, progress)
        audios = []
        for sents in sentences:
            audios.append(joined([self.decode_hidden(s.generated.hidden, speed) for s in sents]))
        if out_dir:
            write_numbered(out_dir, audios, self.sample_rate)
        return audios

    def infer(self, text: str, out_path=None, top_p=0.95, temperature=0.0,
              repetition_penalty=1.2, retries=0, max_new_tokens=512, seed=None,
              speed: float = 1.0) -> np.ndarray:
        """float32 audio [samples] at 32 kHz; with ``out_path``, also a 16-bit WAV file."""
        audio = self.infer_batch([text], None, top_p, temperature, repetition_penalty, retries,
                                 max_new_tokens, seed, speed)[0]
        if out_path:
            write_wav(out_path, audio, self.sample_rate)
        return audio

    def infer_stream(self, text: str, chunk_size: int = 1, top_p=0.95, temperature=0.0,
                     repetition_penalty=1.2, max_new_tokens=512, seed=None,
                     retries=0) -> Iterator[np.ndarray]:
        """float32 chunks as they are decoded; their concatenation equals ``infer(text)``.

        ``chunk_size``: tokens per chunk (2048 samples = 64 ms each); the first chunk comes
        as soon as its states are in and holds what is final then (512 samples short for
        Soprano-1.1, 1024 for Soprano-80M), the last one the rest. ``retries``: as ``infer``
        until a sentence's first chunk is out, then a flagged sentence is cut instead.
        """
        params = SamplingParams(temperature, top_p, repetition_penalty)
        for run in self.sentence_runs(text, params, max_new_tokens, seed, retries):
            run.stream = StreamingDecoder(self.decoder, chunk_size)
            for _, pieces in drive(self.engine, [run]):
                for chunk in decode_pieces(self.decoder, pieces):
                    if chunk.size:
                        yield chunk
