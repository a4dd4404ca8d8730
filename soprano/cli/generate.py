"""``soprano-tts generate``: synthesize text to WAV files.

Options and defaults are the Soprano-RS server's. Choices worth knowing:

- ``--workers N`` utterances go through the engine together, in one batched call, rather than
  in N threads. A decode step streams all the weights whatever the batch size, so batching is
  nearly free per row: 8 one-sentence utterances of 40 tokens (real-shape model, CPU, 2 shared
  cores) took 3.5-4.5 s as one batch, 5.8 s in batches of 4, 16-56 s one at a time, and 14 s in
  two threads with an engine each, which only fought over the same cores. Each batch's files
  are written as soon as it finishes, so an interrupted run keeps them.
- ``--speed`` changes the tempo inside the decoder (``VocosDecoder(hidden, speed)``), so the pitch
  stays; ``--sample-rate`` really resamples (soxr) after synthesis, and peak normalization comes
  last, so the written file's peak is exactly the normalization target.
- ``--synthetic`` writes a deterministic chirp (``soprano.synthetic``) without importing torch or
  loading a model: the file/rate/tempo path can be checked anywhere, in well under a second.
- Pairs that exclude each other (``--text``/``--file``, ``-o``/``--output-dir``,
  ``--synthetic``/``--use-model``) keep flag > environment > default: a flag beats the other
  option's ``SOPRANO_*`` variable, which argparse alone cannot tell from a flag.
- Progress (``soprano.cli.progress``) goes to stderr, only when it is a terminal unless
  ``--progress`` forces it: the model's files and sizes, the load time, sentences done and
  tokens/s while synthesizing, the real-time factor at the end; with several files, a bar over
  files. ``-q/--quiet`` turns it off and beats ``--progress`` when both are flags (or both come
  from the environment); otherwise a flag beats the other one's ``SOPRANO_*`` variable, as for
  the pairs above. Loading takes 2-5 s even for a small model (importing torch is most of it),
  so it is worth a line. stdout only ever gets the ``wrote`` lines and the final summary.
- ``--engine``: on a CPU a model can run on the torch-free engine (``soprano.lean``): the same
  greedy tokens and states, audio within float rounding, without torch's import (1.3-1.7 s)
  and its ~218 MB of memory, but one sentence at a time and at speed 1 only. ``auto`` takes it
  for one file on a CPU (``--device cpu``, or ``auto`` on a machine with no NVIDIA driver) at
  speed 1 with the default backend, where the start-up is most of the run; a batch of files
  goes through the torch engine's batches. Sampled audio differs between the engines for one
  seed (numpy's generator against torch's), each being the same on every run.
"""
import argparse
import importlib.util
import logging
import os
import sys
import time

from ..errors import SopranoError
from ..speed import SPEED_RANGE
from .options import (MODEL_SAMPLE_RATE, add_log_options, add_model_options, add_option,
                      add_sampling_options, env_name, float_range, int_range)
from .progress import Progress, model_files

log = logging.getLogger(__name__)
DEFAULT_OUTPUT = "sample.wav"


def _noting(base):
    """``base`` argparse action that also adds its dest to ``namespace.given`` (see ``_pick``)."""
    class Noting(base):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            namespace.given = namespace.given | {self.dest}
    return Noting


STORE, FLAG = _noting(argparse._StoreAction), _noting(argparse._StoreTrueAction)
BOOL = _noting(argparse.BooleanOptionalAction)


