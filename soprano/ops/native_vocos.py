"""Tensor-level wrappers of the native Vocos decoder ops (the cpu backend of embed_norm,
convnext_block, istft_frames and istft).

Contracts are ``soprano.ops.reference``'s. These wrappers check shapes, dtypes, devices and
contiguity and pass raw pointers; ``csrc/cpu/vocos_params.h`` checks sizes, pointers and every
``src`` row against the input.
"""
import torch

from .native import _C, _DTYPE_NAMES
from .reference import MAX_MAGNITUDE


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


def _spectrum(op: str, spec: torch.Tensor, window: torch.Tensor,
              max_magnitude: float) -> torch.Tensor:
    """Head rows [..., n_fft + 2] -> complex64 [N, n_fft // 2 + 1] (exp, clip, polar, DC and
    Nyquist zeroed), in C++."""
    if _C is None:
        raise RuntimeError(f"{op}: soprano._C is not built; use soprano.ops.reference")
    n_fft = window.shape[0]
    if spec.shape[-1] != n_fft + 2 or spec.device.type != "cpu" or window.device.type != "cpu":
        raise ValueError(f"{op}: spec must be [..., n_fft + 2 = {n_fft + 2}] on cpu, got "
                         f"{list(spec.shape)} on {spec.device}")
    _check(op, "window", window, (n_fft,))
    rows = spec.reshape(-1, n_fft + 2).float().contiguous()
    bins = n_fft // 2 + 1
    out = torch.empty(rows.shape[0], bins, dtype=torch.complex64)
    _C.istft_spectrum_cpu(rows.data_ptr(), rows.shape[0], bins, n_fft + 2, max_magnitude,
                          out.data_ptr())
    return out


def istft_frames_cpu(spec: torch.Tensor, window: torch.Tensor,
                     max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    """The head's windowed frames: the spectrum in C++, the inverse DFT by torch.fft (pocketfft
    or MKL), the window multiplied in place."""
    spectrum = _spectrum("istft_frames_cpu", spec, window, max_magnitude)
    if spectrum.shape[0] == 0:  # MKL's FFT rejects an empty batch
        return torch.zeros(0, window.shape[0])
    return torch.fft.irfft(spectrum, n=window.shape[0]).mul_(window)


def istft_cpu(spec: torch.Tensor, window: torch.Tensor, hop: int,
              max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    """Whole sequences: the spectrum in C++, torch.fft's inverse DFT, then window, overlap-add,
    envelope division and trim in one C++ pass."""
    B, F = spec.shape[0], spec.shape[1]
    if F < 2:
        return torch.zeros(B, 0)
    frames = torch.fft.irfft(_spectrum("istft_cpu", spec, window, max_magnitude), n=window.shape[0])
    out = torch.empty(B, hop * (F - 1))
    _C.istft_overlap_add_cpu(frames.data_ptr(), window.data_ptr(), B, F, window.shape[0], hop,
                             out.data_ptr())
    return out
