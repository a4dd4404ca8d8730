"""GGUF matrices with the blocks of 8 rows interleaved, in numpy: the CPU kernels' x8 layouts.

A one-row int8 dot reads 8 weight rows in the lanes of one vector, so the CPU kernels want each
block's 8 rows side by side (``csrc/gguf_dequant_params.h``'s kQ8_0x8 ...): per 8 rows and
block, the rows' scales, then their values (nibbles, fifth bits) in chunks of 32 bytes, four
bytes of each row in row order. Numpy, not torch: the torch-free engine (``soprano.lean``) packs
its matrices here too, and ``soprano.ops.quantized`` wraps these for its ``QuantMatrix``.
Arrays are uint8 [N, bytes per row]; ``qtype`` is the ggml type id.
"""
import numpy as np

Q8_0, Q4_0, Q4_K, Q5_K, Q6_K = 8, 2, 12, 13, 14
# The ggml types the CPU kernels multiply in their blocks (csrc/cpu/quant_linear.h), and the id
# of each one's x8 layout (csrc/gguf_dequant_params.h's kQ8_0x8 ...: this project's, not ggml's).
BLOCK_TYPES = {"Q8_0": Q8_0, "Q4_0": Q4_0, "Q4_K": Q4_K, "Q5_K": Q5_K, "Q6_K": Q6_K}
X8_LAYOUTS = {Q8_0: 0x1008, Q4_0: 0x1002, Q4_K: 0x100C, Q5_K: 0x100D, Q6_K: 0x100E}
BLOCK_VALUES = {Q8_0: 32, Q4_0: 32, Q4_K: 256, Q5_K: 256, Q6_K: 256}
# bytes per row and block of each type, as ggml stores it and as the x8 layout does
BLOCK_BYTES = {Q8_0: 34, Q4_0: 18, Q4_K: 144, Q5_K: 176, Q6_K: 210}
X8_BLOCK_BYTES = {Q8_0: 34, Q4_0: 18, Q4_K: 148, Q5_K: 180, Q6_K: 210}


