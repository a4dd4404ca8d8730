"""``soprano-tts testmodel DIR``: write a random-weight model, to try everything offline.

The published model needs the Hugging Face hub. A model with the real shapes and random weights
runs the whole pipeline (``generate -m DIR``, ``serve -m DIR``) at the real speed with no
download; it speaks noise, not words. Also ``python -m soprano.testing DIR``.
"""
# keep the preset names here too: building the parser (man pages) must not import torch
PRESETS = ("real", "real-80m", "tiny")


def add_parser(sub):
    p = sub.add_parser("testmodel", help="write a random-weight model to try everything offline",
                       description="Write a model with Soprano's real shapes and random weights "
                                   "into DIR (no download needed). It runs generate and serve "
                                   "at the real speed, but speaks noise, not words.")
    p.add_argument("dir", metavar="DIR", help="folder to write the model into")
    p.add_argument("--preset", default="real", choices=PRESETS,
                   help="real = Soprano-1.1-80M's shapes, real-80m = Soprano-80M's (D=512 "
                        "decoder), tiny = 2 layers for fast tests (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weights' seed (default: %(default)s)")
    return p


def run(args) -> int:
    import sys
    print(f"writing a random-weight '{args.preset}' model to {args.dir} ...", file=sys.stderr,
          flush=True)  # torch's import and the real preset's 150 MB take a few seconds
    from ..testing import write_checkpoint
    path = write_checkpoint(args.dir, args.preset, seed=args.seed)
    print(f"wrote a random-weight '{args.preset}' model to {path} (it speaks noise); try: "
          f"soprano-tts generate -m {path} --text \"Hello world.\" -o noise.wav")
    return 0
