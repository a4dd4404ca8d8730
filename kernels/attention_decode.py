"""Triton flash-decoding: one query per sequence against its own cache slot, split over the keys
(contract: ``soprano.ops.reference.attention_decode``).

The grid is (rows, kv heads, splits of SPLIT positions over ``span``): its shape depends only on
``span``, so a CUDA graph captured with span = the whole cache replays at any length, while a
program whose split starts past its row's length (read from device memory) returns at once, so
the work follows each row's real length. A program holds the G query heads of one kv head, so
each key and value is read once for the group (GQA 4:1 without repeating K/V). A second kernel
merges the splits' partial softmaxes.
"""
import torch
import triton
import triton.language as tl

from .dot_precision import ieee_dot
from .flash_step import online_softmax_step

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SPLIT = 128    # positions per program
BLOCK_N = 64   # positions per inner step
BLOCK_G_MIN = 16  # tl.dot's smallest M: a group of 4 heads is padded to 16 rows


@triton.jit
def _decode_split_kernel(q_ptr, kc_ptr, vc_ptr, slot_ptr, len_ptr, part_ptr, NH, KVH, S, L, span,
                         n_splits, scale, G: tl.constexpr, D: tl.constexpr,
                         BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                         SPLIT: tl.constexpr, IEEE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), span)
    start = split * SPLIT
    if start < length:
        slot = tl.minimum(tl.maximum(tl.load(slot_ptr + b), 0), S - 1)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        gm = g < G
        dm = d < D
        heads = kvh * G + g
        q = tl.load(q_ptr + (b * NH + heads[:, None]) * D + d[None, :],
                    mask=gm[:, None] & dm[None, :], other=0.0)
        base = (slot * KVH + kvh) * L * D
        m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        end = tl.minimum(start + SPLIT, length)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nm = n < end
            kv_off = base + n[:, None] * D + d[None, :]
            kv_mask = nm[:, None] & dm[None, :]
            k = tl.load(kc_ptr + kv_off, mask=kv_mask, other=0.0)
            m_i, l_i, acc = online_softmax_step(q, k, vc_ptr + kv_off, kv_mask, nm[None, :], m_i,
                                                 l_i, acc, scale, IEEE)
        # partials: [B, NH, n_splits, BLOCK_D + 2] fp32 (acc, then max and sum)
        row = ((b * NH + heads) * n_splits + split) * (BLOCK_D + 2)
        tl.store(part_ptr + row[:, None] + d[None, :], acc, mask=gm[:, None])
        tl.store(part_ptr + row + BLOCK_D, m_i, mask=gm)
        tl.store(part_ptr + row + BLOCK_D + 1, l_i, mask=gm)


@triton.jit
def _decode_merge_kernel(part_ptr, len_ptr, out_ptr, NH, span, n_splits, D: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, SPLIT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    length = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), span)
    used = tl.cdiv(length, SPLIT)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    sm = s < used
    rows = ((b * NH + h) * n_splits + s) * (BLOCK_D + 2)
    m = tl.load(part_ptr + rows + BLOCK_D, mask=sm, other=float("-inf"))
    l_s = tl.load(part_ptr + rows + BLOCK_D + 1, mask=sm, other=0.0)
    acc = tl.load(part_ptr + rows[:, None] + d[None, :], mask=sm[:, None], other=0.0)
    top = tl.max(m, axis=0)
    w = tl.where(sm, tl.exp(m - top), 0.0)
    total = tl.sum(l_s * w, axis=0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + (b * NH + h) * D + d, out.to(out_ptr.dtype.element_ty), mask=d < D)


def attention_decode(q, k_cache, v_cache, slots, lengths, span=None):
    """See ``soprano.ops.reference.attention_decode``. Lengths and slots are clamped to the
    cache (a length of 0 gives zeros), never read past ``span``."""
    S, KVH, L, D = k_cache.shape
    B, NH, _ = q.shape
    span = L if span is None else span
    if q.dtype not in _DTYPES or NH % KVH or q.shape[2] != D or not 0 < span <= L:
        raise ValueError(f"attention_decode (triton): q [B, NH, D] in {_DTYPES} with NH a "
                         f"multiple of KVH and 0 < span <= L, got q {tuple(q.shape)} {q.dtype}, "
                         f"cache {tuple(k_cache.shape)}, span {span}")
    if not (q.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("attention_decode (triton): q and the caches must be contiguous")
    out = torch.empty_like(q)
    if B == 0:
        return out
    G = NH // KVH
    block_d = triton.next_power_of_2(D)
    n_splits = triton.cdiv(span, SPLIT)
    partials = torch.empty(B, NH, n_splits, block_d + 2, dtype=torch.float32, device=q.device)
    _decode_split_kernel[(B, KVH, n_splits)](
        q, k_cache, v_cache, slots, lengths, partials, NH, KVH, S, L, span, n_splits,
        D ** -0.5, G=G, D=D, BLOCK_G=max(triton.next_power_of_2(G), BLOCK_G_MIN),
        BLOCK_D=block_d, BLOCK_N=BLOCK_N, SPLIT=SPLIT, IEEE=ieee_dot(q.dtype),
        num_warps=4)
    _decode_merge_kernel[(B, NH)](partials, lengths, out, NH, span, n_splits, D=D,
                                  BLOCK_D=block_d,
                                  BLOCK_S=max(triton.next_power_of_2(n_splits), 2),
                                  SPLIT=SPLIT, num_warps=4)
    return out