def k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and mins [..., 12] -> ([..., 8], [..., 8]) uint8
    (gguf_blocks.h's k_scale_min)."""
    s = packed.astype(np.int32)
    lo_sc, lo_mn = s[..., 0:4] & 63, s[..., 4:8] & 63
    hi_sc = (s[..., 8:12] & 15) | (s[..., 0:4] >> 6) << 4
    hi_mn = (s[..., 8:12] >> 4) | (s[..., 4:8] >> 6) << 4
    return (np.concatenate([lo_sc, hi_sc], -1).astype(np.uint8),
            np.concatenate([lo_mn, hi_mn], -1).astype(np.uint8))


def pack_k_scales_mins(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """``k_scales_mins``' inverse: 8 scales and 8 mins (< 64) -> the 12 packed bytes."""
    sc, mn = sc.astype(np.int32), mn.astype(np.int32)
    first = sc[..., 0:4] | (sc[..., 4:8] >> 4) << 6
    second = mn[..., 0:4] | (mn[..., 4:8] >> 4) << 6
    third = (sc[..., 4:8] & 15) | (mn[..., 4:8] & 15) << 4
    return np.concatenate([first, second, third], -1).astype(np.uint8)


def _check(raw: np.ndarray, qtype: int, N: int, nb: int, sizes: dict, what: str) -> None:
    if qtype not in sizes or N % 8 or raw.shape != (N, nb * sizes.get(qtype, 0)):
        raise ValueError(f"{what}: needs uint8 [N, blocks * bytes] of Q8_0, Q4_0, Q4_K, Q5_K or "
                         f"Q6_K with N a multiple of 8; got type {qtype}, {N} rows of {nb} "
                         f"blocks, array {list(raw.shape)}")


def interleave_rows8(raw: np.ndarray, qtype: int, blocks_per_row: int) -> np.ndarray:
    """The ggml matrix ``raw`` [N, nb * bytes] of type ``qtype`` in its x8 layout
    [N, nb * x8 bytes] (a new array)."""
    N, nb = raw.shape[0], blocks_per_row
    _check(raw, qtype, N, nb, BLOCK_BYTES, "interleave_rows8")
    blocks = raw.reshape(N // 8, 8, nb, BLOCK_BYTES[qtype])

    def lanes(t):  # [N/8, 8 rows, nb, ...] -> [N/8, nb, ..., 8 rows], flattened per block
        return np.moveaxis(t, 1, -1).reshape(N // 8, nb, -1)

    def halves(t):  # [N/8, 8 rows, nb, 2] -> the 8 rows' fp16 one after another
        return t.transpose(0, 2, 1, 3).reshape(N // 8, nb, 16)

    def nibbles(qs, chunks):  # chunk c, group i: bytes 4i..4i+3 of each row's chunk c
        q = qs.reshape(N // 8, 8, nb, chunks, -1, 4)  # row, block, chunk, group, byte
        return q.transpose(0, 2, 3, 4, 1, 5).reshape(N // 8, nb, -1)
    if qtype in (Q8_0, Q4_0):  # one chunk: the values' 32 (16) bytes as 8 (4) groups
        parts = [halves(blocks[..., :2]), nibbles(blocks[..., 2:], 1)]
    elif qtype == Q6_K:  # ql[128], qh[64], int8 scales[16], d
        parts = [halves(blocks[..., 208:]), lanes(blocks[..., 192:208]),
                 nibbles(blocks[..., 128:192], 2), nibbles(blocks[..., :128], 4)]
    else:
        sc, mn = k_scales_mins(blocks[..., 4:16])  # [N/8, 8, nb, 8 sub-blocks] each
        parts = [halves(blocks[..., 0:2]), halves(blocks[..., 2:4]), lanes(sc), lanes(mn)]
        if qtype == Q5_K:
            parts.append(nibbles(blocks[..., 16:48], 1))
        parts.append(nibbles(blocks[..., -128:], 4))
    return np.concatenate(parts, axis=-1).reshape(N, -1)


def deinterleave_rows8(raw: np.ndarray, qtype: int, blocks_per_row: int) -> np.ndarray:
    """``interleave_rows8``'s inverse: x8 ``raw`` of ggml type ``qtype`` -> the ggml matrix."""
    N, nb = raw.shape[0], blocks_per_row
    _check(raw, qtype, N, nb, X8_BLOCK_BYTES, "deinterleave_rows8")
    groups = raw.reshape(N // 8, nb, 8 * X8_BLOCK_BYTES[qtype])

    def rows(t, per_row):  # [N/8, nb, ... 8 lanes] -> [N/8, 8, nb, per_row]
        return t.reshape(N // 8, nb, per_row, 8).transpose(0, 3, 1, 2)

    def halves(t):  # the 8 rows' fp16 -> [N/8, 8, nb, 2]
        return t.reshape(N // 8, nb, 8, 2).transpose(0, 2, 1, 3)

    def nibbles(t, chunks):
        q = t.reshape(N // 8, nb, chunks, -1, 8, 4)  # block, chunk, group, row, byte
        return q.transpose(0, 4, 1, 2, 3, 5).reshape(N // 8, 8, nb, -1)
    if qtype in (Q8_0, Q4_0):
        parts = [halves(groups[..., :16]), nibbles(groups[..., 16:], 1)]
    elif qtype == Q6_K:
        parts = [nibbles(groups[..., 656:], 4), nibbles(groups[..., 144:656], 2),
                 rows(groups[..., 16:144], 16), halves(groups[..., :16])]
    else:
        sc, mn = rows(groups[..., 32:96], 8), rows(groups[..., 96:160], 8)
        parts = [halves(groups[..., 0:16]), halves(groups[..., 16:32]),
                 pack_k_scales_mins(sc, mn)]
        if qtype == Q5_K:
            parts.append(nibbles(groups[..., 160:416], 1))
        parts.append(nibbles(groups[..., -1024:], 4))
    return np.concatenate(parts, axis=-1).reshape(N, -1)