def add_parser(sub):
    p = sub.add_parser("generate", help="synthesize text to WAV files",
                       description="Synthesize text to 16-bit mono WAV files.")
    p.set_defaults(given=frozenset())
    src = p.add_mutually_exclusive_group()
    add_option(src, "-t", "--text", action=STORE, help="text to speak (one utterance)")
    add_option(src, "-f", "--file", action=STORE, metavar="FILE",
               help="text file, one utterance per line (blank lines skipped; - = stdin)")
    out = p.add_mutually_exclusive_group()
    add_option(out, "-o", "--output", action=STORE, metavar="PATH",
               help=f"WAV file to write (default: {DEFAULT_OUTPUT}); with several files, "
                    "the directory for them (default: the current directory)")
    add_option(out, "--output-dir", action=STORE, metavar="DIR",
               help="directory for numbered files 001.wav, 002.wav, ... "
                    "(with --variations: 001_1.wav, 001_2.wav, ...)")
    model = p.add_mutually_exclusive_group()
    add_option(model, "--use-model", action=FLAG,
               help="use the model (the default; accepted for Soprano-RS compatibility)")
    add_option(model, "--synthetic", action=FLAG,
               help="write a deterministic test chirp per utterance; no model is loaded")
    add_model_options(p)
    add_option(p, "--sample-rate", type=int_range(8000, 192000), default=MODEL_SAMPLE_RATE,
               metavar="HZ", help="rate of the files; others than the model's 32000 are "
                                  "resampled (default: %(default)s)")
    add_sampling_options(p)
    add_option(p, "--speed", type=float_range(*SPEED_RANGE), default=1.0,
               help=f"tempo factor in [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}], pitch unchanged "
                    "(default: %(default)s)")
    add_option(p, "--engine", default="auto", choices=["auto", "torch", "lean"],
               help="torch: the batched engine, any device; lean: the torch-free CPU engine, "
                    "speed 1, starting sooner in about half the memory; auto: lean for one file "
                    "on a CPU at speed 1, else torch (default: %(default)s)")
    add_option(p, "-w", "--workers", type=int_range(1, 32), default=2, metavar="N",
               help="utterances synthesized together in one batch (default: %(default)s)")
    add_option(p, "--variations", type=int_range(1, 1000), default=1, metavar="N",
               help="files per text, each sampled with its own seed; they differ only with "
                    "--temperature above 0 (default: %(default)s)")
    add_option(p, "--seed", type=int, default=None,
               help="sampling seed: the same command writes the same files; variation k "
                    "uses SEED+k-1")
    add_option(p, "--max-new-tokens", type=int_range(1, 512), default=512, metavar="N",
               help="generated tokens per sentence at most (default: %(default)s)")
    add_option(p, "--normalize", action=argparse.BooleanOptionalAction, default=True,
               help="peak-normalize each file as a whole (default: on)")
    add_option(p, "--progress", action=BOOL, default=None,
               help="progress on stderr: model files and load time, sentences and tokens/s, "
                    "real-time factor, a bar for several files; --progress shows it even when "
                    "stderr is not a terminal, --no-progress never (default: on a terminal)")
    add_option(p, "-q", "--quiet", action=FLAG,
               help="no progress on stderr, even with --progress; warnings and errors still "
                    "show, stdout is unchanged")
    add_log_options(p)
    return p


def _pick(args, a: str, b: str) -> str | None:
    """Which of two exclusive options applies: the one given as a flag, else the one set in the
    environment, else None. Both as flags is refused by argparse already."""
    for dest in (a, b):
        if dest in args.given:
            return dest
    set_ = [dest for dest in (a, b) if getattr(args, dest) not in (None, False)]
    if len(set_) == 2:
        raise SopranoError(f"environment variables {env_name(a)} and {env_name(b)} exclude "
                           "each other: unset one or give one of them as a flag")
    return set_[0] if set_ else None


def _show_progress(args) -> bool:
    """-q beats --progress when both are flags or both come from the environment; else the one
    given as a flag wins; with neither, progress shows when stderr is a terminal."""
    if args.quiet and ("quiet" in args.given or "progress" not in args.given):
        return False
    return sys.stderr.isatty() if args.progress is None else args.progress


