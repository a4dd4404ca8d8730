"""Man pages: one per command plus the overview, listing every option, shipped in the wheel.

Also the pages' header, NAME line and ENVIRONMENT section, and the ``[env: SOPRANO_X]`` note on
each option's ``--help`` line.
"""
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import CLI, PYTHON

from soprano.cli import COMMANDS, build_parser, options
from soprano.cli.manpages import render


def options_by_command():
    parser = build_parser("1.2.3")
    sub = next(a for a in parser._actions if a.dest == "command")
    return {name: [flag for action in p._actions for flag in action.option_strings
                   if action.dest != "help"]
            for name, p in sub.choices.items()}


def roff(flag: str) -> str:
    return flag.replace("-", "\\-")


def test_every_command_page_lists_every_option():
    pages = render("1.2.3")
    commands = options_by_command()
    assert set(pages) == {"soprano-tts.1"} | {f"soprano-tts-{c}.1" for c in commands}
    for name, flags in commands.items():
        page = pages[f"soprano-tts-{name}.1"]
        assert '"soprano\\-tts 1.2.3"' in page.splitlines()[0]
        for flag in flags:
            assert roff(flag) in page, (name, flag)
            assert roff(flag) in pages["soprano-tts.1"], (name, flag)


def test_environment_does_not_leak_into_pages(monkeypatch):
    monkeypatch.setenv("SOPRANO_PORT", "4242")
    assert "4242" not in render("1.2.3")["soprano-tts-serve.1"]


INSTALLED = Path(sysconfig.get_path("data", vars={"base": sys.prefix})) / "share" / "man" / "man1"


def test_pages_are_installed_with_the_package():
    installed = INSTALLED
    for name in render("0"):
        assert (installed / name).is_file(), installed / name


def test_pages_build_without_heavy_imports(tmp_path):
    """The wheel build runs this in an environment with only the build requirements."""
    import subprocess
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'numpy', 'tqdm', 'huggingface_hub', 'tornado', 'soxr',
                                  'safetensors', 'tokenizers', 'av', 'prometheus_client'):
            raise ImportError('not in the build environment: ' + name)
sys.meta_path.insert(0, Block())
from soprano.cli.manpages import main
raise SystemExit(main([{str(tmp_path)!r}, '9.9']))
"""
    r = subprocess.run([*PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "soprano-tts-serve.1").read_text().startswith(".TH")


# --- header, NAME, ENVIRONMENT: on the pages CMake installed and on a fresh render -------------
@pytest.fixture(params=["installed", "rendered"])
def pages(request):
    if request.param == "rendered":
        return render("1.2.3")
    return {name: (INSTALLED / name).read_text() for name in render("0")}


def command_helps():
    parser = build_parser("1.2.3")
    sub = next(a for a in parser._actions if a.dest == "command")
    return {choice.dest: choice.help for choice in sub._choices_actions}


def env_vars_read_by_command(monkeypatch):
    """{command: the SOPRANO_* variables its parser looks up while being built}.

    Found by watching ``os.environ`` lookups in options.py, not from what the page generator
    uses, and cross-checked against the parser: each is SOPRANO_ + an option's dest.
    """
    looked_up = set()

    class Environ(dict):  # empty: the parsers get their built-in defaults
        def get(self, key, default=None):
            if key.startswith("SOPRANO_"):
                looked_up.add(key)
            return default

    class Os:
        environ = Environ()

        def __getattr__(self, name):
            return getattr(os, name)

    monkeypatch.setattr(options, "os", Os())
    parser = options.Parser(prog="soprano-tts")
    sub = parser.add_subparsers(dest="command", parser_class=options.Parser)
    read = {}
    for module in COMMANDS.values():
        looked_up.clear()
        command = module.add_parser(sub)
        read[command.prog.split()[-1]] = set(looked_up)
        dests = {options.env_name(a.dest) for a in command._actions}
        assert looked_up <= dests, (command.prog, looked_up - dests)
    assert set(read) == set(COMMANDS)
    return read


def section(page: str, heading: str) -> list[str]:
    """The lines of the page's ``.SH heading`` section (up to the next ``.SH``)."""
    lines = page.splitlines()
    starts = [i for i, line in enumerate(lines) if line == f".SH {heading}"]
    assert len(starts) == 1, (heading, starts)
    end = next((i for i in range(starts[0] + 1, len(lines)) if lines[i].startswith(".SH")),
               len(lines))
    return lines[starts[0] + 1:end]


