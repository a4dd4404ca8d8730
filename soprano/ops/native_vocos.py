"""Tensor-level wrappers of the native Vocos decoder ops (the cpu and cuda backends of
embed_norm, convnext_block, istft_frames and istft; on the CPU also vocos_layers, a whole
decoder pass in one call).

Contracts are ``soprano.ops.reference``'s. These wrappers check shapes, dtypes, devices and
contiguity and pass raw pointers; ``csrc/vocos_params.h`` checks sizes and pointers, and on the
CPU every ``src`` row against the input (on the GPU the wrapper does, with one device read).
"""
from dataclasses import dataclass

import torch

from .bf16_dots import Bf16DotsMatrix
from .dft import inverse_basis
from .native import _C, _DTYPE_NAMES
from .quantized import QuantMatrix
from .reference import MAX_MAGNITUDE


def _device(op: str) -> str:
    return op.rsplit("_", 1)[1]


def _check(op: str, name: str, t: torch.Tensor, shape: tuple, dtypes=(torch.float32,)) -> None:
    device = _device(op)
    if tuple(t.shape) != shape or t.dtype not in dtypes or t.device.type != device or (
            not t.is_contiguous()):
        names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{op}: {name} must be contiguous {names} {list(shape)} on {device}, "
                         f"got {str(t.dtype).removeprefix('torch.')} {list(t.shape)} on "
                         f"{t.device}")


def _built(op: str) -> None:
    if _C is None:
        raise RuntimeError(f"{op}: soprano._C is not built; use soprano.ops.reference")
    if _device(op) == "cuda" and not _C.has_cuda():
        raise RuntimeError(f"{op}: soprano._C was built without CUDA")


def _rows(op: str, x: torch.Tensor, src: torch.Tensor, taps: int) -> tuple[int, int]:
    _built(op)
    if x.dim() != 2 or src.dim() != 1:
        raise ValueError(f"{op}: x must be [R, width] and src [M], got {list(x.shape)} and "
                         f"{list(src.shape)}")
    _check(op, "x", x, tuple(x.shape))
    _check(op, "src", src, tuple(src.shape), (torch.int64,))
    if _device(op) == "cuda" and src.numel():  # the CPU kernels check every row themselves
        lo, hi = torch.aminmax(src)
        if int(lo) < 0 or int(hi) + taps > x.shape[0]:
            raise ValueError(f"{op}: src rows must lie in 0..{x.shape[0] - taps}, got "
                             f"{int(lo)}..{int(hi)}")
    return x.shape[0], src.shape[0]


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _matrix(op: str, name: str, w, shape: tuple) -> tuple[int, str]:
    """(pointer, type name) of a pointwise matrix: float, or on the CPU a QuantMatrix (checked
    in C++: its type, and its rows whole blocks) or a Bf16DotsMatrix."""
    if isinstance(w, Bf16DotsMatrix):
        _check(op, name, w.weight, shape, (torch.bfloat16,))
        return w.weight.data_ptr(), "bfloat16_dots"
    if isinstance(w, QuantMatrix):
        if w.shape != shape or w.device.type != _device(op) or not w.is_contiguous():
            raise ValueError(f"{op}: {name} must be a contiguous {list(shape)} QuantMatrix on "
                             f"{_device(op)}, got {list(w.shape)} on {w.device}")
        return w.raw.data_ptr(), w.type_name
    _check(op, name, w, shape, tuple(_DTYPE_NAMES))
    return w.data_ptr(), _DTYPE_NAMES[w.dtype]


def _block_ptrs(op: str, D: int, k: int, dw_weight, dw_bias, norm_weight, norm_bias, w1, b1,
                w2, b2, gamma) -> tuple:
    """A ConvNeXt block's pointers and matrix types, in the kernels' order, after checking its
    weights for width D and k taps."""
    _check(op, "dw_weight", dw_weight, (D, 1, k))
    for name, t in (("dw_bias", dw_bias), ("norm_weight", norm_weight),
                    ("norm_bias", norm_bias), ("b2", b2), ("gamma", gamma)):
        _check(op, name, t, (D,))
    _check(op, "b1", b1, (3 * D,))
    w1_ptr, w1_type = _matrix(op, "w1", w1, (3 * D, D))
    w2_ptr, w2_type = _matrix(op, "w2", w2, (D, 3 * D))
    return (dw_weight.data_ptr(), dw_bias.data_ptr(), norm_weight.data_ptr(),
            norm_bias.data_ptr(), w1_ptr, b1.data_ptr(), w2_ptr, b2.data_ptr(), gamma.data_ptr(),
            w1_type, w2_type)


