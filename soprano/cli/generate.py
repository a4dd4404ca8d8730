"""``soprano-tts generate``: synthesize text to WAV files."""
import time

from .options import (add_log_options, add_model_options, add_option, add_sampling_options,
                      int_range)


def add_parser(sub):
    p = sub.add_parser("generate", help="synthesize text to WAV files",
                       description="Synthesize text to a 16-bit WAV file.")
    add_option(p, "-t", "--text", required=True, help="text to speak")
    add_option(p, "-o", "--output", default="sample.wav", help="WAV file to write")
    add_model_options(p)
    add_sampling_options(p)
    add_option(p, "--seed", type=int, default=None, help="random seed for sampling")
    add_option(p, "--max-new-tokens", type=int_range(1, 512), default=512,
               help="generated tokens per sentence at most (default: %(default)s)")
    add_log_options(p)
    return p


def run(args) -> int:
    from ..api import SopranoTTS
    tts = SopranoTTS(args.model_path or args.model_id, device=args.device,
                     cache_dir=args.cache_dir, download=args.download)
    start = time.perf_counter()
    audio = tts.infer(args.text, out_path=args.output, top_p=args.top_p,
                      temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                      max_new_tokens=args.max_new_tokens, seed=args.seed)
    elapsed = time.perf_counter() - start
    seconds = len(audio) / tts.sample_rate
    print(f"wrote {args.output}: {seconds:.2f} s of audio in {elapsed:.2f} s "
          f"({seconds / max(elapsed, 1e-9):.2f}x real time)")
    return 0
