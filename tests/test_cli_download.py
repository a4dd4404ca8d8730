"""``soprano-tts download`` / ``list`` / ``cache`` against the fake hub of fake_hub.py.

The download itself and the error exits run the console entry point in a subprocess, as a user
would; output variants (tables, --json, cleanup) call the same ``main`` in-process, because
each subprocess pays seconds of imports (torch, huggingface_hub) and the file must stay fast.
"""
import json
import os
import subprocess
import sys
import time

import pytest
from huggingface_hub import scan_cache_dir

from fake_hub import REPO, FakeHub, tiny_checkpoint
from soprano.cli import main

CLI = [sys.executable, "-c", "from soprano.cli import main; raise SystemExit(main())"]


def run(*args, **env):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def one_line_error(result, command="download"):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"soprano-tts {command}: error: ")
    return last


@pytest.fixture(scope="module")
def fake_hub():
    fake = FakeHub()
    fake.add(REPO, tiny_checkpoint())
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def downloaded(fake_hub, tmp_path_factory):
    """One real CLI download, configured through SOPRANO_* variables only."""
    cache = tmp_path_factory.mktemp("hub-cache")
    r = run("download", SOPRANO_MODEL_ID=REPO, SOPRANO_HF_ENDPOINT=fake_hub.url,
            SOPRANO_CACHE_DIR=str(cache), SOPRANO_RETRIES="0", SOPRANO_NO_PROGRESS="1")
    assert r.returncode == 0, r.stderr
    return cache, r


def test_download_from_env_settings(downloaded):
    cache, r = downloaded
    summary, path = r.stdout.strip().splitlines()
    assert summary.startswith(f"{REPO}@") and "5 files" in summary and "verified" in summary
    assert sorted(os.listdir(path)) == sorted(tiny_checkpoint())
    assert path.startswith(str(cache))


def test_list_json_shows_catalogue_and_download(downloaded, capsys):
    cache, _ = downloaded
    assert main(["list", "--json", "-c", str(cache)]) == 0
    models = {m["repo_id"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert models["ekwek/Soprano-1.1-80M"]["state"] == "not-downloaded"
    assert "ekwek/Soprano-80M" in models
    assert any(name.endswith("-GGUF") for name in models)
    assert models[REPO]["state"] == "verified"
    assert models[REPO]["size"] == sum(map(len, tiny_checkpoint().values()))


def test_list_and_cache_tables_and_cache_json(downloaded, capsys, monkeypatch):
    cache, _ = downloaded
    monkeypatch.setenv("SOPRANO_CACHE_DIR", str(cache))
    assert main(["list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["MODEL", "FORMAT", "STATE", "SIZE", "DESCRIPTION"]
    assert any(line.split()[:3] == [REPO, "safetensors", "verified"] for line in table)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cache: {cache}")
    row = next(line for line in out.splitlines() if line.startswith(REPO)).split()
    assert row[2:3] == ["main"] and "verified" in row and "just now" in " ".join(row)
    assert main(["cache", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (rev,) = data["revisions"]
    assert (rev["repo_id"], rev["state"], rev["refs"]) == (REPO, "verified", ["main"])
    assert data["size"] == rev["size"] and rev["last_accessed"].endswith("+00:00")


def test_verify_ok_in_process(downloaded, capsys):
    cache, _ = downloaded
    assert main(["download", REPO, "--verify", "-c", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors: ok" in out and "5 files match" in out


def test_verify_tampered_copy_names_the_file(fake_hub, tmp_path):
    assert main(["download", REPO, "-c", str(tmp_path), "--hf-endpoint", fake_hub.url]) == 0
    blob = next((tmp_path / "models--test-org--Soprano-Tiny" / "snapshots").iterdir())
    target = (blob / "model.safetensors").resolve()
    target.write_bytes(b"\0" + target.read_bytes()[1:])
    r = run("download", REPO, "--verify", "-c", str(tmp_path))
    error = one_line_error(r)
    assert "model.safetensors (sha256 is" in error and "soprano-tts download" in error
    assert "decoder.pth: ok" in r.stdout


def test_corrupted_download_exits_2_and_leaves_nothing_half_written(tmp_path):
    fake = FakeHub()
    fake.add(REPO, tiny_checkpoint())
    fake.corrupt = {"decoder.pth"}
    try:
        r = run("download", REPO, "-c", str(tmp_path), "--hf-endpoint", fake.url)
    finally:
        fake.close()
    assert "decoder.pth" in one_line_error(r)
    scan = scan_cache_dir(tmp_path)
    assert not scan.incomplete_files and not scan.warnings
    assert all("decoder.pth" not in {f.file_name for f in rev.files}
               for repo in scan.repos for rev in repo.revisions)


def test_offline_is_one_line_saying_how_to_get_a_model(tmp_path):
    r = run("download", "-c", str(tmp_path), "--hf-endpoint", "http://127.0.0.1:9",
            SOPRANO_RETRIES="0")
    error = one_line_error(r)
    assert "ekwek/Soprano-1.1-80M" in error and "--model-path" in error


def test_retries_zero_fails_cleanly_in_process(fake_hub, tmp_path, capsys):
    fake_hub.fail_first = 1
    assert main(["download", REPO, "-c", str(tmp_path), "--hf-endpoint", fake_hub.url,
                 "-r", "0"]) == 2
    assert "failed 1 attempt(s)" in capsys.readouterr().err
    assert fake_hub.fail_first == 0


def test_cleanup_in_process(fake_hub, tmp_path, capsys):
    assert main(["download", REPO, "-c", str(tmp_path), "--hf-endpoint", fake_hub.url]) == 0
    snapshot = next((tmp_path / "models--test-org--Soprano-Tiny" / "snapshots").iterdir())
    assert main(["download", "--cleanup", "-c", str(tmp_path)]) == 0  # fresh: kept
    assert snapshot.is_dir()
    old = time.time() - 31 * 86400
    for link in snapshot.iterdir():
        os.utime(link.resolve(), (old, old))
    assert main(["download", "--cleanup", "--max-age", "30", "-c", str(tmp_path)]) == 0
    assert "1 revision(s)" in capsys.readouterr().out.splitlines()[-1]
    assert not snapshot.exists()


def test_bad_option_values_exit_2(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        main(["download", "--timeout", "0"])
    assert e.value.code == 2 and "--timeout" in capsys.readouterr().err
    monkeypatch.setenv("SOPRANO_RETRIES", "-1")
    with pytest.raises(SystemExit) as e:
        main(["download"])
    assert e.value.code == 2 and "SOPRANO_RETRIES" in capsys.readouterr().err