def _taps(op: str, dw_weight: torch.Tensor) -> int:
    if dw_weight.dim() != 3:
        raise ValueError(f"{op}: dw_weight must be [D, 1, k], got {list(dw_weight.shape)}")
    return dw_weight.shape[-1]


def _convnext_block(op, x, src, dw_weight, dw_bias, norm_weight, norm_bias, w1, b1, w2, b2,
                    gamma, eps: float) -> torch.Tensor:
    k = _taps(op, dw_weight)
    rows, M = _rows(op, x, src, k)
    D = x.shape[1]
    ptrs = _block_ptrs(op, D, k, dw_weight, dw_bias, norm_weight, norm_bias, w1, b1, w2, b2,
                       gamma)
    y = torch.empty(M, D, device=x.device)
    args = (x.data_ptr(), rows, D, src.data_ptr(), M, k, *ptrs, eps, y.data_ptr())
    if x.device.type == "cpu":
        _C.convnext_block_cpu(*args)
    elif M:
        workspace = torch.empty(4 * M * D, device=x.device)
        with torch.cuda.device(x.device):
            _C.convnext_block_cuda(*args, workspace.data_ptr(), _stream(x))
    return y


def convnext_block_cpu(*args) -> torch.Tensor:
    return _convnext_block("convnext_block_cpu", *args)


def convnext_block_cuda(*args) -> torch.Tensor:
    return _convnext_block("convnext_block_cuda", *args)


