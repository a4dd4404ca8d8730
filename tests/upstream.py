"""Run upstream soprano-tts 0.2.0 in a subprocess, for golden/parity tests.

Upstream's import name is also ``soprano``, so it cannot share an interpreter with ours. It is
installed aside (``pip install --no-deps --target .upstream soprano-tts==0.2.0``, done by
``.ci/run``); a job is a Python snippet run with that directory first on ``sys.path``. Inputs and
outputs travel as JSON (``inputs`` / ``result`` variables) and numpy arrays (``.npz``).
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_DIR = Path(os.environ.get("SOPRANO_UPSTREAM_DIR", REPO / ".upstream"))

_PRELUDE = """
import json, sys
# an editable install of our package hooks sys.meta_path; upstream must win the name 'soprano'
sys.meta_path = [f for f in sys.meta_path if 'soprano' not in repr(f).lower()
                 and 'scikit' not in type(f).__module__.lower()]
import numpy as np
_io = sys.argv[1]
with open(_io + '/inputs.json') as f:
    inputs = json.load(f)
arrays = dict(np.load(_io + '/inputs.npz'))
result, out_arrays = None, {}
"""

_EPILOGUE = """
with open(_io + '/result.json', 'w') as f:
    json.dump(result, f)
np.savez(_io + '/result.npz', **out_arrays)
"""


def upstream_available() -> bool:
    return (UPSTREAM_DIR / "soprano" / "tts.py").is_file()


def run_upstream(code: str, inputs=None, arrays=None, timeout=1800):
    """Run ``code`` under upstream soprano; returns ``(result, out_arrays)``.

    ``code`` sees ``inputs`` (JSON value) and ``arrays`` (dict of numpy arrays) and sets
    ``result`` (JSON value) and ``out_arrays`` (dict of numpy arrays).
    """
    if not upstream_available():
        raise RuntimeError(
            f"upstream soprano-tts 0.2.0 not found in {UPSTREAM_DIR}; install it with "
            f"'pip install --no-deps --target {UPSTREAM_DIR} soprano-tts==0.2.0'")
    with tempfile.TemporaryDirectory() as io_dir:
        with open(os.path.join(io_dir, "inputs.json"), "w") as f:
            json.dump(inputs, f)
        np.savez(os.path.join(io_dir, "inputs.npz"), **(arrays or {}))
        script = os.path.join(io_dir, "job.py")
        with open(script, "w") as f:
            f.write(_PRELUDE + code + _EPILOGUE)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(UPSTREAM_DIR)
        env.pop("TRITON_INTERPRET", None)
        proc = subprocess.run([sys.executable, script, io_dir], cwd=io_dir, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"upstream job failed:\n{proc.stdout}\n{proc.stderr}")
        with open(os.path.join(io_dir, "result.json")) as f:
            result = json.load(f)
        out = dict(np.load(os.path.join(io_dir, "result.npz")))
        return result, out
