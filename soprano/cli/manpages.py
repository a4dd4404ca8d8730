"""Man pages for ``soprano-tts`` and each command, generated from the argparse parser.

Run at build time by CMake (``python -m soprano.cli.manpages OUTDIR VERSION``) with only the
build requirements installed, so nothing here or in the command modules may import torch at
module level. Defaults from ``SOPRANO_*`` variables are ignored: a page documents the built-in
defaults.
"""
import os
import sys
from pathlib import Path


def render(version: str) -> dict[str, str]:
    """{file name: roff text} for soprano-tts.1 and soprano-tts-COMMAND.1."""
    from argparse_manpage.manpage import Manpage

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SOPRANO_")}
    try:
        from . import build_parser
        parser = build_parser(version)
    finally:
        os.environ.update(saved)
    pages = {"soprano-tts.1": str(Manpage(parser, _data={"project_name": "soprano-tts",
                                                         "version": version}))}
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        pages[f"soprano-tts-{name}.1"] = str(Manpage(
            command, _data={"project_name": "soprano-tts", "version": version,
                            "prog": f"soprano-tts {name}"}))
    return pages


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m soprano.cli.manpages OUTDIR VERSION", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render(argv[1]).items():
        (out / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
