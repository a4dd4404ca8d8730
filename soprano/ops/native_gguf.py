"""Tensor-level wrappers of the native GGUF dequantize (the cpu and cuda backends).

Contract: ``soprano.ops.reference.dequantize``. The arguments are checked here, as the
reference checks them (``check_dequantize``), and again on raw pointers by
``csrc/gguf_dequant_params.h``.
"""
import torch

from .native import _C, _DTYPE_NAMES
from .reference import check_dequantize


def _dequantize(op: str, raw: torch.Tensor, qtype: int, n: int,
                dtype: torch.dtype) -> torch.Tensor:
    if _C is None:
        raise RuntimeError(f"{op}: soprano._C is not built; use soprano.ops.reference")
    device = op.rsplit("_", 1)[1]
    if raw.device.type != device:
        raise ValueError(f"{op}: raw must be on {device}, got {raw.device}")
    t = check_dequantize(op, raw, qtype, n, dtype)
    out = torch.empty(n, dtype=dtype, device=raw.device)  # 16-byte aligned, as CUDA needs
    if n == 0:
        return out
    args = (raw.data_ptr(), raw.numel(), int(t), n, out.data_ptr(), _DTYPE_NAMES[dtype])
    if device == "cpu":
        _C.dequantize_cpu(*args)
    else:
        with torch.cuda.device(raw.device):
            _C.dequantize_cuda(*args, torch.cuda.current_stream(raw.device).cuda_stream)
    return out


def dequantize_cpu(raw: torch.Tensor, qtype: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """C++, OpenMP over chunks of blocks, AVX2+F16C where the CPU has them."""
    return _dequantize("dequantize_cpu", raw, qtype, n, dtype)


def dequantize_cuda(raw: torch.Tensor, qtype: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """CUDA C++, one thread per eight values, enqueued on torch's current stream."""
    return _dequantize("dequantize_cuda", raw, qtype, n, dtype)
