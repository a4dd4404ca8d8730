"""SOPRANO_* environment variables: every serve option, precedence flag > env > default, and
clear exit-2 errors for bad values from either source."""
import subprocess

import pytest
from helpers import CLI

from soprano.cli import build_parser

SERVE_ENV = [  # (variable, value, dest, parsed value, a flag that overrides it)
    ("SOPRANO_HOST", "127.0.0.2", "host", "127.0.0.2", ["--host", "::1"]),
    ("SOPRANO_PORT", "9090", "port", 9090, ["--port", "9091"]),
    ("SOPRANO_MODEL_PATH", "/models/s", "model_path", "/models/s", ["--model-path", "/m"]),
    ("SOPRANO_MODEL_ID", "ekwek/Soprano-80M", "model_id", "ekwek/Soprano-80M",
     ["--model-id", "a/b"]),
    ("SOPRANO_DEVICE", "cpu", "device", "cpu", ["--device", "cuda"]),
    ("SOPRANO_CACHE_DIR", "/c", "cache_dir", "/c", ["--cache-dir", "/d"]),
    ("SOPRANO_DOWNLOAD", "false", "download", False, ["--download"]),
    ("SOPRANO_WORKERS", "5", "workers", 5, ["--workers", "1"]),
    ("SOPRANO_TTS_INFLIGHT", "12", "tts_inflight", 12, ["--tts-inflight", "2"]),
    ("SOPRANO_MIN_WORDS", "4", "min_words", 4, ["--min-words", "1"]),
    ("SOPRANO_INCLUDE_TEXT", "yes", "include_text", True, None),
    ("SOPRANO_DECODER_BATCH_SIZE", "3", "decoder_batch_size", 3,
     ["--decoder-batch-size", "1"]),
    ("SOPRANO_LOG", "debug", "log", "debug", ["--log", "error"]),
    ("SOPRANO_TEMPERATURE", "0.7", "temperature", 0.7, ["-T", "0.1"]),
    ("SOPRANO_TOP_P", "0.5", "top_p", 0.5, ["--top-p", "0.9"]),
    ("SOPRANO_REPETITION_PENALTY", "1.5", "repetition_penalty", 1.5,
     ["--repetition-penalty", "1.0"]),
    ("SOPRANO_SAMPLE_RATE", "24000", "sample_rate", 24000, ["--sample-rate", "16000"]),
    ("SOPRANO_MAX_NEW_TOKENS", "64", "max_new_tokens", 64, ["--max-new-tokens", "8"]),
    ("SOPRANO_VERBOSE", "1", "verbose", True, None),
    ("SOPRANO_MAX_SESSIONS", "7", "max_sessions", 7, ["--max-sessions", "8"]),
    ("SOPRANO_IDLE_TIMEOUT", "5", "idle_timeout", 5.0, ["--idle-timeout", "6"]),
    ("SOPRANO_BODY_TIMEOUT", "2.5", "body_timeout", 2.5, ["--body-timeout", "6"]),
    ("SOPRANO_FIRST_MESSAGE_TIMEOUT", "9", "first_message_timeout", 9.0,
     ["--first-message-timeout", "6"]),
    ("SOPRANO_ALLOWED_ORIGINS", "https://App.example/, http://b.example:8080",
     "allowed_origins", ("https://app.example", "http://b.example:8080"),
     ["--allowed-origins", "*"]),
]


def parse(argv):
    return build_parser("test").parse_args(argv)


def test_serve_defaults_without_environment(monkeypatch):
    for var, *_ in SERVE_ENV:
        monkeypatch.delenv(var, raising=False)
    a = parse(["serve"])
    assert (a.host, a.port, a.model_id, a.device, a.workers, a.min_words, a.temperature,
            a.top_p, a.repetition_penalty, a.sample_rate, a.download, a.log) == (
        "127.0.0.1", 8080, "ekwek/Soprano-1.1-80M", "auto", 2, 2, 0.0, 0.95, 1.2, 32000, True,
        "info")
    assert (a.max_sessions, a.idle_timeout, a.body_timeout, a.first_message_timeout,
            a.allowed_origins) == (128, 60.0, 30.0, 30.0, ())


