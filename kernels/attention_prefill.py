"""Triton causal varlen flash attention over cached keys: several prompts of different lengths in
one launch (contract: ``soprano.ops.reference.attention_prefill``).

The grid is (query blocks of the longest prompt, prompts, query heads); a block past its
prompt's end returns at once. Each program streams its kv head's keys and values from the cache
up to the causal bound of its last query, with an online softmax in fp32, and tl.dot on the
tensor cores for 16-bit inputs.
"""
import torch
import triton
import triton.language as tl

from .dot_precision import ieee_dot
from .flash_step import online_softmax_step

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_M = 32
BLOCK_N = 32


@triton.jit
def _prefill_kernel(q_ptr, kc_ptr, vc_ptr, cu_ptr, slot_ptr, out_ptr, NH, KVH, S, L, scale,
                    G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    block = tl.program_id(0)
    p = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2)
    first = tl.load(cu_ptr + p)
    n = tl.minimum(tl.load(cu_ptr + p + 1) - first, L)
    if block * BLOCK_M < n:
        slot = tl.minimum(tl.maximum(tl.load(slot_ptr + p), 0), S - 1)
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        rm = rows < n
        dm = d < D
        q_off = ((first + rows[:, None]) * NH + h) * D + d[None, :]
        q = tl.load(q_ptr + q_off, mask=rm[:, None] & dm[None, :], other=0.0)
        base = (slot * KVH + h // G) * L * D
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        hi = tl.minimum((block + 1) * BLOCK_M, n)
        for n0 in range(0, hi, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            cm = cols < hi
            kv_off = base + cols[:, None] * D + d[None, :]
            kv_mask = cm[:, None] & dm[None, :]
            k = tl.load(kc_ptr + kv_off, mask=kv_mask, other=0.0)
            allowed = cm[None, :] & (cols[None, :] <= rows[:, None])
            m_i, l_i, acc = online_softmax_step(q, k, vc_ptr + kv_off, kv_mask, allowed, m_i,
                                                 l_i, acc, scale, IEEE)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + q_off, out.to(out_ptr.dtype.element_ty),
                 mask=rm[:, None] & dm[None, :])


def attention_prefill(q, k_cache, v_cache, cu_seqlens, slots, max_seqlen=None):
    """See ``soprano.ops.reference.attention_prefill``."""
    S, KVH, L, D = k_cache.shape
    N, NH, _ = q.shape
    if q.dtype not in _DTYPES or NH % KVH or q.shape[2] != D:
        raise ValueError(f"attention_prefill (triton): q [N, NH, D] in {_DTYPES} with NH a "
                         f"multiple of KVH, got {tuple(q.shape)} {q.dtype} for a cache "
                         f"{tuple(k_cache.shape)}")
    if not (q.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("attention_prefill (triton): q and the caches must be contiguous")
    P = slots.shape[0]
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if P else 0
    out = torch.empty_like(q)
    if N == 0 or P == 0 or max_seqlen == 0:
        return out
    _prefill_kernel[(triton.cdiv(max_seqlen, BLOCK_M), P, NH)](
        q, k_cache, v_cache, cu_seqlens, slots, out, NH, KVH, S, L, D ** -0.5, G=NH // KVH, D=D,
        BLOCK_D=triton.next_power_of_2(D), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        IEEE=ieee_dot(q.dtype), num_warps=4)
    return out
