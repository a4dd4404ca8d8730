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
            k = tl.load(kc_ptr + kv_off, mask=cm[:, None] & dm[None, :], other=0.0)
            if IEEE:
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)),
                           input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            allowed = cm[None, :] & (cols[None, :] <= rows[:, None])
            s = tl.where(allowed, s * scale, float("-inf"))
            # Rows past the prompt's end see no key; keep their max finite (no inf - inf).
            m_new = tl.maximum(tl.maximum(m_i, tl.max(s, axis=1)), -1e30)
            alpha = tl.exp(m_i - m_new)
            pr = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(pr, axis=1)
            v = tl.load(vc_ptr + kv_off, mask=cm[:, None] & dm[None, :], other=0.0)
            if IEEE:
                pv = tl.dot(pr.to(v.dtype).to(tl.float32), v.to(tl.float32),
                            input_precision="ieee")
            else:
                pv = tl.dot(pr.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
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
