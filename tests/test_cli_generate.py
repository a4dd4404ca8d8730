"""``soprano-tts generate`` run as a user runs it: the console entry point in a subprocess.

Model runs use the tiny checkpoint with few tokens (random weights rarely emit EOS, so each
sentence is exactly ``--max-new-tokens`` tokens: 2048 samples per token gap) and check several
things per run, since loading a model costs seconds; ``--synthetic`` runs load no model and
cover option handling cheaply. Files are read back with both ``wave`` and ``soundfile``.
"""
import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import wave

import numpy as np
import pytest
import soundfile as sf

from helpers import CLI, PYTHON, autocorr_pitch_hz
from soprano.errors import SopranoError
from soprano.synthetic import synthesize

# the entry point, then a check that nothing imported torch (so no model was loaded)
CLI_NO_TORCH = [*PYTHON, "-c", "import sys; from soprano.cli import main; rc = main(); "
                "assert 'torch' not in sys.modules, 'torch imported'; raise SystemExit(rc)"]


def run(*args, env=None, cli=CLI, **kw):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SOPRANO_")}
    full_env.update(env or {})
    return subprocess.run([*cli, "generate", *args], capture_output=True, text=True,
                          timeout=300, env=full_env, **kw)


def read(path):
    """(rate, int16 samples) via ``wave``, after checking ``soundfile`` reads the same."""
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    data, sf_rate = sf.read(str(path), dtype="int16")
    assert sf_rate == rate and np.array_equal(data, pcm)
    return rate, pcm


def centroid_hz(x, rate: int) -> float:
    power = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
    return float((np.fft.rfftfreq(len(x), 1 / rate) * power).sum() / power.sum())


def one_error_line(r, *words):
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
    return lines[0]


@pytest.mark.slow  # a model run in a subprocess; test_cli.py's generate covers one in the fast lane
def test_file_batches_speed_and_resample(tiny_tts, tiny_ckpt, tmp_path):
    lines = ["Hello there, how are you doing today?", "Second one.", "And a third."]
    text = tmp_path / "lines.txt"
    text.write_text(f"{lines[0]}\n\n   \n{lines[1]}\n{lines[2]}\n", encoding="utf-8")
    out = tmp_path / "out"
    r = run("-f", str(text), "--output-dir", str(out), "-m", tiny_ckpt, "-d", "cpu",
            "--max-new-tokens", "12", "-w", "2", "--speed", "1.5", "--sample-rate", "16000",
            "-v")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["001.wav", "002.wav", "003.wav"]
    assert "3 files" in r.stdout and r.stdout.count("wrote ") == 3
    assert "loaded" in r.stderr                          # -v: debug logging
    assert "3/3" not in r.stderr                         # no progress bar: stderr is a pipe
    files = [read(out / f"00{i}.wav") for i in (1, 2, 3)]
    for rate, pcm in files:
        # 11 token gaps at speed 1.5, at half the model's rate
        assert rate == 16000 and len(pcm) == 512 * round(4 * 11 / 1.5) // 2
        assert abs(int(np.abs(pcm).max()) - round(0.9 * 32767)) <= 1  # peak-normalized
    # against the same text at speed 1 (greedy, so the same tokens): shorter, same pitch
    fast, base = files[0][1], tiny_tts.infer(lines[0], max_new_tokens=12)
    assert abs(len(fast) / 16000 / (len(base) / 32000) * 1.5 - 1) < 0.05
    assert abs(autocorr_pitch_hz(fast, 16000) / autocorr_pitch_hz(base) - 1) < 0.03


@pytest.mark.slow  # the real-shape checkpoint, loaded in a subprocess
def test_real_shape_checkpoint_sampled_variations(real_ckpt, tmp_path):
    r = run("-t", "A real shaped model speaks.", "-o", str(tmp_path), "-m", real_ckpt,
            "-d", "cpu", "--max-new-tokens", "8", "--speed", "0.8", "--use-model",
            "--no-normalize", "-T", "1.5", "--seed", "5", "--variations", "2")
    assert r.returncode == 0, r.stderr
    assert "2 files" in r.stdout and "WARNING" not in r.stderr
    (r1, a), (r2, b) = read(tmp_path / "001_1.wav"), read(tmp_path / "001_2.wav")
    assert r1 == r2 == 32000 and len(a) == len(b) == 512 * round(4 * 7 / 0.8)
    assert a.any() and not np.array_equal(a, b)    # seeds 5 and 6 sample differently


