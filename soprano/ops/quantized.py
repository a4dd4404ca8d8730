"""Matmul weights kept as GGUF blocks in memory, and the reference of multiplying by them.

A decode step reads every weight once, so on a CPU its time is the weight bytes over memory
bandwidth: a Q8_0 matrix is 8.5 bits a weight and a Q4_K one 4.5, against 16 for the fp16 that
dequantizing at load would give. ``QuantMatrix`` holds such a matrix as its file stores it (one
row of whole blocks per output feature), so rows of matrices of one type concatenate (q|k|v,
gate|up) without decoding, and a ``RowStack`` holds such a stack whose parts differ in type. The
backend table multiplies them with ``quant_linear``; whatever has no kernel for them asks for
``dequantized()``.
"""
from dataclasses import dataclass

import torch

from ..gguf import interleave

# Q8_0, Q4_0, Q4_K, Q5_K and Q6_K with the blocks of 8 rows interleaved (``gguf.interleave``):
# this project's in-memory layouts for the CPU kernels, not ggml types.
Q8_0X8, Q4_0X8, Q4_KX8, Q5_KX8, Q6_KX8 = (interleave.X8_LAYOUTS[t] for t in (8, 2, 12, 13, 14))
# The types the CPU kernels multiply in their blocks: ggml's, and their x8 layouts, which a CPU
# table gives such a matrix at load (OpTable.native_layout).
GGML_MATMUL_TYPES = interleave.BLOCK_TYPES
QUANT_MATMUL_TYPES = {**GGML_MATMUL_TYPES, "Q8_0x8": Q8_0X8, "Q4_0x8": Q4_0X8,
                      "Q4_Kx8": Q4_KX8, "Q5_Kx8": Q5_KX8, "Q6_Kx8": Q6_KX8}
_Q8_0, _Q4_0, _Q4_K, _Q5_K, _Q6_K = 8, 2, 12, 13, 14
# each x8 layout: (its ggml type, its name, bytes per row and block)
_X8 = {Q8_0X8: (_Q8_0, "Q8_0x8", 34), Q4_0X8: (_Q4_0, "Q4_0x8", 18),
       Q4_KX8: (_Q4_K, "Q4_Kx8", 148), Q5_KX8: (_Q5_K, "Q5_Kx8", 180),
       Q6_KX8: (_Q6_K, "Q6_Kx8", 210)}
_X8_OF = {ggml: layout for layout, (ggml, _, _) in _X8.items()}
# ggml type id of the float dtypes, as the native step takes every matrix's type.
FLOAT_TYPE_IDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 30}