def _read_texts(args) -> list[str]:
    source = _pick(args, "text", "file")
    if source is None:
        raise SopranoError("no text: give -t/--text TEXT or -f/--file FILE")
    if source == "text":
        texts = [args.text.strip()] if args.text.strip() else []
    elif args.file == "-":
        texts = [line.strip() for line in sys.stdin if line.strip()]
    else:
        with open(args.file, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    if not texts:
        raise SopranoError(f"no text to speak in {'--text' if source == 'text' else args.file}")
    return texts


def _output_paths(args, n_texts: int) -> list[list[str]]:
    """``paths[variation][text]``: one file for one output, numbered files in a folder else."""
    where = _pick(args, "output", "output_dir")
    n_files = n_texts * args.variations
    if where != "output_dir" and n_files == 1:
        return [[args.output or DEFAULT_OUTPUT]]
    folder = getattr(args, where) if where else "."
    if where == "output" and folder.lower().endswith(".wav"):
        raise SopranoError(f"-o {folder} names one file but {n_files} files will be written: "
                           "give a directory (-o DIR or --output-dir DIR)")
    width = max(3, len(str(n_texts)))

    def name(i: int, v: int) -> str:
        tail = f"_{v + 1}" if args.variations > 1 else ""
        return os.path.join(folder, f"{i + 1:0{width}d}{tail}.wav")
    return [[name(i, v) for i in range(n_texts)] for v in range(args.variations)]


def _on_cpu(device: str) -> bool:
    """Whether ``device`` means the CPU, without importing torch: ``auto`` does where no NVIDIA
    driver is loaded (torch finds no CUDA GPU without one)."""
    return device == "cpu" or (device == "auto"
                               and not os.path.exists("/proc/driver/nvidia/version"))


def _has_native() -> bool:
    """Whether ``soprano._C`` is there to import (the torch-free engine is its calls; the torch
    engine falls back to torch's ops without it)."""
    return importlib.util.find_spec("soprano._C") is not None


def _engine(args, n_files: int) -> str:
    """``--engine``, with ``auto`` resolved (see the module's docstring)."""
    if args.engine == "lean":
        if not (args.device in ("auto", "cpu") and args.speed == 1.0
                and args.backend == "auto"):
            raise SopranoError("--engine lean runs on the CPU at --speed 1 with --backend auto; "
                               "use --engine torch for another device, speed or backend")
        if not _has_native():
            raise SopranoError("--engine lean needs the native extension soprano._C, which is "
                               "not built here; use --engine torch")
        return "lean"
    if args.engine == "torch":
        return "torch"
    return ("lean" if _on_cpu(args.device) and args.speed == 1.0 and args.backend == "auto"
            and n_files == 1 and _has_native() else "torch")


def _synthesizer(args, synthetic: bool, progress: Progress, n_files: int):
    """``synth(texts, seed, on_sentence) -> [float32 audio at 32 kHz]``: the model's, or the test
    chirp (which ignores ``on_sentence``)."""
    if synthetic:
        from ..synthetic import synthesize
        return lambda texts, seed, on_sentence: [synthesize(t, args.speed) for t in texts]
    start = time.perf_counter()
    from ..model.locate import locate_files
    from ..model.resolve import resolve_model_dir
    # resolved here (a cached snapshot, or a download) so that the files can be named and sized
    files = locate_files(resolve_model_dir(args.model_path or args.model_id, args.cache_dir,
                                           args.download), args.decoder_path)
    engine = _engine(args, n_files)
    progress.line("loading the torch-free engine" if engine == "lean"
                  else "loading torch and the model code")
    if engine == "lean":
        from ..lean import LeanTTS
    else:
        from ..api import SopranoTTS
    imported = time.perf_counter()
    progress.line(f"loading {files.root} ({model_files(files.root, files.names())})")
    loading = time.perf_counter()
    if engine == "lean":
        tts = LeanTTS(files.backbone if files.is_gguf else files.root,
                      decoder_path=files.decoder, threads=args.threads)
        where = "cpu without torch"
    else:
        # enough KV-cache slots that a batch of --workers one-sentence utterances runs as one
        tts = SopranoTTS(files.backbone if files.is_gguf else files.root, device=args.device,
                         cache_dir=args.cache_dir, download=args.download,
                         backend=args.backend, max_batch=max(8, args.workers),
                         decoder_path=files.decoder, threads=args.threads)
        where = str(tts.device)
    done = time.perf_counter()
    progress.line(f"loaded in {done - start:.2f} s on {where} (imports "
                  f"{imported - start:.2f} s, model {done - loading:.2f} s)")
    log.debug("model %s loaded (%s engine) in %.2f s", files.root, engine, done - start)

    def synth(texts, seed, on_sentence):
        return tts.infer_batch(texts, top_p=args.top_p, temperature=args.temperature,
                               repetition_penalty=args.repetition_penalty,
                               retries=args.hallucination_retries,
                               max_new_tokens=args.max_new_tokens, seed=seed, speed=args.speed,
                               progress=on_sentence)
    return synth


def _write(path: str, audio, args) -> float:
    """Resample, write ``path`` (creating its folder); returns the file's seconds of audio."""
    from ..audio import SAMPLE_RATE, resample, write_wav
    audio = resample(audio, SAMPLE_RATE, args.sample_rate)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_wav(path, audio, args.sample_rate, normalize=args.normalize)
    return len(audio) / args.sample_rate


def run(args) -> int:
    texts = _read_texts(args)
    paths = _output_paths(args, len(texts))
    synthetic = _pick(args, "synthetic", "use_model") == "synthetic"
    if args.variations > 1 and synthetic:
        log.warning("--variations %d with --synthetic: every variation is the same chirp",
                    args.variations)
    elif args.variations > 1 and args.temperature == 0:
        log.warning("--variations %d with temperature 0 (greedy decoding): every variation is "
                    "the same; set -T/--temperature above 0 for different ones", args.variations)
    progress = Progress(_show_progress(args), sentences=not synthetic)
    n_files = len(texts) * args.variations
    synth = _synthesizer(args, synthetic, progress, n_files)
    start, total = time.perf_counter(), 0.0
    with progress.file_bar(n_files) as bar:
        for v, files in enumerate(paths):
            seed = None if args.seed is None else args.seed + v
            for lo in range(0, len(texts), args.workers):
                audios = progress.batch(synth, texts[lo:lo + args.workers], seed)
                for path, audio in zip(files[lo:lo + args.workers], audios):
                    seconds = _write(path, audio, args)
                    total += seconds
                    bar.write(f"wrote {path}: {seconds:.2f} s of audio")
                    bar.update()
    elapsed = time.perf_counter() - start
    progress.summary()
    print(f"{n_files} file{'s' if n_files > 1 else ''}, {total:.2f} s of audio in "
          f"{elapsed:.2f} s ({total / max(elapsed, 1e-9):.2f}x real time)")
    return 0