def _embed_norm(op, x, src, weight, bias, norm_weight, norm_bias, eps: float) -> torch.Tensor:
    if weight.dim() != 3:
        raise ValueError(f"{op}: weight must be [D, C, k], got {list(weight.shape)}")
    D, k = weight.shape[0], weight.shape[-1]
    rows, M = _rows(op, x, src, k)
    C = x.shape[1]
    _check(op, "weight", weight, (D, C, k), tuple(_DTYPE_NAMES))
    for name, t in (("bias", bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        _check(op, name, t, (D,))
    y = torch.empty(M, D, device=x.device)
    args = (x.data_ptr(), rows, C, src.data_ptr(), M, k, weight.data_ptr(),
            _DTYPE_NAMES[weight.dtype], D, bias.data_ptr(), norm_weight.data_ptr(),
            norm_bias.data_ptr(), eps, y.data_ptr())
    if x.device.type == "cpu":
        _C.embed_norm_cpu(*args)
    elif M:
        with torch.cuda.device(x.device):
            _C.embed_norm_cuda(*args, _stream(x))
    return y


def embed_norm_cpu(*args) -> torch.Tensor:
    return _embed_norm("embed_norm_cpu", *args)


def embed_norm_cuda(*args) -> torch.Tensor:
    return _embed_norm("embed_norm_cuda", *args)


def _head_rows(op: str, spec: torch.Tensor, window: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(n_fft, the head rows as contiguous fp32 [N, n_fft + 2]), after checking them."""
    _built(op)
    n_fft = window.shape[0]
    device = _device(op)
    if spec.shape[-1] != n_fft + 2 or spec.device.type != device:
        raise ValueError(f"{op}: spec must be [..., n_fft + 2 = {n_fft + 2}] on {device}, got "
                         f"{list(spec.shape)} on {spec.device}")
    _check(op, "window", window, (n_fft,))
    return n_fft, spec.reshape(-1, n_fft + 2).float().contiguous()


# Up to this many rows the head's frames take one C++ pass with pocketfft's inverse DFT; above
# it, where torch has MKL, the spectrum pass and torch.fft's: MKL's transform is ~3x pocketfft's
# (Intel Xeon, 2 threads, 2026-12-02, with spectrum and window: 4 rows 23 us against 44, 16 rows
# 43 against 57, 64 rows 162 against 106, 509 rows 1307 against 671).
_POCKETFFT_UP_TO_ROWS = 32


def _frames_cpu(op: str, spec: torch.Tensor, window: torch.Tensor, max_magnitude: float,
                windowed: bool) -> torch.Tensor:
    """Head rows [..., n_fft + 2] -> inverse-DFT frames [N, n_fft], times the window when
    ``windowed``."""
    n_fft, rows = _head_rows(op, spec, window)
    N = rows.shape[0]
    if N > _POCKETFFT_UP_TO_ROWS and torch.backends.mkl.is_available():
        bins = n_fft // 2 + 1
        spectrum = torch.empty(N, bins, dtype=torch.complex64)
        _C.istft_spectrum_cpu(rows.data_ptr(), N, bins, n_fft + 2, max_magnitude,
                              spectrum.data_ptr())
        frames = torch.fft.irfft(spectrum, n=n_fft)
        return frames.mul_(window) if windowed else frames
    out = torch.empty(N, n_fft)
    _C.istft_frames_cpu(rows.data_ptr(), window.data_ptr() if windowed else 0, N, n_fft,
                        n_fft + 2, max_magnitude, out.data_ptr())
    return out


def istft_frames_cpu(spec: torch.Tensor, window: torch.Tensor,
                     max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    """The head's windowed frames."""
    return _frames_cpu("istft_frames_cpu", spec, window, max_magnitude, windowed=True)


def istft_cpu(spec: torch.Tensor, window: torch.Tensor, hop: int,
              max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    """Whole sequences: the frames, then window, overlap-add, envelope division and trim in a
    second C++ pass."""
    B, F = spec.shape[0], spec.shape[1]
    if F < 2:
        return torch.zeros(B, 0)
    frames = _frames_cpu("istft_cpu", spec, window, max_magnitude, windowed=False)
    out = torch.empty(B, hop * (F - 1))
    _C.istft_overlap_add_cpu(frames.data_ptr(), window.data_ptr(), B, F, window.shape[0], hop,
                             out.data_ptr())
    return out


def overlap_add_stream_cpu(frames: torch.Tensor, window: torch.Tensor, tail: torch.Tensor,
                           first_frame: int, hop: int,
                           final: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A streamed piece's overlap-add in one C++ pass (``runtime.streaming._overlap_add``'s
    contract): windowed frames [n, n_fft] after ``first_frame`` earlier ones and their tail
    [n_fft - hop] -> (the samples now final, the next tail)."""
    op = "istft_overlap_add_stream_cpu"
    _built(op)
    n_fft = window.shape[0]
    _check(op, "window", window, (n_fft,))
    _check(op, "tail", tail, (n_fft - hop,))
    _check(op, "frames", frames, (frames.shape[0], n_fft))
    out = torch.empty(hop * (frames.shape[0] + 1))
    next_tail = torch.empty(n_fft - hop)
    count = _C.istft_overlap_add_stream_cpu(frames.data_ptr(), window.data_ptr(),
                                            tail.data_ptr(), frames.shape[0], first_frame, n_fft,
                                            hop, final, next_tail.data_ptr(), out.data_ptr())
    return out[:count], next_tail


def _frames_cuda(op: str, spec: torch.Tensor, window: torch.Tensor, max_magnitude: float,
                 windowed: bool) -> torch.Tensor:
    n_fft, rows = _head_rows(op, spec, window)
    out = torch.empty(rows.shape[0], n_fft, device=spec.device)
    if rows.shape[0]:
        with torch.cuda.device(spec.device):
            _C.istft_frames_cuda(rows.data_ptr(), inverse_basis(n_fft, spec.device).data_ptr(),
                                 window.data_ptr() if windowed else 0, rows.shape[0], n_fft,
                                 max_magnitude, out.data_ptr(), _stream(spec))
    return out


def istft_frames_cuda(spec: torch.Tensor, window: torch.Tensor,
                      max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    """The inverse DFT as a GEMM over ``inverse_basis``, the head's exp/clip/cos/sin on load and
    the window in the epilogue."""
    return _frames_cuda("istft_frames_cuda", spec, window, max_magnitude, windowed=True)


def istft_cuda(spec: torch.Tensor, window: torch.Tensor, hop: int,
               max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    """Unwindowed frames from the GEMM, then window, overlap-add, envelope division and trim in
    one kernel."""
    B, F = spec.shape[0], spec.shape[1]
    if F < 2:
        return torch.zeros(B, 0, device=spec.device)
    frames = _frames_cuda("istft_cuda", spec, window, max_magnitude, windowed=False)
    out = torch.empty(B, hop * (F - 1), device=spec.device)
    with torch.cuda.device(spec.device):
        _C.istft_overlap_add_cuda(frames.data_ptr(), window.data_ptr(), B, F, window.shape[0],
                                  hop, out.data_ptr(), _stream(spec))
    return out


@dataclass(eq=False)
class PendingRows:
    """A stream's rows the decoder's convolutions still need (``VocosLayersCpu``'s layout):
    per layer up to 2 radius rows at fixed offsets of ``rows``, their counts in ``counts``."""
    rows: torch.Tensor    # fp32 [pending_floats]
    counts: torch.Tensor  # int64 [layers]


class VocosLayersCpu:
    """A Vocos decoder's embed, ConvNeXt blocks, final LayerNorm and head over the pieces of
    many streams, one native call a pass (``VocosDecoder.run_layers``'s contract, with
    ``PendingRows`` as each stream's pending state). The weights are checked once, here, and
    held so they outlive the native object."""

    def __init__(self, w, eps: float):
        _built("vocos_layers_cpu")
        op = "vocos_layers_cpu"
        D, C, k = w.embed_weight.shape
        _check(op, "embed_weight", w.embed_weight, (D, C, k), tuple(_DTYPE_NAMES))
        for name, t in (("embed_bias", w.embed_bias), ("norm_weight", w.norm_weight),
                        ("norm_bias", w.norm_bias), ("final_norm_weight", w.final_norm_weight),
                        ("final_norm_bias", w.final_norm_bias)):
            _check(op, name, t, (D,))
        blocks = []
        for b in w.blocks:
            bk = _taps(op, b.dw_weight)
            blocks.append((bk, *_block_ptrs(op, D, bk, b.dw_weight, b.dw_bias, b.norm_weight,
                                            b.norm_bias, b.w1, b.b1, b.w2, b.b2, b.gamma)))
        head_rows = w.head_weight.shape[0]
        head_ptr, head_type = _matrix(op, "head_weight", w.head_weight, (head_rows, D))
        _check(op, "head_bias", w.head_bias, (head_rows,))
        self._keep = w
        self.radii = [k // 2] + [b.dw_weight.shape[-1] // 2 for b in w.blocks]
        self.head_rows = head_rows
        self._native = _C.VocosLayersCpu(
            C, D, k, w.embed_weight.data_ptr(), _DTYPE_NAMES[w.embed_weight.dtype],
            w.embed_bias.data_ptr(), w.norm_weight.data_ptr(), w.norm_bias.data_ptr(), blocks,
            w.final_norm_weight.data_ptr(), w.final_norm_bias.data_ptr(), head_ptr, head_type,
            head_rows, w.head_bias.data_ptr(), eps)

    def fresh_pending(self) -> PendingRows:
        """A stream with nothing decoded: each layer's left zero padding."""
        return PendingRows(torch.zeros(self._native.pending_floats),
                           torch.tensor(self.radii, dtype=torch.int64))

    def __call__(self, pending: list[PendingRows], frames: list[torch.Tensor],
                 final: list[bool]) -> tuple[list[torch.Tensor], list[PendingRows]]:
        if not len(pending) == len(frames) == len(final):
            raise ValueError(f"vocos_layers_cpu: {len(pending)} pending states, {len(frames)} "
                             f"frame blocks and {len(final)} final flags must match")
        C = self._keep.embed_weight.shape[1]
        frames = [f.float().contiguous() for f in frames]
        for f in frames:
            if f.dim() != 2 or f.shape[1] != C or f.device.type != "cpu":
                raise ValueError(f"vocos_layers_cpu: frames must be [n, {C}] on cpu, got "
                                 f"{list(f.shape)} on {f.device}")
        floats, layers = self._native.pending_floats, len(self.radii)
        for p in pending:
            if not (isinstance(p, PendingRows) and p.rows.shape == (floats,)
                    and p.counts.shape == (layers,) and p.rows.dtype == torch.float32
                    and p.counts.dtype == torch.int64 and p.rows.is_contiguous()
                    and p.counts.is_contiguous() and p.rows.device.type == "cpu"
                    and p.counts.device.type == "cpu"):
                raise ValueError("vocos_layers_cpu: pending states must come from this "
                                 "decoder's fresh_pending() or an earlier pass")
        receptive = sum(self.radii)
        bound = sum(f.shape[0] + (receptive if last else 0) for f, last in zip(frames, final))
        spec = torch.empty(bound, self.head_rows)
        after = [PendingRows(torch.empty(self._native.pending_floats),
                             torch.empty(len(self.radii), dtype=torch.int64)) for _ in pending]
        counts = self._native.run([p.rows.data_ptr() for p in pending],
                                  [p.counts.data_ptr() for p in pending],
                                  [a.rows.data_ptr() for a in after],
                                  [a.counts.data_ptr() for a in after],
                                  [f.data_ptr() for f in frames], [f.shape[0] for f in frames],
                                  list(final), spec.data_ptr(), bound)
        return list(spec[:sum(counts)].split(counts)), after
