"""Tensor-level wrappers of the native GGUF kernels: dequantize (cpu and cuda backends) and the
CPU matmul over weights kept in their blocks.

Contracts: ``soprano.ops.reference.dequantize`` and ``quant_linear``. The arguments are checked
here, as the reference checks them (``check_dequantize``), and again on raw pointers by
``csrc/gguf_dequant_params.h`` and ``csrc/cpu/quant_linear.cpp``.
"""
import torch

from .native import _C, _DTYPE_NAMES
from .quantized import QUANT_MATMUL_TYPES, QuantMatrix
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


def quant_isa() -> str:
    """The instruction set the CPU int8 dots use here: avx512, avx512vnni, avx2 or portable."""
    return _C.quant_isa() if _C is not None else "portable"


def has_int8_tiles() -> bool:
    """Whether the x8 layouts' matrices take the tile unit (AMX-INT8), Q8_0's from 5 rows of x,
    Q5_K's from 8, the others' from 16, and ``quant_linear_cpu(..., isa="amx")`` runs here."""
    return _C is not None and _C.int8_tiles_available()


def quant_linear_cpu(x: torch.Tensor, w: QuantMatrix, bias: torch.Tensor | None = None,
                     isa: str = "auto", fp32_rows: bool = False) -> torch.Tensor:
    """fp32 x [..., K] @ w^T (+ bias [N]) with ``w`` a QuantMatrix of Q8_0, Q4_0, Q4_K, Q5_K or
    Q6_K blocks, on CPU -> fp32 [..., N]. Fewer than 16 rows (32 for the K-quants): x quantized
    to int8 per block and integer dots, each weight block unpacked once for four rows (``isa``
    forces that path and its instruction set: portable, avx2, avx512vnni, avx512, or amx: the x8
    layouts on the tile unit, the same bits as avx512); more: the weight decoded to fp32, a
    task's rows at a time, into the fp32 GEMM (the x8 layouts keep their int8 dots, on the tile
    unit where the CPU has AMX-INT8: Q8_0's from 5 rows, Q5_K's from 8, the others' from 16).
    ``fp32_rows``: the decoder's exact fp32 math at every row count (row tiles over decoded
    weights; a pinned ``isa`` pins their vector width)."""
    if _C is None:
        raise RuntimeError("soprano._C is not built; use soprano.ops.reference.quant_linear")
    if not isinstance(w, QuantMatrix) or w.qtype not in QUANT_MATMUL_TYPES.values():
        raise ValueError(f"quant_linear_cpu: w must be a QuantMatrix of "
                         f"{', '.join(QUANT_MATMUL_TYPES)}, got {type(w).__name__}"
                         + (f" {w.type_name}" if isinstance(w, QuantMatrix) else ""))
    if x.device.type != "cpu" or w.device.type != "cpu" or x.dtype != torch.float32:
        raise ValueError(f"quant_linear_cpu: needs float32 x and w on cpu, got {x.dtype} on "
                         f"{x.device}, w on {w.device}")
    N, K = w.shape
    if x.shape[-1] != K or not w.is_contiguous():
        raise ValueError(f"quant_linear_cpu: x {tuple(x.shape)} and a contiguous w [N, K] "
                         f"[{N}, {K}] must agree on K")
    if bias is not None and (bias.shape != (N,) or bias.dtype != torch.float32):
        raise ValueError(f"quant_linear_cpu: bias must be float32 ({N},), got "
                         f"{tuple(bias.shape)} {bias.dtype}")
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(*x.shape[:-1], N, dtype=torch.float32)
    if x2.shape[0] == 0:
        return y
    _C.quant_linear_cpu(x2.data_ptr(), w.raw.data_ptr(), y.data_ptr(), x2.shape[0], N, K,
                        x2.stride(0), N, w.qtype, isa, fp32_rows)
    return y if bias is None else y.add_(bias)
