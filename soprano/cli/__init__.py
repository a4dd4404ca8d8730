"""``soprano-tts`` command line: one module per command, each adding its own subparser.

User errors (bad files, no model, bad values) print one line and exit 2; ``-v`` shows the
traceback. A new command is a module with ``add_parser(subparsers)`` and ``run(args)``.
"""
import argparse
import sys

from . import generate

COMMANDS = {"generate": generate}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = argparse.ArgumentParser(prog="soprano-tts",
                                     description="Fast Soprano text-to-speech engine.")
    parser.add_argument("--version", action="version", version=f"soprano-tts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    from ..errors import SopranoError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except (SopranoError, ValueError, OSError) as e:
        if getattr(args, "verbose", False):
            raise
        print(f"soprano-tts {args.command}: error: {e}", file=sys.stderr)
        return 2
