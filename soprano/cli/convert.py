"""``soprano-tts convert``: write a model as llama.cpp's GGUF files (backbone + decoder mmproj).

Parsing stays import-light (man pages are built from it); the writer, numpy and torch load only
when the command runs.
"""
from ..gguf.tokenizer import GGUF_PRE
from .options import add_log_options, add_option

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m")
PRE_TOKENIZERS = ("default", "soprano")


def add_parser(sub):
    p = sub.add_parser("convert", help="write a model as GGUF files (llama.cpp's layout)",
                       description="Write a model in the published layout as two GGUF files, "
                                   "as llama.cpp's converters lay them out: the Qwen3 backbone "
                                   "(OUT) and the Vocos decoder (mmproj-OUT beside it).")
    add_option(p, "-m", "--model-path", required=True, metavar="DIR",
               help="model directory in the published layout (config.json, "
                    "model.safetensors, tokenizer.json, decoder.pth)")
    add_option(p, "--outtype", default="f16", choices=OUTTYPES,
               help="type of the weight matrices (the decoder's at q8_0 at most); q4_k_m and "
                    "q5_k_m put output, and attn_v and ffn_down in a third of the layers, in "
                    "q6_k, as llama-quantize does; norms and biases stay F32 and depthwise "
                    "convolutions F16, as llama.cpp writes them (default: %(default)s)")
    add_option(p, "-o", "--outfile", required=True, metavar="OUT.gguf",
               help="backbone file to write; the decoder goes to mmproj-OUT.gguf beside it")
    add_option(p, "--pre-tokenizer", default=GGUF_PRE, choices=PRE_TOKENIZERS,
               help="tokenizer.ggml.pre to record: default loads in every llama.cpp; soprano "
                    "is what llama.cpp's Soprano pull request writes and needs "
                    "(default: %(default)s)")
    add_option(p, "--progress", action="store_true", default=None,
               help="draw a progress bar (default: when stderr is a terminal)")
    add_log_options(p)
    return p


def run(args) -> int:
    import logging
    import sys
    import time

    from tqdm import tqdm

    from ..gguf.writer import convert
    from .progress import human_size
    if not (args.verbose or args.log == "debug"):
        logging.getLogger("gguf").setLevel(logging.WARNING)  # its per-file size lines
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = tqdm(total=None, unit="tensor", desc=f"converting to {args.outtype}",
               file=sys.stderr, disable=not show, dynamic_ncols=True)

    def progress(done, total, name):
        bar.total = total
        bar.set_postfix_str(name, refresh=False)
        bar.update(done - bar.n)

    start = time.perf_counter()
    try:
        out = convert(args.model_path, args.outfile, args.outtype, progress,
                      args.pre_tokenizer)
    finally:
        bar.close()
    sizes = ", ".join(f"{p} ({human_size(p.stat().st_size)})" for p in (out.backbone,
                                                                        out.decoder))
    print(f"wrote {out.tensors} tensors as {args.outtype} in {time.perf_counter() - start:.1f} "
          f"s: {sizes}; run it with soprano-tts generate -m {out.backbone}")
    return 0
