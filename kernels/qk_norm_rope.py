"""Triton qk_norm_rope: Qwen3's per-head q/k RMSNorm, half-split RoPE and the KV-cache write in
one pass over the fused qkv rows (contract: ``soprano.ops.reference.qk_norm_rope``).

Unfused, this is ~10 launches per layer (two norms, the rotary muls, two scatters into the
cache); here it is one, each program reading one head once and writing it once.
"""
import torch
import triton
import triton.language as tl

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _qk_norm_rope_kernel(qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr, q_ptr,
                         kc_ptr, vc_ptr, qkv_row_stride, NH, KVH, S, L, P, eps,
                         D: tl.constexpr, HALF_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    HALF: tl.constexpr = D // 2
    i = tl.arange(0, HALF_BLOCK)
    m = i < HALF
    dtype = q_ptr.dtype.element_ty
    src = qkv_ptr + row * qkv_row_stride + head * D
    a = tl.load(src + i, mask=m, other=0.0)
    b = tl.load(src + HALF + i, mask=m, other=0.0)
    pos = tl.load(pos_ptr + row)
    slot = tl.load(slot_ptr + row)
    # Rows pointing outside the cache or the rotary table write nothing there.
    writable = (pos >= 0) & (pos < L) & (pos < P) & (slot >= 0) & (slot < S)
    safe_pos = tl.minimum(tl.maximum(pos, 0), P - 1)
    if head < NH + KVH:
        af = a.to(tl.float32)
        bf = b.to(tl.float32)
        rstd = tl.rsqrt((tl.sum(af * af, axis=0) + tl.sum(bf * bf, axis=0)) / D + eps)
        if head < NH:
            wa = tl.load(qw_ptr + i, mask=m, other=0.0).to(tl.float32)
            wb = tl.load(qw_ptr + HALF + i, mask=m, other=0.0).to(tl.float32)
        else:
            wa = tl.load(kw_ptr + i, mask=m, other=0.0).to(tl.float32)
            wb = tl.load(kw_ptr + HALF + i, mask=m, other=0.0).to(tl.float32)
        # Round the normed value and the weighted one to the dtype, as the reference's RMSNorm.
        ya = (wa * (af * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        yb = (wb * (bf * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        table = safe_pos * D
        ca = tl.load(cos_ptr + table + i, mask=m, other=0.0)
        cb = tl.load(cos_ptr + table + HALF + i, mask=m, other=0.0)
        sa = tl.load(sin_ptr + table + i, mask=m, other=0.0)
        sb = tl.load(sin_ptr + table + HALF + i, mask=m, other=0.0)
        out_a = (ya * ca - yb * sa).to(dtype)
        out_b = (yb * cb + ya * sb).to(dtype)
        if head < NH:
            dst = q_ptr + (row * NH + head) * D
            tl.store(dst + i, out_a, mask=m)
            tl.store(dst + HALF + i, out_b, mask=m)
        elif writable:
            dst = kc_ptr + ((slot * KVH + head - NH) * L + pos) * D
            tl.store(dst + i, out_a, mask=m)
            tl.store(dst + HALF + i, out_b, mask=m)
    elif writable:
        dst = vc_ptr + ((slot * KVH + head - NH - KVH) * L + pos) * D
        tl.store(dst + i, a, mask=m)
        tl.store(dst + HALF + i, b, mask=m)


def qk_norm_rope(qkv, q_weight, k_weight, cos, sin, positions, slots, k_cache, v_cache, eps):
    """See ``soprano.ops.reference.qk_norm_rope``; rows whose slot or position falls outside the
    cache are not written there (they are padding, or a caller's bug the reference would raise
    for)."""
    S, KVH, L, D = k_cache.shape
    N, width = qkv.shape
    NH = width // D - 2 * KVH
    if qkv.dtype not in _DTYPES or D % 2 or width != (NH + 2 * KVH) * D or NH < 1:
        raise ValueError(f"qk_norm_rope (triton): qkv [N, (NH + 2 KVH) D] in {_DTYPES} with an "
                         f"even D, got {tuple(qkv.shape)} {qkv.dtype} for a cache "
                         f"{tuple(k_cache.shape)}")
    if qkv.stride(-1) != 1 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("qk_norm_rope (triton): qkv needs a contiguous last dim and the caches "
                         "must be contiguous")
    q = torch.empty(N, NH, D, dtype=qkv.dtype, device=qkv.device)
    if N:
        _qk_norm_rope_kernel[(N, NH + 2 * KVH)](
            qkv, q_weight, k_weight, cos, sin, positions, slots, q, k_cache, v_cache,
            qkv.stride(0), NH, KVH, S, L, cos.shape[0], eps, D=D,
            HALF_BLOCK=triton.next_power_of_2(D // 2), num_warps=1)
    return q
