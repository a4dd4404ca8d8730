"""The one door from the runtime to kernels.

Every op here has a plain-torch reference (``*_reference``): the fallback, the test oracle and
the benchmark baseline at once. The public op (same name without the suffix) picks the fastest
backend available for the tensor's device and dtype; backend choice lives here and nowhere else.

Layouts at this boundary (B batch, T tokens, H hidden, NH/KVH query/kv heads, D head_dim,
L cache length):
- activations ``[B, T, H]``; per-head tensors ``[B, NH, T, D]``;
- KV cache of one layer ``[slots, KVH, L, D]``;
- rotary tables ``cos``/``sin`` ``[T, D]`` (half-split "rotate_half" layout, as Qwen3/NEOX).
"""
import torch
import torch.nn.functional as F

from . import _ext


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32, cast back before the weight (Qwen3's order).

    x: [..., H], weight: [H]; returns x's shape and dtype.
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm; the C++ kernel (CPU fp32) or the CUDA kernel where built, else the reference."""
    if x.stride(-1) == 1 and weight.dtype == x.dtype:
        if x.device.type == "cpu" and x.dtype == torch.float32 and _ext.has_native():
            return _ext.rms_norm_cpu(x, weight, eps)
        if x.device.type == "cuda" and _ext.has_cuda_native():
            return _ext.rms_norm_cuda(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def linear_reference(x: torch.Tensor, w: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ w [N, K]^T (+ bias [N]) in x's dtype (w may be stored in another dtype)
    -> [..., N]."""
    return F.linear(x, w.to(x.dtype), bias)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear layer. On CPU, fp32 activations with 16-bit weights use the C++ kernel (torch has
    no fast fp32 x bf16 matmul there); same-dtype operands use torch."""
    if w.dtype == x.dtype:
        return F.linear(x, w, bias)
    if (x.device.type == "cpu" and x.dtype == torch.float32 and _ext.has_native()
            and w.dtype in (torch.bfloat16, torch.float16)):
        y = _ext.linear_cpu(x, w)
        return y if bias is None else y.add_(bias)
    return linear_reference(x, w, bias)


def fused_decode_step(backbone, cache):
    """The whole decode step of ``backbone`` over ``cache`` as one native call where one
    applies (CPU, fp32 activations and cache, soprano._C built), else None: the caller then runs
    the step op by op, which is also this op's reference. The returned callable maps tokens,
    positions, slots (int64 [B]) to hidden [B, H] and logits [B, V] (``last_only=True``: the
    last row's only); row b attends to its slot's positions 0..positions[b], and all rows' keys
    and values are cached first, so one slot's prompt at positions 0..T-1 is a causal prefill."""
    if (backbone.device.type != "cpu" or backbone.dtype != torch.float32
            or not _ext.has_native()):
        return None
    try:
        return _ext.Qwen3CpuDecoder(backbone, cache)
    except ValueError:
        return None


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def qk_norm_rope_reference(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                           sin: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3's per-head RMSNorm followed by half-split rotary embedding.

    x: [B, heads, T, D]; weight: [D]; cos/sin: [T, D] or [B, 1, T, D] (fp32 or x's dtype).
    """
    y = rms_norm_reference(x, weight, eps)
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return y * cos + rotate_half(y) * sin


def qk_norm_rope(x, weight, cos, sin, eps):
    return qk_norm_rope_reference(x, weight, cos, sin, eps)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Grouped-query attention, softmax scale 1/sqrt(D), softmax in fp32.

    q: [B, NH, Tq, D]; k, v: [B, KVH, Tk, D] with NH % KVH == 0; mask: bool [B, 1, Tq, Tk]
    (True = attend) or None; causal aligns the last query with the last key.
    Returns [B, NH, Tq, D]. The query heads sharing a kv head are folded into the query length,
    so K and V are never repeated (torch's CPU SDPA spends milliseconds on one-query GQA).
    """
    B, NH, Tq, D = q.shape
    KVH, Tk = k.shape[1], k.shape[2]
    G = NH // KVH
    qg = q.reshape(B, KVH, G * Tq, D)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * (D ** -0.5)
    scores = scores.view(B, KVH, G, Tq, Tk)
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype).view(B, KVH, G * Tq, Tk)
    return torch.matmul(probs, v).view(B, NH, Tq, D)


def attention(q, k, v, mask=None, causal=False):
    return attention_reference(q, k, v, mask=mask, causal=causal)


def istft_reference(mag: torch.Tensor, phase: torch.Tensor, n_fft: int, hop: int,
                    window: torch.Tensor) -> torch.Tensor:
    """Vocos ISTFT head: S = mag * e^{i phase}, DC and Nyquist bins zeroed, center=True.

    mag, phase: [B, n_fft // 2 + 1, F] fp32; returns [B, hop * (F - 1)] fp32.
    """
    spec = torch.polar(mag, phase)
    spec[:, 0] = 0
    spec[:, -1] = 0
    return torch.istft(spec, n_fft, hop, n_fft, window, center=True)


def istft(mag, phase, n_fft, hop, window):
    return istft_reference(mag, phase, n_fft, hop, window)
