"""``soprano-tts`` command line: one module per command, each adding its own subparser.

A command module has ``add_parser(subparsers)`` (options from ``options.py``'s shared groups
plus its own) and ``run(args) -> int``. User errors (bad files, no model, bad values) print one
line and exit 2; ``-v``/``--log debug`` shows the traceback.
"""
import logging
import sys

from . import bench, cache, convert, download, env, generate, list_models, serve, testmodel
from .options import Parser

COMMANDS = {"generate": generate, "serve": serve, "download": download, "list": list_models,
            "cache": cache, "convert": convert, "env": env, "bench": bench,
            "testmodel": testmodel}


def build_parser(version: str | None = None) -> Parser:
    if version is None:
        from .. import __version__ as version
    parser = Parser(prog="soprano-tts", description="Fast Soprano text-to-speech engine.")
    parser.add_argument("--version", action="version", version=f"soprano-tts {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    from ..errors import SopranoError
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "verbose", False) or getattr(args, "log", "info") == "debug"
    logging.basicConfig(level=logging.DEBUG if debug else
                        getattr(logging, getattr(args, "log", "info").upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command].run(args) or 0
    except (SopranoError, ValueError, OSError) as e:
        if debug:
            raise
        print(f"soprano-tts {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"soprano-tts {args.command}: interrupted", file=sys.stderr)
        return 130
