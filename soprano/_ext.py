"""Tensor-level wrappers around the native extension ``soprano._C``.

``_C`` takes raw pointers, sizes and stream handles so it never links libtorch (one build serves
every torch version). This module turns tensors into those arguments and checks them first: a
wrong shape or stride handed to C++ is a crash or silent garbage, not an exception.
"""
import warnings

import torch

try:
    import soprano._C as _C
except ImportError as err:
    _C = None
    warnings.warn(f"soprano._C is not built ({err}); ops fall back to torch", RuntimeWarning,
                  stacklevel=2)

_CUDA_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def has_native() -> bool:
    return _C is not None


def has_cuda_native() -> bool:
    return _C is not None and _C.has_cuda()


def _rows(name: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """View t (shaped like x) as [rows, hidden] without copying, or raise."""
    if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
        raise ValueError(f"rms_norm: {name} must match x ({tuple(x.shape)}, {x.dtype}, "
                         f"{x.device}), got {tuple(t.shape)}, {t.dtype}, {t.device}")
    try:
        return t.view(-1, x.shape[-1])
    except RuntimeError:
        raise ValueError(f"rms_norm: {name}'s leading dims must collapse into one stride "
                         f"(got strides {t.stride()}); pass a contiguous tensor") from None


def _prepare(x, weight, out, device_type: str, dtypes):
    if _C is None:
        raise RuntimeError("soprano._C is not built; use soprano.ops.rms_norm_reference")
    if x.device.type != device_type:
        raise ValueError(f"rms_norm_{device_type}: x must be on {device_type}, got {x.device}")
    if x.dtype not in dtypes:
        raise ValueError(f"rms_norm_{device_type}: dtype must be one of "
                         f"{[str(d) for d in dtypes]}, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"rms_norm: x needs a non-empty last dim, got shape {tuple(x.shape)}")
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"rms_norm: weight must be ({hidden},) {x.dtype} on {x.device}, got "
                         f"{tuple(weight.shape)} {weight.dtype} on {weight.device}")
    if x.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError(f"rms_norm: x and weight need a contiguous last dim, got strides "
                         f"{x.stride()} and {weight.stride()}")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.stride(-1) != 1:
        raise ValueError(f"rms_norm: out needs a contiguous last dim, got strides {out.stride()}")
    # reshape, not view: x whose leading dims don't collapse is copied rather than rejected.
    return out, x.reshape(-1, hidden), _rows("out", x, out)


def _args(x2, weight, out2):
    return (x2.data_ptr(), weight.data_ptr(), out2.data_ptr(), x2.shape[0], x2.shape[1],
            x2.stride(0), out2.stride(0))


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 RMSNorm over the last dim on CPU (C++, AVX2 when available, OpenMP over rows)."""
    # x2 may be a copy; holding it here keeps its memory alive through the call.
    out, x2, out2 = _prepare(x, weight, out, "cpu", (torch.float32,))
    _C.rms_norm(*_args(x2, weight, out2), eps)
    return out


def rms_norm_cuda(x: torch.Tensor, weight: torch.Tensor, eps: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim on the GPU, enqueued on torch's current stream."""
    out, x2, out2 = _prepare(x, weight, out, "cuda", tuple(_CUDA_DTYPES))
    # The kernel launches on the thread's current device, which must own the stream and x.
    with torch.cuda.device(x.device):
        _C.rms_norm_cuda(*_args(x2, weight, out2), eps, _CUDA_DTYPES[x.dtype],
                         torch.cuda.current_stream().cuda_stream)
    return out


_W16_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


def linear_w16_cpu(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """fp32 x [..., K] @ w [N, K]^T with a bf16/fp16 w, on CPU -> fp32 [..., N]."""
    if _C is None:
        raise RuntimeError("soprano._C is not built; use soprano.ops.linear_reference")
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise ValueError(f"linear_w16_cpu: tensors must be on cpu, got {x.device}, {w.device}")
    if x.dtype != torch.float32 or w.dtype not in _W16_DTYPES:
        raise ValueError(f"linear_w16_cpu: needs float32 x and bfloat16/float16 w, got "
                         f"{x.dtype} and {w.dtype}")
    if w.dim() != 2 or x.shape[-1] != w.shape[1] or not w.is_contiguous():
        raise ValueError(f"linear_w16_cpu: x {tuple(x.shape)} and a contiguous w [N, K] "
                         f"{tuple(w.shape)} must agree on K")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)
    if x2.shape[0] == 0:
        return y
    _C.linear_w16(x2.data_ptr(), w.data_ptr(), y.data_ptr(), x2.shape[0], w.shape[0],
                  w.shape[1], x2.stride(0), w.shape[0], _W16_DTYPES[w.dtype])
    return y
