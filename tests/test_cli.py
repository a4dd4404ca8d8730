"""The console script, run in a subprocess as a user would."""
import subprocess
import wave

import soprano
from helpers import CLI


def run(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kw)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"soprano-tts {soprano.__version__}"


def test_generate_writes_wav(tiny_ckpt, tmp_path):
    out = tmp_path / "hello.wav"
    r = run("generate", "--text", "Hello world.", "-o", str(out), "-m", tiny_ckpt,
            "--max-new-tokens", "10", "-d", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout
    with wave.open(str(out)) as w:
        assert w.getframerate() == 32000 and w.getnframes() == 2048 * 9


def test_missing_model_dir_is_one_line_exit_2(tmp_path):
    r = run("generate", "--text", "Hi.", "-m", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("soprano-tts generate: error: model ")
