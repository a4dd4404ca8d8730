"""The step both flash-attention kernels (decode splits, prefill blocks) take over one block of
keys: scores, the online-softmax update of running max / sum / output, all in fp32.

``v_ptrs``/``kv_mask`` address the block's values, loaded once the scores are out. ``allowed``
masks scores to -inf (past the length, or above the causal diagonal). The running
max is kept finite so that a query row with no allowed key in a block (prefill rows past a
prompt's end) never computes inf - inf. ``IEEE``: dot fp32 operands in IEEE precision (see
``dot_precision``); otherwise 16-bit operands on the tensor cores with fp32 accumulation.
"""
import triton
import triton.language as tl


@triton.jit
def online_softmax_step(q, k, v_ptrs, kv_mask, allowed, m_i, l_i, acc, scale,
                        IEEE: tl.constexpr):
    if IEEE:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = tl.where(allowed, s * scale, float("-inf"))
    m_new = tl.maximum(tl.maximum(m_i, tl.max(s, axis=1)), -1e30)
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)  # after the scores, as measured on the H200
    # The probabilities are rounded to V's dtype before P @ V, as the reference's are.
    if IEEE:
        pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc * alpha[:, None] + pv
