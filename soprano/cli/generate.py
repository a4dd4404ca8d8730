"""``soprano-tts generate``: synthesize text to a WAV file."""
import time


def add_parser(sub):
    p = sub.add_parser("generate", help="synthesize text to WAV files",
                       description="Synthesize text to a 16-bit WAV file.")
    p.add_argument("-t", "--text", required=True, help="text to speak")
    p.add_argument("-o", "--output", default="sample.wav", help="WAV file to write")
    p.add_argument("-m", "--model-path", default=None,
                   help="local model directory (default: download --model-id)")
    p.add_argument("--model-id", default="ekwek/Soprano-1.1-80M", help="hub model id")
    p.add_argument("-d", "--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-T", "--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", type=float, default=1.2)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=512, help="per sentence")
    p.add_argument("--cache-dir", default=None, help="hub cache directory")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args) -> int:
    from ..api import SopranoTTS
    tts = SopranoTTS(args.model_path or args.model_id, device=args.device,
                     cache_dir=args.cache_dir)
    start = time.perf_counter()
    audio = tts.infer(args.text, out_path=args.output, top_p=args.top_p,
                      temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                      max_new_tokens=args.max_new_tokens, seed=args.seed)
    elapsed = time.perf_counter() - start
    seconds = len(audio) / tts.sample_rate
    print(f"wrote {args.output}: {seconds:.2f} s of audio in {elapsed:.2f} s "
          f"({seconds / max(elapsed, 1e-9):.2f}x real time)")
    return 0
