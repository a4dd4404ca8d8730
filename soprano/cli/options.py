"""Options shared by the commands, environment-variable defaults and validated value types.

Every option can also come from ``SOPRANO_<OPTION>`` (upper case, dashes to underscores:
``--tts-inflight`` -> ``SOPRANO_TTS_INFLIGHT``); precedence is flag > environment > default.
An environment value is parsed and validated like the flag, and a bad one is reported naming
the variable. Option groups used by several commands (model, sampling, logging) are defined
once here, so a new command is one new module.
"""
import argparse
import math
import os
import sys

# soprano.audio.SAMPLE_RATE, repeated so that parsers build without numpy (man pages at build time)
MODEL_SAMPLE_RATE = 32000
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2. An argument no option
    takes is reported by the command's parser (``soprano-tts serve: error: ...``): argparse
    would leave it to the top-level one, which names no command."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)}\n")
        return parsed


def env_name(dest: str) -> str:
    return "SOPRANO_" + dest.upper()


def int_range(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < lo or (hi is not None and value > hi):
            span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be in {span}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def float_range(lo: float, hi: float | None = None, lo_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        below = value <= lo if lo_open else value < lo
        if not math.isfinite(value) or below or (hi is not None and value > hi):
            left = "(" if lo_open else "["
            span = f"{left}{lo}, {hi}]" if hi is not None else (f"> {lo}" if lo_open
                                                                else f">= {lo}")
            raise argparse.ArgumentTypeError(f"must be in {span}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def add_option(parser, *flags, **kwargs):
    """``parser.add_argument`` whose default may come from the option's environment variable.

    The variable is recorded as ``action.env_var`` (the man pages' ENVIRONMENT sections list it)
    and shown at the end of the option's help, ``[env: SOPRANO_X]``, as click's ``show_envvar``.
    """
    action = parser.add_argument(*flags, **kwargs)
    if action.dest in ("help", "version"):
        return action
    name = env_name(action.dest)
    action.env_var = name
    if action.help != argparse.SUPPRESS:
        action.help = f"{action.help} [env: {name}]" if action.help else f"[env: {name}]"
    raw = os.environ.get(name)
    if raw is None:
        return action
    try:
        if action.nargs == 0:  # store_true / store_false / BooleanOptionalAction
            word = raw.strip().lower()
            if word not in TRUE_WORDS | FALSE_WORDS:
                raise argparse.ArgumentTypeError(
                    f"expected one of {sorted(TRUE_WORDS | FALSE_WORDS)}, got '{raw}'")
            value = word in TRUE_WORDS
            if isinstance(action, argparse._StoreFalseAction):
                value = not value
        else:
            value = action.type(raw) if action.type else raw
            if action.choices is not None and value not in action.choices:
                raise argparse.ArgumentTypeError(
                    f"invalid choice '{raw}' (choose from {', '.join(map(str, action.choices))})")
    except argparse.ArgumentTypeError as e:
        print(f"soprano-tts: error: environment variable {name} (for {flags[-1]}): {e}",
              file=sys.stderr)
        raise SystemExit(2) from None
    action.default = value
    if action.required:
        action.required = False
    return action


def add_model_options(p):
    add_option(p, "-m", "--model-path", default=None, metavar="PATH",
               help="local model directory, or a backbone .gguf file (default: the cached or "
                    "downloaded --model-id)")
    add_option(p, "--decoder-path", default=None, metavar="FILE",
               help="the decoder for a GGUF backbone: a decoder GGUF (llama.cpp's mmproj) or "
                    "the published decoder.pth (default: the one beside the backbone)")
    add_option(p, "--model-id", default="ekwek/Soprano-1.1-80M", metavar="ID",
               help="Hugging Face model id (default: %(default)s)")
    add_option(p, "-d", "--device", default="auto", choices=["auto", "cpu", "cuda", "metal"],
               help="auto = cuda when available, else cpu; metal is accepted for Soprano-RS "
                    "compatibility and refused: no Apple GPU support (default: %(default)s)")
    add_option(p, "--backend", default="auto", choices=["auto", "torch", "cpu", "cuda", "triton"],
               help="kernels for every op: auto = the fastest built here for the device; a "
                    "named one falls back to torch for ops it lacks; `soprano-tts env` shows "
                    "the table (default: %(default)s)")
    add_option(p, "--threads", type=int_range(1, 4096), default=None, metavar="N",
               help="CPU threads of the kernels and of torch (default: the physical cores "
                    "this process may use)")
    add_option(p, "-c", "--cache-dir", default=None, metavar="PATH",
               help="model cache directory (default: the Hugging Face hub cache)")
    add_option(p, "--download", action=argparse.BooleanOptionalAction, default=True,
               help="download the model when it is not cached (default: on)")


def add_sampling_options(p):
    add_option(p, "-T", "--temperature", type=float_range(0.0), default=0.0,
               help="sampling temperature, 0 = greedy (default: %(default)s)")
    add_option(p, "--top-p", type=float_range(0.0, 1.0, lo_open=True), default=0.95,
               help="nucleus sampling mass in (0, 1] (default: %(default)s)")
    add_option(p, "--repetition-penalty", type=float_range(0.0, lo_open=True), default=1.2,
               help="penalty for already-seen tokens, > 0 (default: %(default)s)")
    add_option(p, "--hallucination-retries", type=int_range(0, 10), default=0, metavar="N",
               help="regenerate a sentence whose hidden states get stuck (upstream's "
                    "hallucination detector) up to N times; a streamed sentence flagged after "
                    "its first audio is cut there instead (default: %(default)s)")


def add_log_options(p):
    add_option(p, "-v", "--verbose", action="store_true",
               help="debug logging and full tracebacks on errors")
    add_option(p, "--log", default="info", choices=["debug", "info", "warning", "error"],
               help="log level (default: %(default)s)")


def add_listing_options(p):
    """Options of the commands that report on the cache (list, cache)."""
    add_option(p, "-c", "--cache-dir", default=None, metavar="PATH",
               help="cache directory (default: the Hugging Face hub cache)")
    add_option(p, "--json", action="store_true", help="print JSON instead of a table")
    add_log_options(p)