def listed_vars(page: str) -> dict[str, str]:
    """{SOPRANO_X: the line after it} for the ``.B SOPRANO_X`` entries of ENVIRONMENT."""
    lines = section(page, "ENVIRONMENT")
    return {m[1]: lines[i + 1] for i, line in enumerate(lines)
            if (m := re.fullmatch(r"\.B (SOPRANO_[A-Z0-9_]+)", line))}


def test_name_line_has_a_description(pages):
    helps = command_helps()
    expected = {"soprano-tts.1": "soprano\\-tts \\- fast Soprano text\\-to\\-speech engine"}
    expected |= {f"soprano-tts-{c}.1": f"soprano\\-tts\\-{c} \\- " + roff(h)
                 for c, h in helps.items()}
    assert expected["soprano-tts-generate.1"] == \
        "soprano\\-tts\\-generate \\- synthesize text to WAV files"
    for name, page in pages.items():
        name_lines = section(page, "NAME")
        assert name_lines == [expected[name]], (name, name_lines)
        title, description = name_lines[0].split(" \\- ", 1)
        assert title == roff(name[:-2]) and description.strip(), name


def test_header_is_section_1_user_commands(pages):
    for name, page in pages.items():
        first = page.splitlines()[0]
        title = roff(name[:-2].upper())  # SOPRANO\-TTS\-GENERATE: one word, then the section
        assert re.fullmatch(rf'\.TH {re.escape(title)} "1" "[^"]+" "soprano\\-tts [^"]+" '
                            r'"User Commands"', first), first
        assert "Generated Python Manual" not in page, name


def test_environment_lists_each_commands_variables(pages, monkeypatch):
    read = env_vars_read_by_command(monkeypatch)
    assert "SOPRANO_PORT" in read["serve"] and "SOPRANO_BACKEND" in read["generate"]
    assert read["env"] == set()  # env's --json is a plain argparse option
    parser = build_parser("1.2.3")
    sub = next(a for a in parser._actions if a.dest == "command")
    for command, expected in read.items():
        page = pages[f"soprano-tts-{command}.1"]
        listed = listed_vars(page)
        assert set(listed) == expected, (command, set(listed) ^ expected)
        for action in sub.choices[command]._actions:
            var = options.env_name(action.dest)
            if var in expected:  # the entry names the option the variable sets
                flag = ([s for s in action.option_strings if s.startswith("--")]
                        or action.option_strings or [action.metavar])[0]
                assert roff(flag) in listed[var], (command, var, listed[var])
        if not expected:
            assert section(page, "ENVIRONMENT") == [
                "This command reads no \\fBSOPRANO_*\\fR variables."]
    top = listed_vars(pages["soprano-tts.1"])
    assert set(top) == set().union(*read.values())
    assert "TRITON_INTERPRET" not in pages["soprano-tts.1"]
    for var, line in top.items():  # with the commands that read it
        users = [c for c, names in read.items() if var in names]
        assert all(re.search(rf"\b{c}\b", line) for c in users), (var, line)
    assert "(generate, serve, download, list, cache)" in top["SOPRANO_CACHE_DIR"]


# --- --help shows each option's variable, as click's show_envvar ---------------------------------
def help_entries(text: str) -> dict[str, str]:
    """{first flag: the entry's text, whitespace folded} for the option lines of --help."""
    entries, current = {}, None
    for line in text.splitlines():
        if re.match(r"  -", line):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line
        else:
            current = None
    return {flag: " ".join(entry.split()) for flag, entry in entries.items()}


def test_serve_help_shows_each_options_variable():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPRANO_")}
    r = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 0, r.stderr
    entries = help_entries(r.stdout)
    serve = next(a for a in build_parser("1.2.3")._actions if a.dest == "command").choices["serve"]
    flags = {a.option_strings[0]: a for a in serve._actions if a.option_strings}
    assert set(entries) == set(flags), set(entries) ^ set(flags)
    assert "[env:" not in entries["-h"]
    for flag, action in flags.items():
        if action.dest == "help":
            continue
        var = options.env_name(action.dest)
        assert entries[flag].endswith(f"[env: {var}]"), (flag, entries[flag])
    assert entries["--port"] == "--port PORT port to listen on (default: 8080) [env: SOPRANO_PORT]"
    assert "(default: 16) [env: SOPRANO_TTS_INFLIGHT]" in entries["--tts-inflight"]