def test_serve_help_says_how_to_expose_the_server():
    """Loopback by default: the help says so and how to listen on every interface."""
    help_text = " ".join(run_cli(["serve", "--help"]).stdout.split())
    assert "(default: 127.0.0.1)" in help_text and "--host 0.0.0.0" in help_text


@pytest.mark.parametrize("var,value,dest,parsed,flag", SERVE_ENV, ids=[e[0] for e in SERVE_ENV])
def test_serve_option_from_environment_and_flag_wins(monkeypatch, var, value, dest, parsed,
                                                     flag):
    monkeypatch.setenv(var, value)
    assert getattr(parse(["serve"]), dest) == parsed
    if flag is not None:
        assert getattr(parse(["serve", *flag]), dest) != parsed


def run_cli(args, env=None):
    import os
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SOPRANO_")}
    full_env.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env=full_env)


@pytest.mark.parametrize("args,env,needle", [
    (["serve", "--port", "99999"], None, "argument --port: must be in 1..65535, got 99999"),
    (["serve", "--temperature", "-1"], None, "argument -T/--temperature: must be in"),
    (["serve", "--device", "tpu"], None, "argument -d/--device: invalid choice: 'tpu'"),
    (["serve", "--top-p", "0"], None, "argument --top-p: must be in (0.0, 1.0], got 0"),
    (["serve", "--workers", "two"], None, "argument -w/--workers: expected an integer, got 'two'"),
    (["serve", "--allowed-origins", "evil.example"], None,
     "argument --allowed-origins: 'evil.example' is not an origin"),
    (["serve", "--allowed-origins", "ftp://x.example"], None, "is not an origin"),
    (["serve", "--idle-timeout", "0"], None, "argument --idle-timeout: must be in > 0.0, got 0"),
    (["serve", "--max-sessions", "0"], None, "argument --max-sessions: must be in 1.."),
    (["serve"], {"SOPRANO_PORT": "99999"},
     "environment variable SOPRANO_PORT (for --port): must be in 1..65535, got 99999"),
    (["serve"], {"SOPRANO_INCLUDE_TEXT": "maybe"},
     "environment variable SOPRANO_INCLUDE_TEXT (for --include-text): expected one of"),
])
def test_bad_values_exit_2_with_one_line(args, env, needle):
    r = run_cli(args, env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_metal_is_refused_clearly():
    r = run_cli(["serve", "--device", "metal", "--model-path", "/nonexistent"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "soprano-tts serve: error: device 'metal' (Apple GPUs) is not supported by "
        "soprano-tts; use --device cpu or cuda")


def test_serve_without_model_or_network_says_how_to_get_it(tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    r = run_cli(["serve", "--host", "127.0.0.1", "--port", port, "--cache-dir", str(tmp_path)],
                {"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("soprano-tts serve: error: model 'ekwek/Soprano-1.1-80M' is not in "
                           "the local cache")
    assert "soprano-tts download ekwek/Soprano-1.1-80M" in last


def test_serve_help_states_the_servers_limits():
    """The limits `serve --help` lists are the server's own constants."""
    from soprano.cli.serve import LIMITS
    from soprano.server.app import CLOSE_FULL, CLOSE_IDLE, CLOSE_INVALID_UTF8, MAX_MESSAGE_BYTES
    from soprano.server.openai_request import MAX_BODY_BYTES
    from soprano.server.protocol import ECHO_CHARS
    from soprano.server.session import (CLOSE_NOT_READING, MAX_QUEUED_BYTES, MAX_QUEUED_FRAMES,
                                        MAX_QUEUED_MESSAGES)
    for fact in (f"over {MAX_MESSAGE_BYTES // 1024} KiB closes the session with 1009",
                 f"not UTF-8 with {CLOSE_INVALID_UTF8}", f"({MAX_QUEUED_MESSAGES} messages, "
                 f"{MAX_QUEUED_BYTES // 1024} KiB of them or {MAX_QUEUED_FRAMES} audio frames",
                 f"closed with {CLOSE_NOT_READING}", f"an error and {CLOSE_FULL}",
                 f"cut to {ECHO_CHARS} characters", f"at most {MAX_BODY_BYTES // 1024} KiB"):
        assert fact in LIMITS, fact
    assert CLOSE_IDLE == CLOSE_NOT_READING  # "... or sends nothing ... is closed with 1008"
