"""Man pages for ``soprano-tts`` and each command, generated from the argparse parser.

Run at build time by CMake (``python -m soprano.cli.manpages OUTDIR VERSION``) with only the
build requirements installed, so nothing here or in the command modules may import torch at
module level. Defaults from ``SOPRANO_*`` variables are ignored: a page documents the built-in
defaults.

argparse-manpage writes the body (synopsis, description, options); the header, the NAME line,
ENVIRONMENT and SEE ALSO are ours. Its header would read "Generated Python Manual" and, for
``soprano-tts generate``, put ``GENERATE`` where the section belongs; its NAME line has no
description. Each page's ENVIRONMENT section lists the ``SOPRANO_*`` variable of every option
that has one (``action.env_var``, set by ``options.add_option``); the top page lists them all,
with the commands that read each.
"""
import argparse
import os
import sys
from pathlib import Path

SECTION = "1"
MANUAL = "User Commands"
BOOLEAN_WORDS = "1, true, yes or on"
NOT_WORDS = "0, false, no or off"


def roff(text: str) -> str:
    """Escape plain text for a roff line (backslashes, and dashes as ``\\-``)."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def env_actions(parser) -> list:
    """The parser's actions that read a ``SOPRANO_*`` variable, in option order."""
    return [a for a in parser._actions if getattr(a, "env_var", None)]


def option_label(action) -> str:
    """``\\fB\\-\\-port\\fR`` for an option, ``\\fIMODEL_ID\\fR`` for a positional argument."""
    if not action.option_strings:
        return f"\\fI{roff(action.metavar or action.dest.upper())}\\fR argument"
    long = [s for s in action.option_strings if s.startswith("--")] or action.option_strings
    return f"\\fB{roff(long[0])}\\fR"


def what_it_sets(action) -> str:
    """Roff text: the option a variable stands for, and how a boolean one is spelled."""
    label = option_label(action)
    if isinstance(action, argparse.BooleanOptionalAction):
        negative = next(s for s in action.option_strings if s.startswith("--no-"))
        return (f"{label} when {BOOLEAN_WORDS}, \\fB{roff(negative)}\\fR when {NOT_WORDS}")
    if action.nargs == 0:
        return f"{label} when {BOOLEAN_WORDS} (not given when {NOT_WORDS})"
    return label


ENV_INTRO = ("Every option listed here can also be set by its environment variable; a flag on "
             "the command line beats the variable, which beats the built\\-in default. A "
             "variable's value is checked like the flag's, and a bad one exits with status 2, "
             "naming the variable.")


def environment(parser) -> list[str]:
    actions = env_actions(parser)
    if not actions:
        return [".SH ENVIRONMENT", "This command reads no \\fBSOPRANO_*\\fR variables."]
    lines = [".SH ENVIRONMENT", ENV_INTRO]
    for action in actions:
        lines += [".TP", f".B {roff(action.env_var)}", f"sets {what_it_sets(action)}"]
    return lines


def top_environment(commands: dict) -> list[str]:
    """Every variable of every command, with the option it sets in each command that has it."""
    seen: dict[str, dict[str, list[str]]] = {}  # var -> {what it sets: [commands]}
    for name, parser in commands.items():
        for action in env_actions(parser):
            seen.setdefault(action.env_var, {}).setdefault(what_it_sets(action), []).append(name)
    lines = [".SH ENVIRONMENT", ENV_INTRO + " Each command's page lists the variables it reads."]
    for var in sorted(seen):
        uses = "; ".join(f"{what} ({', '.join(names)})" for what, names in seen[var].items())
        lines += [".TP", f".B {roff(var)}", f"sets {uses}"]
    return lines


def header(page: str, date: str, version: str) -> str:
    return (f'.TH {roff(page.upper())} "{SECTION}" "{roff(date)}" '
            f'"{roff("soprano-tts " + version)}" "{MANUAL}"')


def finish(text: str, page: str, summary: str, date: str, version: str, extra: list[str]) -> str:
    """argparse-manpage's page with our header, NAME line and ``extra`` sections at the end."""
    lines = text.rstrip("\n").split("\n")
    assert lines[0].startswith(".TH ") and lines[1] == ".SH NAME", lines[:2]
    lines[0] = header(page, date, version)
    lines[2] = f"{roff(page)} \\- {roff(summary)}"
    return "\n".join(lines + [""] + extra) + "\n"


def render(version: str) -> dict[str, str]:
    """{file name: roff text} for soprano-tts.1 and soprano-tts-COMMAND.1."""
    from argparse_manpage.manpage import Manpage

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SOPRANO_")}
    try:
        from . import build_parser
        parser = build_parser(version)
    finally:
        os.environ.update(saved)
    data = {"project_name": "soprano-tts", "version": version, "manual_section": SECTION,
            "manual_title": MANUAL}
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    top = Manpage(parser, _data=dict(data))
    see_top = [".SH SEE ALSO"] + [
        ",\n".join(f".BR soprano\\-tts\\-{roff(name)} ({SECTION})" for name in sub.choices)]
    summary = parser.description.rstrip(".")
    summary = summary[0].lower() + summary[1:]  # "fast Soprano text-to-speech engine"
    pages = {"soprano-tts.1": finish(str(top), "soprano-tts", summary, top.date, version,
                                     top_environment(sub.choices) + see_top)}
    for name, command in sub.choices.items():
        page = Manpage(command, _data=dict(data, prog=f"soprano-tts {name}"))
        summary = helps.get(name) or (command.description or "").rstrip(".")
        pages[f"soprano-tts-{name}.1"] = finish(
            str(page), f"soprano-tts-{name}", summary, page.date, version,
            environment(command) + [".SH SEE ALSO", f".BR soprano\\-tts ({SECTION})"])
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
