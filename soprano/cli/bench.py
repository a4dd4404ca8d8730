"""``soprano-tts bench``: this machine's end-to-end speed per weight type, beside upstream
soprano-tts and llama.cpp (``soprano.bench`` does the work; ``bench/e2e.py`` is this command).

Parsing stays import-light (man pages are built from it).
"""
import argparse

from .convert import OUTTYPES
from .options import add_log_options, add_option, int_range

DEFAULT_TYPES = ("bf16", "q8_0", "q4_k")


def add_parser(sub):
    p = sub.add_parser(
        "bench", help="measure this machine's speed per weight type, beside upstream and "
                      "llama.cpp",
        description="Generate a real-shape checkpoint (random weights), convert it to each "
                    "weight type, and time every engine in a process of its own, runs "
                    "interleaved: load time, first audio of a streamed sentence, x real time, "
                    "the prefill, the decode step and the decoder apart, peak RSS; upstream "
                    "soprano-tts 0.2.0 when installed aside, and llama.cpp's decode step over "
                    "each GGUF when llama-cpp-python is installed. Each step is also given over "
                    "its bandwidth floor (the time its threads take to read a buffer of its "
                    "matrix bytes, same run).")
    add_option(p, "--types", nargs="+", default=list(DEFAULT_TYPES), choices=OUTTYPES,
               help="weight types, one row each: bf16 is the checkpoint as published "
                    "(safetensors, bf16 backbone), the others its GGUF conversions "
                    "(default: %(default)s)")
    add_option(p, "--tokens", type=int_range(8, 4096), default=128,
               help="tokens generated per run, fixed (default: %(default)s)")
    add_option(p, "--runs", type=int_range(1, 1000), default=5,
               help="runs per engine; min and median are reported (default: %(default)s)")
    add_option(p, "-d", "--device", default="cpu", choices=["cpu", "cuda"],
               help="(default: %(default)s)")
    add_option(p, "--threads", type=int_range(1, 4096), default=None, metavar="N",
               help="CPU threads of every engine (default: the physical cores)")
    add_option(p, "--checkpoint", metavar="DIR",
               help="a real-shape model directory in the published layout (default: generate "
                    "one)")
    add_option(p, "--work-dir", metavar="DIR",
               help="where the checkpoint and its conversions are written, and reused from "
                    "(default: a new temporary directory)")
    add_option(p, "--gguf-bf16", action="store_true",
               help="run the bf16 row from a BF16 GGUF rather than the safetensors")
    add_option(p, "--upstream-dir", metavar="DIR",
               help="where upstream soprano-tts 0.2.0 is installed aside, e.g. by `pip install "
                    "--no-deps --target .upstream soprano-tts==0.2.0` (default: ./.upstream)")
    add_option(p, "--upstream", action=argparse.BooleanOptionalAction, default=True,
               help="run upstream's row when it is installed (default: on)")
    add_option(p, "--lean", action=argparse.BooleanOptionalAction, default=True,
               help="also run each weight type on the torch-free CPU engine (soprano.lean), "
                    "a row each (default: on)")
    add_option(p, "--llama-cpp", action=argparse.BooleanOptionalAction, default=True,
               help="time llama.cpp's decode of each GGUF when llama-cpp-python is installed "
                    "(default: on)")
    add_option(p, "--markdown", action="store_true", help="print the table as markdown")
    add_option(p, "--json", action="store_true",
               help="print every figure (each measure's min, median and max) as JSON")
    add_log_options(p)
    return p


def run(args) -> int:
    import json
    import logging

    from .. import bench
    if not (args.verbose or args.log == "debug"):
        logging.getLogger("gguf").setLevel(logging.WARNING)  # the converter's per-file lines
    summary = bench.run(args)
    print(json.dumps(summary, indent=2) if args.json else bench.report(summary, args.markdown))
    return 0
