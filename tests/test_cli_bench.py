"""``soprano-tts bench``: every engine's row from one run, as a user runs it (a subprocess).

On the tiny checkpoint so it is quick; upstream (installed aside in .upstream by the README's
test command) and llama-cpp-python (built by it) are part of the run."""
import json
import subprocess

import pytest

from helpers import CLI
from upstream import UPSTREAM_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary(tiny_ckpt, tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    r = subprocess.run([*CLI, "bench", "--checkpoint", tiny_ckpt, "--work-dir", str(work),
                        "--types", "bf16", "q8_0", "--tokens", "8", "--runs", "2", "--json",
                        "--upstream-dir", str(UPSTREAM_DIR)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def test_rows_for_each_weight_type_upstream_and_llama_cpp(summary):
    out, _ = summary
    assert set(out["rows"]) == {"ours bf16", "lean bf16", "ours q8_0", "lean q8_0", "upstream",
                                "llama.cpp q8_0"}
    # generation length is fixed whatever the random weights choose (EOS included): all
    # rows make the same audio per token (x real time times ms per token, taken in one run)
    audio_ms = [out["rows"][label]["x_real_time"]["max"] * out["rows"][label]["ms_per_token"]["min"]
                for label in ("ours bf16", "ours q8_0", "lean bf16", "lean q8_0")]
    assert audio_ms == pytest.approx([audio_ms[0]] * 4, rel=1e-9) and audio_ms[0] > 0
    assert out["tokens"] == 8 and out["runs"] == 2 and out["copy_read_gb_s"] > 0


@pytest.mark.parametrize("label", ["ours bf16", "ours q8_0", "lean bf16", "lean q8_0"])
def test_our_rows_hold_every_measure(summary, label):
    row = summary[0]["rows"][label]
    for key in ("x_real_time", "ms_per_token", "lm_ms", "step_ms", "prefill_ms", "decoder_ms",
                "first_audio_ms"):
        stat = row[key]
        assert 0 < stat["min"] <= stat["median"] <= stat["max"], key
    assert row["load_s"] > 0 and row["peak_rss_mb"] > 100
    assert row["step_over_floor"] == pytest.approx(row["step_ms"]["min"] / row["floor_ms"])
    # the floor: the matrices' bytes read by the engine's threads at their best rate
    assert row["floor_ms"] == pytest.approx(row["matrix_bytes"] / row["floor_read_gb_s"] / 1e6)
    assert row["floor_read_gb_s"] > 0
    assert row["vs_upstream"] > 0


def test_quantized_rows_read_fewer_bytes_and_compare_with_llama_cpp(summary):
    rows = summary[0]["rows"]
    # tiny's matrices are fp32 in the checkpoint; Q8_0 is 34 bytes per 32 weights
    assert rows["ours q8_0"]["matrix_bytes"] == pytest.approx(
        rows["ours bf16"]["matrix_bytes"] * 34 / 32 / 4, rel=0.02)
    assert rows["llama.cpp q8_0"]["step_ms"]["min"] > 0
    assert rows["ours q8_0"]["step_vs_llama_cpp"] > 0
    assert "step_vs_llama_cpp" not in rows["ours bf16"]  # llama.cpp runs GGUF rows only
    assert rows["lean q8_0"]["matrix_bytes"] == rows["ours q8_0"]["matrix_bytes"]
    assert rows["lean q8_0"]["step_vs_llama_cpp"] > 0


@pytest.mark.parametrize("t", ["bf16", "q8_0"])
def test_the_lean_rows_run_without_torch(summary, t):
    rows = summary[0]["rows"]
    assert rows[f"lean {t}"]["torch_loaded"] is False
    assert rows[f"ours {t}"]["torch_loaded"] is True
    # the same model without torch's ~200 MB
    assert rows[f"lean {t}"]["peak_rss_mb"] < rows[f"ours {t}"]["peak_rss_mb"] - 100


def test_markdown_table(tiny_ckpt, tmp_path):
    r = subprocess.run([*CLI, "bench", "--checkpoint", tiny_ckpt, "--work-dir", str(tmp_path),
                        "--types", "q4_k", "--tokens", "8", "--runs", "1", "--markdown",
                        "--no-upstream", "--no-llama-cpp", "--no-lean"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"threads; checkpoint {tiny_ckpt}, 8 tokens, 1 runs" in lines[0]
    assert lines[2].startswith("| engine | load s | first audio ms | x real time |")
    assert lines[4].startswith("| ours q4_k |") and len(lines) == 5
