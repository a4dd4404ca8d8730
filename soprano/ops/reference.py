"""The plain-torch reference of every op: the fallback, the test oracle and the benchmark baseline.

Layouts (B batch, T tokens, H hidden, NH/KVH query/kv heads, D head_dim, S cache slots, L cache
length): activations ``[B, T, H]``; per-head tensors ``[B, NH, T, D]``; one layer's KV cache
``[S, KVH, L, D]``; rotary tables ``cos``/``sin`` ``[T, D]`` (half-split "rotate_half" layout,
as Qwen3/NEOX). Every function here is the contract its fast implementations are tested against.
"""
import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32, cast back before the weight (Qwen3's order).

    x: [..., H] fp32/fp16/bf16, weight: [H] same dtype; returns x's shape and dtype.
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ w [N, K]^T (+ bias [N]) in x's dtype -> [..., N]; w may be stored in
    another dtype (bf16/fp16 weights with fp32 activations) and is converted first."""
    return F.linear(x, w.to(x.dtype), bias)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def qk_norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """Qwen3's per-head RMSNorm followed by half-split rotary embedding.

    x: [B, heads, T, D]; weight: [D]; cos/sin: [T, D] or [B, 1, T, D] (fp32 or x's dtype).
    """
    y = rms_norm(x, weight, eps)
    return y * cos.to(x.dtype) + rotate_half(y) * sin.to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
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


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     slots: torch.Tensor, lengths: torch.Tensor,
                     span: int | None = None) -> torch.Tensor:
    """One query per sequence against its own cache slot.

    q: [B, NH, D]; k_cache, v_cache: one layer's cache [S, KVH, L, D]; slots, lengths: int64 [B]
    on q's device (row b attends to positions 0..lengths[b]-1 of slot slots[b]); ``span``: a
    bound on every length known to the caller (positions beyond it are not read), or None for
    the whole cache (fixed shapes, as a CUDA graph needs). Returns [B, NH, D].
    """
    span = k_cache.shape[2] if span is None else span
    keys = k_cache[slots, :, :span]
    values = v_cache[slots, :, :span]
    mask = torch.arange(span, device=q.device)[None, :] < lengths[:, None]
    return attention(q[:, :, None], keys, values, mask=mask[:, None, None, :])[:, :, 0]


def istft(mag: torch.Tensor, phase: torch.Tensor, n_fft: int, hop: int,
          window: torch.Tensor) -> torch.Tensor:
    """Vocos ISTFT head: S = mag * e^{i phase}, DC and Nyquist bins zeroed, center=True.

    mag, phase: [B, n_fft // 2 + 1, F] fp32; returns [B, hop * (F - 1)] fp32.
    """
    spec = torch.polar(mag, phase)
    spec[:, 0] = 0
    spec[:, -1] = 0
    return torch.istft(spec, n_fft, hop, n_fft, window, center=True)
