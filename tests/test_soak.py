"""A minute of bench/soak.py: many sessions mixing text, flush, stop, config and bad messages,
plus OpenAI speech requests, against a live server with an API key; nothing may be lost.

The benchmark itself runs (a subprocess, as a user runs it) on the tiny checkpoint; this test
reads its JSON figures. Speed is not judged here (timing belongs in bench/), only accounting.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow  # a minute of traffic by design
def test_a_minute_of_soak_loses_nothing_and_leaks_no_fds(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--sessions", "24", "--duration", "60",
         "--tts-inflight", "4", "--preset", "tiny", "--max-new-tokens", "10", "--bucket", "15",
         "--warmup", "15", "--seed", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    print(run.stdout)
    r = json.loads(out.read_text())
    assert r["flushes"] >= 50 and r["stops"] >= 5 and r["reconnects"] >= 1
    assert r["answered"] == r["flushes"]
    assert r["audio_checked"] >= 30
    assert (r["wrong_length"], r["mismatched"], r["gaps"], r["repeats"]) == (0, 0, 0, 0)
    assert r["stop_dones_wrong"] == 0
    assert r["speech"].get("streamed", 0) >= 1 and r["speech"].get("whole", 0) >= 1
    assert r["speech"].get("wrong", 0) == 0
    assert r["errors"] == {}  # nothing but what the mix provoked
    assert r["server_errors"] == r["provoked"]  # and the server counted exactly those
    assert r["fds_after"] <= r["fds_before"] + 2  # every socket closed came back
    assert r["server_exit"] == 0