def test_synthetic_loads_no_model(tmp_path):
    """No model dir, no download, no torch import; speed and rate still apply."""
    out = tmp_path / "tone.wav"
    text = "A synthetic test tone."
    r = run("--synthetic", "-t", text, "-o", str(out), "-m", str(tmp_path / "no-model"),
            "--no-download", "--speed", "2", "--sample-rate", "22050", cli=CLI_NO_TORCH)
    assert r.returncode == 0, r.stderr
    rate, pcm = read(out)
    expected = round(len(synthesize(text, 2.0)) * 22050 / 32000)
    assert rate == 22050 and len(pcm) == expected
    slow = synthesize(text, 1.0)
    assert abs(len(slow) / 32000 / (len(pcm) / 22050) - 2) < 0.01
    # tempo, not pitch: the chirp at speed 2 sweeps the same frequencies, in half the time
    assert abs(centroid_hz(pcm, 22050) / centroid_hz(slow, 32000) - 1) < 0.02


def test_flag_beats_env_beats_default(tmp_path):
    text = "Env or flag?"
    default = run("--synthetic", "-t", text, "-o", str(tmp_path / "d.wav"))
    env = {"SOPRANO_SAMPLE_RATE": "16000", "SOPRANO_SPEED": "2"}
    from_env = run("--synthetic", "-t", text, "-o", str(tmp_path / "e.wav"), env=env)
    flags = run("--synthetic", "-t", text, "-o", str(tmp_path / "f.wav"), "--sample-rate",
                "24000", "--speed", "1", env=env)
    assert default.returncode == from_env.returncode == flags.returncode == 0
    (rd, d), (re, e), (rf, f) = (read(tmp_path / n) for n in ("d.wav", "e.wav", "f.wav"))
    assert (rd, re, rf) == (32000, 16000, 24000)
    assert abs(len(e) / re / (len(d) / rd) - 0.5) < 0.01      # env speed 2
    assert abs(len(f) / rf / (len(d) / rd) - 1) < 0.01        # flag speed 1


