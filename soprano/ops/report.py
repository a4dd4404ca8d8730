"""What this machine has and what the backend table picks on it: ``soprano-tts env``.

What a user pastes into a bug report, as ``torch.utils.collect_env`` and ``vllm collect-env``:
versions (python, torch, triton, CUDA, the compiler ``soprano._C`` was built with), devices,
CPU features, which backends are built and usable, the op x backend table with ``auto``'s
pick for each device here, and what becomes of GGUF weights. ``collect()`` returns it as
plain data (``--json``), ``format_text`` as aligned text.
"""
import os
import platform
import sys

import torch

from ..gguf.file import READABLE_TYPES
from . import native, native_gguf
from .quantized import GGML_MATMUL_TYPES
from .table import BACKENDS, IMPLS, OPS, OpTable, backend_available

_SHORT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _devices() -> list[dict]:
    devices = [{"device": "cpu", "name": cpu_name(), "cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "native_threads": native.num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"device": f"cuda:{i}", "name": p.name,
                            "capability": f"{p.major}.{p.minor}",
                            "memory_gib": round(p.total_memory / 2**30, 1)})
    return devices


def _support(op: str, backend: str) -> str:
    """What ``backend`` implements of ``op``: dtypes per device, or '-'."""
    if backend == "torch":
        return "reference" if OPS[op].reference is not None else "op by op"
    parts = []
    for impl in IMPLS.get(op, []):
        if impl.backend == backend:
            dtypes = "/".join(_SHORT[d] for d in impl.dtypes)
            if impl.weight_dtypes:
                dtypes += " w:" + "/".join(_SHORT[d] for d in impl.weight_dtypes)
            parts.append(f"{','.join(impl.devices)} {dtypes}")
    return "; ".join(parts) or "-"


def _picks() -> dict[str, dict[str, str]]:
    """``auto``'s choice per op for the default dtypes of every device present."""
    targets = [("cpu", torch.float32)]
    if torch.cuda.is_available():
        targets.append(("cuda", torch.bfloat16))
    out = {}
    for device, dtype in targets:
        out[f"{device} {_SHORT[dtype]}"] = OpTable(device, dtype, "auto").describe()
    return out


def collect() -> dict:
    build = native.build_info()
    backends = {}
    for name in BACKENDS:
        usable = {}
        for device in ("cpu", "cuda"):
            ok, why = backend_available(name, device)
            usable[device] = True if ok else why
        backends[name] = usable
    return {
        "versions": {"soprano": _soprano_version(), "python": sys.version.split()[0],
                     "platform": platform.platform(), "torch": torch.__version__,
                     "torch_cuda": torch.version.cuda, "triton": _triton_version(),
                     "extension_compiler": build.get("compiler"),
                     "extension_cuda": build.get("cuda_version") or None,
                     "extension_openmp": build.get("openmp")},
        "env": {k: v for k, v in os.environ.items()
                if k.startswith("SOPRANO_") or k in ("TRITON_INTERPRET", "OMP_NUM_THREADS",
                                                     "CUDA_VISIBLE_DEVICES")},
        "devices": _devices(),
        "cpu_features": native.cpu_features(),
        "backends": backends,
        "ops": {op: {b: _support(op, b) for b in BACKENDS} for op in OPS},
        "auto": _picks(),
        "gguf": _gguf_info(),
    }


def _gguf_info() -> dict:
    isa = native_gguf.quant_isa()
    tiles = native_gguf.has_int8_tiles()
    on_tiles = (", Q8_0 from 5 rows of x and Q4_0 and Q4_K from 16 on the tile unit (AMX-INT8)"
                if tiles else "")
    return {"reads": list(READABLE_TYPES), "kept_quantized": list(GGML_MATMUL_TYPES),
            "int8_dots": isa, "int8_tiles": tiles,
            "quantized_weights": f"multiplied in their blocks on a CPU (backbone matrices of "
                                 f"{', '.join(GGML_MATMUL_TYPES)}: int8 dots with {isa}"
                                 f"{on_tiles}, their rows interleaved by 8; the decoder's with "
                                 "fp32 rows); "
                                 "other types and any on a GPU are dequantized once at load"}


def _soprano_version() -> str:
    from .. import __version__
    return __version__


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_text(info: dict) -> str:
    lines = ["Versions"]
    lines += [f"  {k}: {v}" for k, v in info["versions"].items()]
    lines.append("Devices")
    for d in info["devices"]:
        rest = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("device", "name"))
        lines.append(f"  {d['device']}: {d['name']} ({rest})")
    features = info["cpu_features"]
    have = [k for k, v in features.items() if v]
    lines.append("CPU features: " + (" ".join(have) if features else "unknown (soprano._C "
                                                                       "not built)"))
    if info["env"]:
        lines.append("Environment: " + " ".join(f"{k}={v}" for k, v in info["env"].items()))
    lines.append("Backends")
    for name, usable in info["backends"].items():
        where = [d if ok is True else f"not {d} ({ok})" for d, ok in usable.items()]
        lines.append(f"  {name}: " + "; ".join(where))
    lines.append("Ops (what each backend implements)")
    rows = [["op", *BACKENDS]] + [[op, *per.values()] for op, per in info["ops"].items()]
    lines += ["  " + r for r in _table(rows)]
    for target, picks in info["auto"].items():
        lines.append(f"auto on {target}")
        lines += ["  " + r for r in _table([[op, b] for op, b in picks.items()])]
    lines.append("GGUF weights: reads " + " ".join(info["gguf"]["reads"]))
    lines.append("  kept quantized on a CPU: " + " ".join(info["gguf"]["kept_quantized"]))
    lines.append("  quantized weights are " + info["gguf"]["quantized_weights"])
    return "\n".join(lines)
