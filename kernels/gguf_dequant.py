"""Triton dequantize of GGUF blocks (contract: ``soprano.ops.reference.dequantize``), bit-exact
against gguf-py's numpy decoder.

Each program decodes BLOCK consecutive values, each lane finding its own block, scale bytes and
quant bits (the block layouts are those of ``csrc/gguf_blocks.h``, which explains them): the
repeated scale loads hit the cache, and the stores are contiguous. The arithmetic is the
reference's, in its order, and launches with ``enable_fp_fusion=False`` so a multiply and an
add are never fused into an FMA (the products are exact anyway; see gguf_blocks.h). bf16 is
rounded by hand: the interpreter's fp32 -> bf16 cast truncates, the GPU's rounds to nearest even.
"""
import torch
import triton
import triton.language as tl

from soprano.ops.reference import check_dequantize

# ggml type ids (gguf.GGMLQuantizationType)
F16: tl.constexpr = tl.constexpr(1)
Q4_0: tl.constexpr = tl.constexpr(2)
Q4_1: tl.constexpr = tl.constexpr(3)
Q5_0: tl.constexpr = tl.constexpr(6)
Q5_1: tl.constexpr = tl.constexpr(7)
Q8_0: tl.constexpr = tl.constexpr(8)
Q4_K: tl.constexpr = tl.constexpr(12)
Q5_K: tl.constexpr = tl.constexpr(13)
Q6_K: tl.constexpr = tl.constexpr(14)
BF16: tl.constexpr = tl.constexpr(30)

BLOCK = 1024
# Launch options: no FMA contraction, on the GPU as in the tests' compile check.
OPTIONS = {"enable_fp_fusion": False, "num_warps": 4}


@triton.jit
def _byte(ptr, mask):
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _int8(ptr, mask):
    return (_byte(ptr, mask) ^ 128) - 128


@triton.jit
def _u16(ptr, mask):
    """Two little-endian bytes (blocks have odd sizes: fields are read byte by byte)."""
    return _byte(ptr, mask) | (_byte(ptr + 1, mask) << 8)


@triton.jit
def _half(ptr, mask):
    """An fp16 field -> fp32, exact."""
    return _u16(ptr, mask).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _legacy(raw_ptr, i, ok, QTYPE: tl.constexpr):
    """Q4_0, Q4_1, Q5_0, Q5_1: 32 values per block; byte l of the nibbles holds values l (low)
    and l + 16 (high); Q5's fifth bits are the bits of a little-endian uint32."""
    SIZE: tl.constexpr = 18 if QTYPE == Q4_0 else 20 if QTYPE == Q4_1 else \
        22 if QTYPE == Q5_0 else 24
    HAS_MIN: tl.constexpr = QTYPE == Q4_1 or QTYPE == Q5_1
    FIVE: tl.constexpr = QTYPE == Q5_0 or QTYPE == Q5_1
    QH: tl.constexpr = 4 if HAS_MIN else 2
    QS: tl.constexpr = QH + 4 if FIVE else QH
    blk = raw_ptr + (i // 32) * SIZE
    j = i % 32
    q = (_byte(blk + QS + j % 16, ok) >> ((j // 16) * 4)) & 15
    if FIVE:
        q = q | (((_byte(blk + QH + j // 8, ok) >> (j % 8)) & 1) << 4)
    d = _half(blk, ok)
    if HAS_MIN:
        v = d * q.to(tl.float32) + _half(blk + 2, ok)
    else:
        v = d * (q - (16 if FIVE else 8)).to(tl.float32)
    return v


@triton.jit
def _k_quant(raw_ptr, i, ok, FIVE: tl.constexpr):
    """Q4_K, Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes s: sub-block
    j < 4 in the low bits of s[j], s[j + 4]; j >= 4 in the nibbles of s[j + 4] plus the top bits
    of s[j - 4] (scale) and s[j] (min). (d * scale) * q - dmin * min."""
    SIZE: tl.constexpr = 176 if FIVE else 144
    QS: tl.constexpr = 48 if FIVE else 16
    blk = raw_ptr + (i // 256) * SIZE
    j = i % 256
    sub = j // 32
    lane = j % 32
    a = _byte(blk + 4 + sub, ok)
    b = _byte(blk + 8 + sub, ok)
    c = _byte(blk + 4 + tl.maximum(sub - 4, 0), ok)
    low = sub < 4
    sc = tl.where(low, a & 63, (b & 15) | ((c >> 6) << 4))
    mn = tl.where(low, b & 63, (b >> 4) | ((a >> 6) << 4))
    q = (_byte(blk + QS + (sub // 2) * 32 + lane, ok) >> ((sub % 2) * 4)) & 15
    if FIVE:
        q = q | (((_byte(blk + 16 + lane, ok) >> sub) & 1) << 4)
    d = _half(blk, ok) * sc.to(tl.float32)
    dm = _half(blk + 2, ok) * mn.to(tl.float32)
    return d * q.to(tl.float32) - dm


@triton.jit
def _q6_k(raw_ptr, i, ok):
    """Q6_K: two halves of 128 values: 64 bytes of low nibbles (byte l: l low, l + 64 high), 32
    of 2-bit pairs (byte l: l, l + 32, l + 64, l + 96), then 16 int8 scales and fp16 d."""
    blk = raw_ptr + (i // 256) * 210
    j = i % 256
    h = j // 128
    r = j % 128
    lo = (_byte(blk + h * 64 + r % 64, ok) >> ((r // 64) * 4)) & 15
    hi = (_byte(blk + 128 + h * 32 + r % 32, ok) >> ((r // 32) * 2)) & 3
    d = _half(blk + 208, ok) * _int8(blk + 192 + j // 16, ok).to(tl.float32)
    return d * ((lo | (hi << 4)) - 32).to(tl.float32)


@triton.jit
def _dequant_kernel(raw_ptr, out_ptr, n, QTYPE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    if QTYPE == F16:
        v = _half(raw_ptr + 2 * i, ok)
    elif QTYPE == BF16:
        v = (_u16(raw_ptr + 2 * i, ok) << 16).to(tl.float32, bitcast=True)
    elif QTYPE == Q8_0:
        blk = raw_ptr + (i // 32) * 34
        v = _int8(blk + 2 + i % 32, ok).to(tl.float32) * _half(blk, ok)
    elif QTYPE == Q4_K:
        v = _k_quant(raw_ptr, i, ok, False)
    elif QTYPE == Q5_K:
        v = _k_quant(raw_ptr, i, ok, True)
    elif QTYPE == Q6_K:
        v = _q6_k(raw_ptr, i, ok)
    else:
        v = _legacy(raw_ptr, i, ok, QTYPE)
    dtype = out_ptr.dtype.element_ty
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        out = tl.where(nan, (bits >> 16) | 0x40, rounded).to(tl.uint16)
        tl.store(out_ptr + i, out.to(tl.bfloat16, bitcast=True), mask=ok)
    else:
        tl.store(out_ptr + i, v.to(dtype), mask=ok)


def dequantize(raw: torch.Tensor, qtype: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """See ``soprano.ops.reference.dequantize``."""
    t = check_dequantize("dequantize (triton)", raw, qtype, n, dtype)
    out = torch.empty(n, dtype=dtype, device=raw.device)
    if n:
        _dequant_kernel[(triton.cdiv(n, BLOCK),)](raw, out, n, QTYPE=int(t), BLOCK=BLOCK,
                                                  **OPTIONS)
    return out
