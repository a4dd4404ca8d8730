"""``soprano-tts convert`` and ``generate`` on its files, as a user runs them (subprocesses)."""
import subprocess

import numpy as np
import pytest
import soundfile as sf

from helpers import CLI
from soprano.gguf.file import GGUFFile


def run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_convert_then_generate_from_the_gguf(tiny_ckpt, tmp_path):
    out = tmp_path / "models" / "tiny-q8_0.gguf"
    r = run("convert", "-m", str(tiny_ckpt), "--outtype", "q8_0", "-o", str(out), "--progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote 105 tensors as q8_0 in ")
    assert f"soprano-tts generate -m {out}" in r.stdout
    assert "105/105" in r.stderr  # the progress bar's last state
    assert GGUFFile(out).tensor("blk.1.ffn_up.weight").type_name == "Q8_0"
    assert GGUFFile(out.with_name("mmproj-tiny-q8_0.gguf")).architecture == "clip"

    wav = tmp_path / "hi.wav"
    r = run("generate", "-m", str(out), "--text", "Hello there.", "--max-new-tokens", "12",
            "-o", str(wav), "--progress")
    assert r.returncode == 0, r.stderr
    assert "tiny-q8_0.gguf" in r.stderr and "mmproj-tiny-q8_0.gguf" in r.stderr
    pcm, rate = sf.read(str(wav), dtype="int16")
    assert rate == 32000 and len(pcm) > 0

    # the same backbone with decoder.pth given explicitly: exactly the checkpoint's decoder
    wav2 = tmp_path / "pth.wav"
    f32 = tmp_path / "f32" / "tiny.gguf"
    assert run("convert", "-m", str(tiny_ckpt), "--outtype", "f32", "-o", str(f32)).returncode == 0
    r = run("generate", "-m", str(f32), "--decoder-path", f"{tiny_ckpt}/decoder.pth",
            "--text", "Hello there.", "--max-new-tokens", "12", "-o", str(wav2))
    assert r.returncode == 0, r.stderr
    wav3 = tmp_path / "safetensors.wav"
    r = run("generate", "-m", str(tiny_ckpt), "--text", "Hello there.", "--max-new-tokens", "12",
            "-o", str(wav3))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(sf.read(str(wav2), dtype="int16")[0],
                          sf.read(str(wav3), dtype="int16")[0])


def test_convert_errors_are_one_line(tmp_path):
    r = run("convert", "-m", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.gguf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("soprano-tts convert: error: ")
    assert "config.json" in r.stderr
    r = run("convert", "-m", str(tmp_path), "--outtype", "q3_k", "-o", str(tmp_path / "x.gguf"))
    assert r.returncode == 2 and "invalid choice: 'q3_k'" in r.stderr