def test_exclusive_flag_beats_the_other_options_env(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("one\ntwo\n", encoding="utf-8")
    out = tmp_path / "out"
    env = {"SOPRANO_TEXT": "from the environment", "SOPRANO_USE_MODEL": "1",
           "SOPRANO_OUTPUT": str(tmp_path / "env.wav")}
    r = run("--synthetic", "-f", str(lines), "--output-dir", str(out), "-m",
            str(tmp_path / "no-model"), env=env, cli=CLI_NO_TORCH)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["001.wav", "002.wav"]
    both = run("--synthetic", "-o", str(out / "x.wav"),
               env={"SOPRANO_TEXT": "a", "SOPRANO_FILE": str(lines)})
    one_error_line(both, "SOPRANO_TEXT", "SOPRANO_FILE")


def read_pty(fd) -> bytes:
    """What is left in a pty; b"" at the end (Linux reports that as EIO)."""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


def test_stdin_and_progress_bar_only_on_a_terminal(tmp_path):
    def with_tty_stderr(*args):
        master, slave = pty.openpty()
        # a pty starts 0 columns wide, where tqdm draws an empty bar
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        try:
            r = subprocess.run([*CLI, "generate", "--synthetic", "-f", "-", *args],
                               input="one\ntwo\nthree\n", stdout=subprocess.PIPE,
                               stderr=slave, text=True, timeout=60)
            os.close(slave)
            err = b""
            while chunk := read_pty(master):
                err += chunk
        finally:
            os.close(master)
        assert r.returncode == 0
        return r.stdout, err.decode()
    out, err = with_tty_stderr("-o", str(tmp_path / "a"))
    assert "3/3" in err and out.count("wrote ") == 3
    assert sorted(os.listdir(tmp_path / "a")) == ["001.wav", "002.wav", "003.wav"]
    _, err = with_tty_stderr("-o", str(tmp_path / "b"), "--no-progress")
    assert "3/3" not in err


PROGRESS_WORDS = ("loading", "model.safetensors", "sentences", "real time", "3/3")


def test_progress_on_stderr_when_asked_quiet_wins(tiny_ckpt, tmp_path):
    """--progress on a pipe: the model's files with sizes, the load time, sentences n/n and the
    real-time factor, all on stderr; without a flag (stderr is a pipe here) or with -q: none."""
    text = "The first sentence is here and it is long enough. The second one is here as well."
    base = ["-t", text, "-m", tiny_ckpt, "-d", "cpu", "--max-new-tokens", "6"]
    r = run(*base, "-o", str(tmp_path / "a.wav"), "--progress")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.replace("\r", "\n").splitlines()
    loading = next(line for line in lines if line.startswith("loading ") and "(" in line)
    assert tiny_ckpt in loading
    assert re.search(r"model\.safetensors \d+(\.\d)? [kMG]?B\b", loading), loading
    assert re.search(r"decoder\.pth \d+(\.\d)? [kMG]?B\b", loading), loading
    assert any(re.fullmatch(r"loaded in \d+\.\d\d s on cpu .*", line) for line in lines), lines
    # two sentences of 6 tokens (5 gaps of 2048 samples each: 0.64 s), counted as they finish
    assert any(re.match(r"synthesizing: 1/2 sentences .*\d+ tokens/s", line) for line in lines)
    assert any(re.match(r"synthesizing: 2/2 sentences .*\d+ tokens/s", line) for line in lines)
    final = lines[-1]
    assert re.fullmatch(r"synthesized 2 sentences, 12 tokens at \d+ tokens/s; 0\.64 s of audio "
                        r"in \d+\.\d\d s: \d+\.\d\dx real time", final), final
    # stdout: only the file and the summary, as without progress
    assert r.stdout.splitlines()[0] == f"wrote {tmp_path / 'a.wav'}: 0.64 s of audio"
    assert len(r.stdout.splitlines()) == 2 and "sentences" not in r.stdout
    for flags in ([], ["--progress", "-q"]):
        r = run(*base, "-o", str(tmp_path / "b.wav"), *flags)
        assert r.returncode == 0, r.stderr
        assert not any(w in r.stderr for w in PROGRESS_WORDS), (flags, r.stderr)
        assert r.stdout.count("real time") == 1    # stdout's summary stays


@pytest.mark.parametrize("flags, env, shown", [
    (["--progress"], {}, True),
    ([], {"SOPRANO_PROGRESS": "1"}, True),
    (["--progress", "-q"], {}, False),                  # both flags: quiet wins
    (["-q", "--progress"], {}, False),
    ([], {"SOPRANO_PROGRESS": "1", "SOPRANO_QUIET": "1"}, False),  # both env: quiet wins
    (["--progress"], {"SOPRANO_QUIET": "1"}, True),     # else a flag beats the other's env
    (["-q"], {"SOPRANO_PROGRESS": "1"}, False),
    (["--quiet"], {}, False),
])
def test_progress_and_quiet_precedence(flags, env, shown, tmp_path):
    """Checked on the bar over several files, forced onto a pipe; --synthetic loads no model."""
    r = run("--synthetic", "-t", "Hi.", "--variations", "3", "-o", str(tmp_path), *flags,
            env=env, cli=CLI_NO_TORCH)
    assert r.returncode == 0, r.stderr
    assert ("3/3" in r.stderr) == shown, r.stderr
    assert r.stdout.count("wrote ") == 3 and "3/3" not in r.stdout


@pytest.mark.parametrize("args, words", [
    (["--speed", "3"], ["--speed", "3"]),
    (["--sample-rate", "0"], ["--sample-rate", "0"]),
    (["--workers", "0"], ["--workers", "0"]),
    (["--variations", "0"], ["--variations", "0"]),
    (["--text", "  "], ["no text"]),
    (["-f", "/no/such/file.txt"], ["/no/such/file.txt"]),
    (["--use-model"], ["--synthetic", "--use-model"]),
])
def test_bad_values_exit_2_with_one_line(args, words, tmp_path):
    base = ["--synthetic", "-o", str(tmp_path / "x.wav")]
    if "--text" not in args and "-f" not in args:
        base += ["-t", "Hi."]
    one_error_line(run(*base, *args), *words)


def test_greedy_variations_warn(tmp_path):
    """The warning comes before the model loads, so a missing model still shows it."""
    r = run("-t", "Hi.", "--variations", "2", "-o", str(tmp_path), "-m",
            str(tmp_path / "no-model"), "--no-download")
    assert r.returncode == 2 and "temperature 0" in r.stderr and "WARNING" in r.stderr


def test_bad_env_value_and_file_output_for_many_files(tmp_path):
    one_error_line(run("--synthetic", "-t", "Hi.", env={"SOPRANO_SPEED": "3"}),
                   "SOPRANO_SPEED", "--speed")
    line = one_error_line(run("--synthetic", "-t", "Hi.", "--variations", "2",
                              "-o", str(tmp_path / "one.wav")), "directory")
    assert "2 files" in line and not (tmp_path / "one.wav").exists()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_ckpt, tmp_path_factory):
    from soprano.gguf.writer import convert
    out = tmp_path_factory.mktemp("gguf") / "q8" / "soprano-q8_0.gguf"
    return str(convert(tiny_ckpt, out, "q8_0").backbone)


