"""A new user's first run without the model hub: one-line errors that say what to do, the
offline path the README shows, the same short flags on every command, errors naming it."""
import os
import re
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import pytest

from helpers import CLI, free_port

README = Path(__file__).resolve().parent.parent / "README.md"
# The machine has no network in the tests: a host name that does not resolve is what a user
# without network meets first, so the child's name lookups fail as they would there (addresses
# still resolve: the server binds one).
NO_DNS = [sys.executable, *CLI[1:-1],
          "import ipaddress, socket\n"
          "real = socket.getaddrinfo\n"
          "def no_dns(host, *a, **k):\n"
          "    try:\n"
          "        ipaddress.ip_address(host)\n"
          "    except ValueError:\n"
          "        if host not in (None, 'localhost'):\n"
          "            raise socket.gaierror(-2, 'Name or service not known') from None\n"
          "    return real(host, *a, **k)\n"
          "socket.getaddrinfo = no_dns\n" + CLI[-1]]


def run(*args, cmd=CLI, env=None, cwd=None, timeout=300):
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_no_network_and_no_cached_model_is_one_line_at_once(command, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPRANO_")}
    env["HF_HOME"] = str(tmp_path / "hf")
    args = ["--text", "Hello world.", "-o", str(tmp_path / "x.wav")] if command == "generate" \
        else ["--port", str(free_port())]
    start = time.monotonic()
    r = run(command, *args, cmd=NO_DNS, env=env, cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - start
    # serve says where it listens first (info, not an error); the error itself is one line
    lines = [ln for ln in r.stderr.strip().splitlines() if "listening on" not in ln]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith(f"soprano-tts {command}: error: ")
    assert "error: model 'ekwek/Soprano-1.1-80M' is not in the local cache" in line
    assert "`soprano-tts download ekwek/Soprano-1.1-80M` on a connected machine" in line
    assert "--model-path DIR" in line
    assert "huggingface-cli" not in line and "Traceback" not in r.stderr
    assert elapsed < 30  # no minute of retries against a network that is not there


def test_download_without_network_is_one_line_at_once(tmp_path):
    start = time.monotonic()
    r = run("download", "ekwek/Soprano-1.1-80M", "-c", str(tmp_path / "cache"), cmd=NO_DNS,
            cwd=tmp_path, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("soprano-tts download: error: ")
    assert "cannot be reached" in lines[0] and "--model-path" in lines[0]
    assert "huggingface-cli" not in lines[0]
    assert time.monotonic() - start < 30


def test_unknown_argument_names_the_command():
    r = run("serve", "--no-such-flag")
    assert r.returncode == 2
    assert r.stderr == "soprano-tts serve: error: unrecognized arguments: --no-such-flag\n"


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_model_and_device_take_the_same_short_flags(command, tmp_path):
    missing = tmp_path / "nope"
    extra = ["--text", "Hi."] if command == "generate" else []
    r = run(command, "-m", str(missing), "-d", "cpu", *extra, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        f"soprano-tts {command}: error: model '{missing}' is not a directory holding "
        "config.json, model.safetensors, tokenizer.json, decoder.pth or GGUF files, not a .gguf "
        "file and not a hub id like 'ekwek/Soprano-1.1-80M'")


def test_device_help_says_metal_is_only_accepted():
    r = run("generate", "--help")
    assert "metal is accepted for Soprano-RS compatibility and refused" in " ".join(
        r.stdout.split())


def test_testmodel_help_and_presets_match_the_checkpoint_writer():
    from soprano.cli.testmodel import PRESETS
    from soprano.testing import PRESETS as WRITER_PRESETS
    assert set(PRESETS) == set(WRITER_PRESETS)
    r = run("-m", "soprano.testing", "--help", cmd=[sys.executable, "-P"])
    assert r.returncode == 0 and r.stdout.startswith("usage: soprano-tts testmodel")
    assert "speaks noise" in " ".join(r.stdout.split())


def _readme_offline_commands() -> list[str]:
    """The commands under the README's first one, up to the test command."""
    block = README.read_text().split("```bash", 1)[1].split("# 2. install", 1)[0]
    return [line.split("    #")[0].strip() for line in block.splitlines()
            if line.startswith("soprano-tts ")]


@pytest.mark.slow
def test_readme_offline_path_runs_end_to_end(tmp_path, start_server):
    """Each command the README shows for a machine without the hub, as written, in a fresh
    process; then the server on the model it wrote, started with the README's ``-m``."""
    commands = _readme_offline_commands()
    assert [c.split()[1] for c in commands] == ["generate", "testmodel", "serve"]
    for command in commands[:2]:
        for part in command.split(" && "):
            words = re.findall(r'"[^"]*"|\S+', part)
            r = run(*[w.strip('"') for w in words[1:]], cwd=tmp_path, timeout=600)
            assert r.returncode == 0, f"{part}: {r.stderr}"
            assert "Traceback" not in r.stderr
    for name in ("chirp.wav", "noise.wav"):
        with wave.open(str(tmp_path / name)) as w:
            assert w.getframerate() == 32000 and w.getnframes() > 2048
    model = tmp_path / "random-model"
    assert (model / "model.safetensors").stat().st_size > 100e6
    server = start_server("-m", str(model), ckpt=model)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10) as r:
        assert r.status == 200 and b"<html" in r.read().lower()
    assert server.stop() == 0 and "Traceback" not in server.stderr()


def test_an_option_has_the_same_short_flag_on_every_command():
    from soprano.cli import build_parser
    parser = build_parser("0")
    commands = next(a for a in parser._actions if a.dest == "command").choices
    flags: dict[str, dict[str, tuple]] = {}
    for name, sub in commands.items():
        for action in sub._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            shorts = tuple(sorted(o for o in action.option_strings if not o.startswith("--")))
            for long in longs:
                flags.setdefault(long, {})[name] = shorts
    differing = {long: per for long, per in flags.items() if len(set(per.values())) > 1}
    assert differing == {}
    assert flags["--model-path"]["serve"] == ("-m",) and flags["--device"]["serve"] == ("-d",)


def test_readme_test_command_shows_why_tests_were_skipped():
    """.ci/run runs exactly this line (it greps it from the README)."""
    lines = README.read_text().splitlines()
    command = lines[lines.index(next(ln for ln in lines
                                     if ln.startswith("# 2. install and run the tests"))) + 1]
    assert command.endswith("pytest -rs tests")
    ci = (README.parent / ".ci" / "run").read_text()
    assert "grep -A1 '^# 2. install and run the tests' README.md" in ci