def block_layout(qtype: int) -> tuple[int, int]:
    """(values, bytes) per block and row of ggml type ``qtype`` or of an x8 layout."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    if qtype in _X8:
        ggml, _, size = _X8[qtype]
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml)][0], size
    return GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]


class _Blocks:
    """What a weight kept as bytes (``raw``) answers like a tensor."""

    @property
    def device(self) -> torch.device:
        return self.raw.device

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    def is_contiguous(self) -> bool:
        return self.raw.is_contiguous()


@dataclass(frozen=True, eq=False)
class QuantMatrix(_Blocks):
    """A [N, K] weight as GGUF blocks: ``raw`` uint8 [N, K / block * bytes] of ggml type
    ``qtype``."""
    raw: torch.Tensor
    qtype: int
    shape: tuple[int, int]

    def __post_init__(self):
        block, size = block_layout(self.qtype)
        N, K = self.shape
        if (K % block or self.raw.dtype != torch.uint8
                or tuple(self.raw.shape) != (N, K // block * size)):
            raise ValueError(f"QuantMatrix: {self.type_name} [{N}, {K}] needs uint8 "
                             f"[{N}, {K // block * size}] (K a multiple of {block}), got "
                             f"{self.raw.dtype} {list(self.raw.shape)}")

    @property
    def type_name(self) -> str:
        if self.qtype in _X8:
            return _X8[self.qtype][1]
        from gguf.constants import GGMLQuantizationType
        return GGMLQuantizationType(self.qtype).name

    def dequantized(self, dtype: torch.dtype = torch.float32, ops=None) -> torch.Tensor:
        """The weight as floats [N, K], by ``ops.dequantize`` (a table's) or the reference."""
        if self.qtype in _X8:
            return deinterleave_rows8(self).dequantized(dtype, ops)
        from . import reference
        fn = ops.dequantize if ops is not None else reference.dequantize
        N, K = self.shape
        return fn(self.raw.reshape(-1), self.qtype, N * K, dtype).reshape(N, K)


def interleave_rows8(m: QuantMatrix) -> QuantMatrix:
    """Q8_0, Q4_0, Q4_K, Q5_K or Q6_K ``m`` (N a multiple of 8) in its x8 layout
    (``soprano.gguf.interleave``)."""
    N, K = m.shape
    if m.qtype not in _X8_OF or N % 8:
        raise ValueError(f"interleave_rows8: needs Q8_0, Q4_0, Q4_K, Q5_K or Q6_K with rows a "
                         f"multiple of 8, got {m.type_name} [{N}, {K}]")
    raw = interleave.interleave_rows8(m.raw.cpu().numpy(), m.qtype, K // block_layout(m.qtype)[0])
    return QuantMatrix(torch.from_numpy(raw).to(m.raw.device), _X8_OF[m.qtype], m.shape)


def deinterleave_rows8(m: QuantMatrix) -> QuantMatrix:
    """The ggml matrix an x8 one interleaves (``interleave_rows8``'s inverse)."""
    ggml = _X8[m.qtype][0]
    raw = interleave.deinterleave_rows8(m.raw.cpu().numpy(), ggml,
                                        m.shape[1] // block_layout(m.qtype)[0])
    return QuantMatrix(torch.from_numpy(raw).to(m.raw.device), ggml, m.shape)


@dataclass(frozen=True, eq=False)
class RowStack(_Blocks):
    """A [N, K] weight stacked by rows from QuantMatrix parts of different types, as q|k|v is in
    llama.cpp's _M files (Q4_K_M: v in Q6_K in a third of the layers, q and k in Q4_K). ``raw``
    holds the parts' bytes one after another, so a native kernel reads them from one pointer;
    ``parts()`` gives them back as QuantMatrix views."""
    raw: torch.Tensor
    runs: tuple[tuple[int, int], ...]  # (ggml type, rows) per part, in row order
    K: int

    @classmethod
    def of(cls, parts: list[QuantMatrix]) -> "RowStack":
        return cls(torch.cat([p.raw.reshape(-1) for p in parts]),
                   tuple((p.qtype, p.shape[0]) for p in parts), parts[0].shape[1])

    def parts(self) -> list[QuantMatrix]:
        out, start = [], 0
        for qtype, rows in self.runs:
            block, size = block_layout(qtype)
            n = rows * self.K // block * size
            out.append(QuantMatrix(self.raw[start:start + n].view(rows, -1), qtype,
                                   (rows, self.K)))
            start += n
        return out

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(rows for _, rows in self.runs), self.K)

    @property
    def type_name(self) -> str:
        return "|".join(p.type_name for p in self.parts())

    def dequantized(self, dtype: torch.dtype = torch.float32, ops=None) -> torch.Tensor:
        return torch.cat([p.dequantized(dtype, ops) for p in self.parts()])


def cat_rows(parts: list, ops=None):
    """Matrices stacked by rows (q|k|v, gate|up): one ``QuantMatrix`` when every part is one of
    the same type, a ``RowStack`` when they are QuantMatrix parts of different types, else float
    tensors (quantized parts decoded to fp16, the parts' common type taken by torch.cat's
    promotion)."""
    if all(isinstance(p, QuantMatrix) for p in parts) and len(
            {p.shape[1] for p in parts}) == 1:
        if len({p.qtype for p in parts}) > 1:
            return RowStack.of(parts)
        return QuantMatrix(torch.cat([p.raw for p in parts]), parts[0].qtype,
                           (sum(p.shape[0] for p in parts), parts[0].shape[1]))
    floats = [p.dequantized(torch.float16, ops) if isinstance(p, QuantMatrix) else p
              for p in parts]
    return torch.cat(floats)


def matrix_runs(w) -> list[tuple[int, int]]:
    """The (ggml type, rows) parts of a matmul weight, as the native step takes them: a
    RowStack's, or the one of a QuantMatrix or a float tensor."""
    if isinstance(w, RowStack):
        return list(w.runs)
    qtype = w.qtype if isinstance(w, QuantMatrix) else FLOAT_TYPE_IDS[w.dtype]
    return [(qtype, w.shape[0])]


def raw_pointer(w) -> int:
    """Where a matmul weight's bytes start."""
    return w.raw.data_ptr() if isinstance(w, (QuantMatrix, RowStack)) else w.data_ptr()


def quantize_activations(x: torch.Tensor, block: int) -> torch.Tensor:
    """x [..., K] as the CPU kernels' int8 dots see it: per block of ``block`` values d = amax /
    127 and q = round-half-even(x * (127 / amax)) in fp32 (q = 0 where amax is 0, or so small
    that 127 / amax overflows), returned as d * q (float64). A test oracle: the native result
    equals the plain matmul over these values up to summation order."""
    xb = x.float().reshape(*x.shape[:-1], -1, block)
    amax = xb.abs().amax(-1, keepdim=True)
    inverse = torch.tensor(127.0) / amax
    scale = torch.where((amax > 0) & inverse.isfinite(), inverse, torch.zeros_like(amax))
    q = torch.round(xb * scale)
    return (q.double() * (amax / 127.0).double()).reshape(x.shape)
