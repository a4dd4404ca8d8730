"""Q4_K, Q5_K and Q6_K quantizers that write ggml's K-quant block layout.

PyPI ``gguf`` (0.19.0) reads these types (``gguf.quants.dequantize``) but its ``quantize``
raises NotImplementedError for them, so ``soprano-tts convert`` quantizes the K types here and
every other type through ``gguf.quants``.  ``quantize`` follows ``gguf.quants.quantize``'s
convention: float rows in, uint8 rows of packed blocks out, one block per 256 values.

The block layouts (``block_q4_K``, ``block_q5_K``, ``block_q6_K`` in ggml/src/ggml-common.h) and
the method (``quantize_row_q{4,5,6}_K_ref``, ``make_qkx2_quants`` and ``make_qx_quants`` in
ggml/src/ggml-quants.c) are those of llama.cpp at commit
36491e4024b3016e6e2d21afc140add042b44bec.  This is a separate numpy implementation of that
method which works on every block of a chunk at once; it is not guaranteed to be byte-identical
to llama.cpp, whose float sums run in a different order.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType

__all__ = ["SUPPORTED_TYPES", "quantize"]

SUPPORTED_TYPES = (
    GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q5_K,
    GGMLQuantizationType.Q6_K,
)

# Super-blocks per chunk: small enough that each search step's temporaries (2 MiB per float32
# array) stay in cache, large enough that numpy's per-call overhead is negligible.
_CHUNK = 2048

# Below this magnitude ggml treats a Q6_K sub-block as all zero (GROUP_MAX_EPS).
_ZERO_EPS = np.float32(1e-15)


def quantize(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Quantize ``data`` (last dim a multiple of 256) to packed Q4_K, Q5_K or Q6_K blocks.

    Returns uint8 with shape ``data.shape[:-1] + (row_bytes,)``, exactly what
    ``gguf.quants.dequantize(result, qtype)`` reads back.
    """
    if qtype not in _QUANTIZERS:
        name = getattr(qtype, "name", repr(qtype))
        raise ValueError(
            f"soprano.gguf.kquants quantizes Q4_K, Q5_K and Q6_K only, not {name}; "
            "use gguf.quants.quantize for other types"
        )
    qtype = GGMLQuantizationType(qtype)
    data = np.asarray(data)
    if data.ndim == 0 or data.shape[-1] % QK_K != 0:
        raise ValueError(
            f"{qtype.name} needs the last dimension to be a multiple of {QK_K}, "
            f"got shape {data.shape}"
        )
    blocks = data.astype(np.float32, copy=False).reshape(-1, QK_K)
    if not np.isfinite(blocks).all():
        raise ValueError(f"cannot quantize to {qtype.name}: data contains NaN or infinity")

    type_size = GGML_QUANT_SIZES[qtype][1]
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    for start in range(0, blocks.shape[0], _CHUNK):
        stop = start + _CHUNK
        out[start:stop] = _QUANTIZERS[qtype](blocks[start:stop])
    return out.reshape(*data.shape[:-1], data.shape[-1] // QK_K * type_size)


def _fp16(values: np.ndarray) -> np.ndarray:
    """Super-block scales as stored: little-endian float16, where an overflow is fatal."""
    with np.errstate(over="ignore"):
        half = values.astype("<f2")
    if not np.isfinite(half).all():
        raise ValueError("values too large for the float16 block scales of K-quants")
    return half


def _fit_affine(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Scale and offset per row of ``x`` so that ``x ~ scale * q - offset``, q in [0, nmax].

    The search of make_qkx2_quants: try ``nstep + 1`` grid densities around nmax / range,
    refit scale and offset by weighted least squares for each, keep the lowest weighted error.
    """
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    unit = _unit(np.maximum(-lo, hi))
    x = x * unit[:, None]
    # Offsets are stored as non-negative 6-bit multiples of dmin, so the range must include 0.
    lo = np.minimum(lo * unit, 0)
    hi = hi * unit
    flat = hi == lo
    # Weighting by |x| spends precision on the large values that dominate a matmul, the rms
    # term keeps the small ones from being ignored.
    rms = np.sqrt(np.einsum("ij,ij->i", x, x) / x.shape[1])
    w = rms[:, None] + np.abs(x)
    sum_w = np.einsum("ij->i", w)
    sum_wx = np.einsum("ij,ij->i", w, x)

    def weighted_error(levels, scale, low):
        err = scale[:, None] * levels + (low[:, None] - x)
        return np.einsum("ij,ij,ij->i", w, err, err)

    span = np.where(flat, np.float32(1), hi - lo)
    scale = np.where(flat, np.float32(0), span / np.float32(nmax))
    low = lo
    levels = np.clip(np.rint((x - low[:, None]) * (nmax / span)[:, None]), 0, nmax)
    best = weighted_error(levels, scale, low)

    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(nstep + 1):
            # Like ggml, later grids are laid from the best offset found so far.
            iscale = (np.float32(rmin) + np.float32(rdelta) * step + nmax) / (hi - low)
            levels = np.clip(np.rint((x - low[:, None]) * iscale[:, None]), 0, nmax)
            wl = w * levels
            sum_l = np.einsum("ij->i", wl)
            sum_l2 = np.einsum("ij,ij->i", wl, levels)
            sum_xl = np.einsum("ij,ij->i", wl, x)
            det = sum_w * sum_l2 - sum_l * sum_l
            fit_scale = (sum_w * sum_xl - sum_wx * sum_l) / det
            fit_low = (sum_l2 * sum_wx - sum_l * sum_xl) / det
            # A positive offset is not representable: refit the scale with the offset at 0.
            clamp = fit_low > 0
            fit_low = np.where(clamp, np.float32(0), fit_low)
            fit_scale = np.where(clamp, sum_xl / sum_l2, fit_scale)
            err = weighted_error(levels, fit_scale, fit_low)
            better = (det > 0) & (err < best) & ~flat
            best = np.where(better, err, best)
            scale = np.where(better, fit_scale, scale)
            low = np.where(better, fit_low, low)
    return scale / unit, -low / unit


def _unit(peak: np.ndarray) -> np.ndarray:
    """Power of two per row that brings ``peak`` into [0.5, 1).

    The searches sum cubes of the values; on rows rescaled by an exact power of two those sums
    cannot overflow or underflow, and every rounding decision is the same as on the raw rows.
    """
    exponent = np.clip(np.frexp(peak)[1], -126, 127)
    return np.ldexp(np.float32(1), -exponent).astype(np.float32)


def _six_bit(values: np.ndarray):
    """Super-block fp16 multiplier and 6-bit multiples of it for (n, 8) non-negative values."""
    top = np.maximum(values.max(axis=1), 0)
    d = _fp16(top / np.float32(63))
    with np.errstate(divide="ignore"):
        inv = np.where(top > 0, np.float32(63) / top, np.float32(0))
    return d, np.clip(np.rint(values * inv[:, None]), 0, 63).astype(np.uint8)


def _quantize_affine(blocks: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared Q4_K/Q5_K part: fp16 d and dmin, 6-bit scales and mins, levels in [0, nmax]."""
    n = blocks.shape[0]
    x = blocks.reshape(n * 8, 32)
    scale, offset = _fit_affine(x, nmax, rmin, rdelta, nstep)
    d, ls = _six_bit(scale.reshape(n, 8))
    dmin, lm = _six_bit(offset.reshape(n, 8))
    # Levels are recomputed from the stored (rounded) scales, as the decoder will see them.
    sub_d = (d.astype(np.float32)[:, None] * ls).reshape(-1, 1)
    sub_m = (dmin.astype(np.float32)[:, None] * lm).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = np.clip(np.rint((x + sub_m) / sub_d), 0, nmax)
    levels = np.where(sub_d != 0, levels, 0).astype(np.uint8).reshape(n, QK_K)
    return d, dmin, _pack_scales(ls, lm), levels


def _pack_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    # 12 bytes for eight 6-bit scales and mins: bytes 0-3 and 4-7 hold scales/mins 0-3 in the
    # low 6 bits and the top 2 bits of scales/mins 4-7; bytes 8-11 hold their low nibbles.
    top_s, top_m = ls[:, 4:], lm[:, 4:]
    return np.concatenate(
        [
            ls[:, :4] | ((top_s >> 4) << 6),
            lm[:, :4] | ((top_m >> 4) << 6),
            (top_s & 0xF) | ((top_m & 0xF) << 4),
        ],
        axis=1,
    )


def _nibbles(levels: np.ndarray) -> np.ndarray:
    # Each 64-value group fills 32 bytes: low nibbles its first 32 values, high its last 32.
    pairs = (levels & 0xF).reshape(-1, QK_K // 64, 2, 32)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, QK_K // 2)


# Grid searches (rmin, rdelta, nstep) as quantize_row_q4_K_ref / q5_K_ref call make_qkx2_quants.
def _q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, levels = _quantize_affine(blocks, 15, -1.0, 0.1, 20)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                           scales, _nibbles(levels)], axis=1)


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, levels = _quantize_affine(blocks, 31, -0.5, 0.1, 15)
    # Bit s of qh[j] is the fifth bit of value j of sub-block s.
    high = (levels >> 4).reshape(-1, 8, 32) << np.arange(8, dtype=np.uint8)[:, None]
    qh = np.bitwise_or.reduce(high, axis=1)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                           scales, qh, _nibbles(levels)], axis=1)


