"""Tensor-level wrappers of the native Vocos decoder ops (the cpu backend of embed_norm and
convnext_block).

Contracts are ``soprano.ops.reference``'s. These wrappers check shapes, dtypes, devices and
contiguity and pass raw pointers; ``csrc/cpu/vocos_params.h`` checks sizes, pointers and every
``src`` row against the input.
"""
import torch

from .native import _C, _DTYPE_NAMES


def _check(op: str, name: str, t: torch.Tensor, shape: tuple, dtypes=(torch.float32,)) -> None:
    if tuple(t.shape) != shape or t.dtype not in dtypes or t.device.type != "cpu" or (
            not t.is_contiguous()):
        names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{op}: {name} must be contiguous {names} {list(shape)} on cpu, got "
                         f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)} on {t.device}")


def _rows(op: str, x: torch.Tensor, src: torch.Tensor) -> tuple[int, int]:
    if _C is None:
        raise RuntimeError(f"{op}: soprano._C is not built; use soprano.ops.reference")
    if x.dim() != 2 or src.dim() != 1:
        raise ValueError(f"{op}: x must be [R, width] and src [M], got {list(x.shape)} and "
                         f"{list(src.shape)}")
    _check(op, "x", x, tuple(x.shape))
    _check(op, "src", src, tuple(src.shape), (torch.int64,))
    return x.shape[0], src.shape[0]


def convnext_block_cpu(x, src, dw_weight, dw_bias, norm_weight, norm_bias, w1, b1, w2, b2,
                       gamma, eps: float) -> torch.Tensor:
    op = "convnext_block_cpu"
    rows, M = _rows(op, x, src)
    D = x.shape[1]
    if dw_weight.dim() != 3:
        raise ValueError(f"{op}: dw_weight must be [D, 1, k], got {list(dw_weight.shape)}")
    k = dw_weight.shape[-1]
    _check(op, "dw_weight", dw_weight, (D, 1, k))
    for name, t in (("dw_bias", dw_bias), ("norm_weight", norm_weight),
                    ("norm_bias", norm_bias), ("b2", b2), ("gamma", gamma)):
        _check(op, name, t, (D,))
    _check(op, "b1", b1, (3 * D,))
    _check(op, "w1", w1, (3 * D, D), tuple(_DTYPE_NAMES))
    _check(op, "w2", w2, (D, 3 * D), (w1.dtype,))
    y = torch.empty(M, D)
    _C.convnext_block_cpu(x.data_ptr(), rows, D, src.data_ptr(), M, k, dw_weight.data_ptr(),
                          dw_bias.data_ptr(), norm_weight.data_ptr(), norm_bias.data_ptr(),
                          w1.data_ptr(), b1.data_ptr(), w2.data_ptr(), b2.data_ptr(),
                          gamma.data_ptr(), _DTYPE_NAMES[w1.dtype], eps, y.data_ptr())
    return y


def embed_norm_cpu(x, src, weight, bias, norm_weight, norm_bias, eps: float) -> torch.Tensor:
    op = "embed_norm_cpu"
    rows, M = _rows(op, x, src)
    C = x.shape[1]
    if weight.dim() != 3:
        raise ValueError(f"{op}: weight must be [D, C, k], got {list(weight.shape)}")
    D, k = weight.shape[0], weight.shape[-1]
    _check(op, "weight", weight, (D, C, k), tuple(_DTYPE_NAMES))
    for name, t in (("bias", bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        _check(op, name, t, (D,))
    y = torch.empty(M, D)
    _C.embed_norm_cpu(x.data_ptr(), rows, C, src.data_ptr(), M, k, weight.data_ptr(),
                      _DTYPE_NAMES[weight.dtype], D, bias.data_ptr(), norm_weight.data_ptr(),
                      norm_bias.data_ptr(), eps, y.data_ptr())
    return y