@pytest.mark.slow  # three model loads in subprocesses
def test_one_file_on_the_cpu_runs_without_torch(tiny_gguf, tmp_path):
    text = "The first sentence is here and it is long enough. The second one is here as well."
    base = ["-t", text, "-m", tiny_gguf, "-d", "cpu", "--max-new-tokens", "6", "--progress"]
    lean = run(*base, "-o", str(tmp_path / "lean.wav"), cli=CLI_NO_TORCH)
    assert lean.returncode == 0, lean.stderr
    assert re.search(r"loaded in \d+\.\d\d s on cpu without torch", lean.stderr), lean.stderr
    assert "synthesizing: 2/2 sentences" in lean.stderr.replace("\r", "\n")
    torch_run = run(*base, "-o", str(tmp_path / "torch.wav"), "--engine", "torch")
    assert torch_run.returncode == 0, torch_run.stderr
    assert "without torch" not in torch_run.stderr
    (rate, a), (_, b) = read(tmp_path / "lean.wav"), read(tmp_path / "torch.wav")
    # one model, two engines: the same tokens and states; the audio differs by the inverse
    # DFTs' rounding (pocketfft's against MKL's for long passes), at most one step of 16 bits
    assert rate == 32000 and len(a) == len(b) == 2 * 5 * 2048
    assert np.abs(a.astype(np.int32) - b).max() <= 1
    # several files go through the torch engine's batches
    many = run("-t", text, "-m", tiny_gguf, "-d", "cpu", "--max-new-tokens", "6",
               "--variations", "2", "--output-dir", str(tmp_path / "many"), "--progress")
    assert many.returncode == 0 and "without torch" not in many.stderr, many.stderr


@pytest.mark.parametrize("args", [["--speed", "1.5"], ["-d", "cuda"], ["--backend", "torch"]])
def test_the_lean_engine_refuses_what_it_cannot_run(tiny_gguf, args, tmp_path):
    r = run("-t", "Hello there, this is a test.", "-m", tiny_gguf, "--engine", "lean", *args,
            "-o", str(tmp_path / "a.wav"), cli=CLI_NO_TORCH)
    one_error_line(r, "--engine lean runs on the CPU at --speed 1 with --backend auto")


def test_without_the_native_extension_auto_takes_torch(monkeypatch):
    """From a source tree whose soprano._C is not built (a non-editable install's checkout),
    the torch engine's fallback to torch's ops still runs; --engine lean says why it cannot."""
    from soprano.cli import build_parser, generate
    args = build_parser("test").parse_args(["generate", "-t", "Hi there.", "-d", "cpu"])
    assert generate._engine(args, 1) == "lean"
    monkeypatch.setattr(generate, "_has_native", lambda: False)
    assert generate._engine(args, 1) == "torch"
    args.engine = "lean"
    with pytest.raises(SopranoError, match="needs the native extension soprano._C"):
        generate._engine(args, 1)