def _fit_symmetric(x: np.ndarray) -> np.ndarray:
    """Scale per row of ``x`` for levels in [-32, 31]: the search of make_qx_quants (rmse 1).

    The largest-magnitude value goes to -32, the level with no positive twin; grids 0.1 apart
    around that are refit by least squares weighted by x**2, keeping the lowest error.
    """
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]
    zero = np.abs(peak) < _ZERO_EPS
    unit = _unit(np.abs(peak))
    x = x * unit[:, None]
    peak = np.where(zero, np.float32(1), peak * unit)
    w = x * x
    wx = w * x
    scale = np.zeros(x.shape[0], dtype=np.float32)
    best = np.full(x.shape[0], -np.inf, dtype=np.float32)
    # step 0 is ggml's starting grid; maximising sum_xl**2 / sum_l2 minimises the error.
    for step in (0, *range(-9, 0), *range(1, 10)):
        iscale = -(np.float32(32) + np.float32(0.1) * step) / peak
        levels = np.clip(np.rint(x * iscale[:, None]), -32, 31)
        sum_xl = np.einsum("ij,ij->i", wx, levels)
        sum_l2 = np.einsum("ij,ij,ij->i", w, levels, levels)
        with np.errstate(divide="ignore", invalid="ignore"):
            fit = np.where(sum_l2 > 0, sum_xl / sum_l2, np.float32(0))
            better = (sum_l2 > 0) & (sum_xl * sum_xl > best * sum_l2)
        scale = np.where(better, fit, scale)
        best = np.where(better, fit * sum_xl, best)
    return np.where(zero, np.float32(0), scale / unit)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    x = blocks.reshape(n * 16, 16)
    scales = _fit_symmetric(x).reshape(n, 16)
    peak = np.take_along_axis(scales, np.abs(scales).argmax(axis=1)[:, None], axis=1)[:, 0]
    empty = np.abs(peak) < _ZERO_EPS
    peak = np.where(empty, np.float32(1), peak)
    # The largest scale goes to -128 so that the int8 range is used in full.
    iscale = np.float32(-128) / peak
    d = _fp16(np.where(empty, np.float32(0), np.float32(1) / iscale))
    sc = np.clip(np.rint(scales * iscale[:, None]), -128, 127)
    sc = np.where(empty[:, None], np.float32(0), sc).astype(np.int8)

    sub_d = (d.astype(np.float32)[:, None] * sc).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = np.clip(np.rint(x / sub_d), -32, 31) + 32
    # Level 0 where the scale is 0 keeps an all-zero block all zero bytes, as in ggml.
    levels = np.where(sub_d != 0, levels, 0).astype(np.uint8).reshape(n, 2, 4, 32)

    # Per 128-value half: ql bytes j and 32 + j (j < 32) carry the low nibbles of values j,
    # j + 64 and 32 + j, 96 + j; qh byte j carries the top 2 bits of values j + 32k, k < 4.
    ql = (levels[:, :, :2] & 0xF) | ((levels[:, :, 2:] & 0xF) << 4)
    high = (levels >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None]
    qh = np.bitwise_or.reduce(high, axis=2)
    return np.concatenate([ql.reshape(n, QK_K // 2), qh.reshape(n, QK_K // 4),
                           sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)


_QUANTIZERS = {
    GGMLQuantizationType.Q4_K: _q4_k,
    GGMLQuantizationType.Q5_K: _q5_k,
    GGMLQuantizationType.Q6_K: _q6_k,
}
