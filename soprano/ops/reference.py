"""The plain-torch reference of every op: the fallback, the test oracle and the benchmark baseline.

Layouts (B batch, N tokens, H hidden, NH/KVH query/kv heads, D head_dim, S cache slots, L cache
length): activations ``[B, T, H]`` or token rows ``[N, ...]``; one layer's KV cache
``[S, KVH, L, D]``; rotary tables ``cos``/``sin`` ``[P, D]`` fp32, indexed by position
(half-split "rotate_half" layout, as Qwen3/NEOX). Every function here is the contract its fast
implementations are tested against.
"""
import torch
import torch.nn.functional as F

from ..model.vocos_shape import MAX_MAGNITUDE
from . import bf16_dots
from .bf16_dots import Bf16DotsMatrix


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32, cast back before the weight (Qwen3's order).

    x: [..., H] fp32/fp16/bf16, weight: [H] same dtype; returns x's shape and dtype.
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ w [N, K]^T (+ bias [N]) in x's dtype -> [..., N]; w may be stored in
    another dtype (bf16/fp16 weights with fp32 activations) and is converted first, or be a
    ``Bf16DotsMatrix``, whose products round x to bf16."""
    if isinstance(w, Bf16DotsMatrix):
        return bf16_dots.linear(x, w, bias)
    return F.linear(x, w.to(x.dtype), bias)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def qk_norm_rope(qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """Qwen3's per-head RMSNorm of q and k, half-split RoPE, and the cache write, for N tokens.

    qkv: [N, (NH + 2 KVH) D], the fused q|k|v projection of N tokens (last dim contiguous);
    q_weight, k_weight: [D], qkv's dtype; cos, sin: fp32 rotary tables [P, D]; positions,
    slots: int64 [N] on qkv's device; k_cache, v_cache: one layer's cache [S, KVH, L, D],
    contiguous, qkv's dtype (KVH and D are read from it). Token n's q and k heads are normed
    (fp32 statistics, cast back before the weight) and rotated at ``positions[n]``; its k and v
    go to ``cache[slots[n], :, positions[n]]``. Tokens that share a (slot, position) must carry
the same k and v (a CUDA-graph bucket's padding rows do); which one lands is otherwise undefined.
    Returns the rotated queries [N, NH, D], contiguous, qkv's dtype.
    """
    N = qkv.shape[0]
    _, KVH, _, D = k_cache.shape
    NH = qkv.shape[-1] // D - 2 * KVH
    q, k, v = qkv.reshape(N, NH + 2 * KVH, D).split([NH, KVH, KVH], dim=1)
    c = cos[positions][:, None].to(qkv.dtype)
    s = sin[positions][:, None].to(qkv.dtype)
    q = rms_norm(q, q_weight, eps)
    k = rms_norm(k, k_weight, eps)
    k_cache[slots, :, positions] = k * c + rotate_half(k) * s
    v_cache[slots, :, positions] = v
    return (q * c + rotate_half(q) * s).contiguous()


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


def attention_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      cu_seqlens: torch.Tensor, slots: torch.Tensor,
                      max_seqlen: int | None = None) -> torch.Tensor:
    """Causal attention of P prompts packed in one batch (varlen), over keys already cached.

    q: [N, NH, D], the rotated queries of every prompt's tokens back to back: prompt p is rows
    ``cu_seqlens[p]..cu_seqlens[p+1]-1`` at positions 0..n_p-1; k_cache, v_cache: one layer's
    cache [S, KVH, L, D] holding prompt p's keys and values at positions 0..n_p-1 of slot
    ``slots[p]`` (what ``qk_norm_rope`` wrote); cu_seqlens: int64 [P + 1], 0 first, rising;
    slots: int64 [P]; ``max_seqlen``: the longest n_p if the caller knows it (saves a device
    read). Token i of a prompt attends to positions 0..i of its slot. Returns [N, NH, D].
    """
    bounds = cu_seqlens.tolist()
    out = torch.empty_like(q)
    for p, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        n = end - start
        if n == 0:
            continue
        slot = int(slots[p])
        keys, values = k_cache[slot:slot + 1, :, :n], v_cache[slot:slot + 1, :, :n]
        out[start:end] = attention(q[None, start:end].transpose(1, 2), keys, values,
                                   causal=True)[0].transpose(0, 1)
    return out


def embed_norm(x: torch.Tensor, src: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """The Vocos embed: Conv1d(C -> D, k) on gathered frames, then LayerNorm.

    x: [R, C] fp32 frames of one or more sequences, packed back to back with their zero
    padding; src: int64 [M], the row of x where output m's k taps start (rows src..src+k-1);
    weight: [D, C, k] (fp32/fp16/bf16), bias, norm_weight, norm_bias: [D] fp32. Returns [M, D].
    """
    k = weight.shape[-1]
    taps = x[src[:, None] + torch.arange(k, device=x.device)]          # [M, k, C]
    y = linear(taps.transpose(1, 2).flatten(1), weight.flatten(1), bias)
    return F.layer_norm(y, (y.shape[-1],), norm_weight, norm_bias, eps)


def convnext_block(x: torch.Tensor, src: torch.Tensor, dw_weight: torch.Tensor,
                   dw_bias: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                   w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                   gamma: torch.Tensor, eps: float) -> torch.Tensor:
    """One Vocos ConvNeXt block on gathered frames: depthwise conv (k taps) -> LayerNorm ->
    Linear(D -> 3D) -> erf GELU -> Linear(3D -> D) -> * gamma -> + the centre tap's input.

    x: [R, D] fp32 frames packed with their zero padding; src: int64 [M], the first of output
    m's k tap rows; dw_weight [D, 1, k], dw_bias, norm_weight, norm_bias, gamma, b2: [D] fp32;
    w1 [3D, D], w2 [D, 3D] (fp32/fp16/bf16), b1 [3D] fp32. Returns [M, D] fp32.
    """
    k = dw_weight.shape[-1]
    y = dw_bias + sum(dw_weight[:, 0, t] * x[src + t] for t in range(k))
    y = F.layer_norm(y, (y.shape[-1],), norm_weight, norm_bias, eps)
    h = F.gelu(linear(y, w1, b1))
    return x[src + k // 2] + gamma * linear(h, w2, b2)


def _head_spectrum(spec: torch.Tensor, max_magnitude: float) -> torch.Tensor:
    """Head rows [..., n_fft + 2] -> the complex spectrum [..., n_fft // 2 + 1] upstream's head
    builds: min(exp(log_mag), max_magnitude) e^{i phase}, DC and Nyquist bins zeroed."""
    log_mag, phase = spec.float().chunk(2, dim=-1)
    s = torch.polar(torch.clip(torch.exp(log_mag), max=max_magnitude), phase)
    s[..., 0] = 0
    s[..., -1] = 0
    return s


def istft_frames(spec: torch.Tensor, window: torch.Tensor,
                 max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    """The Vocos head's frames: spec rows [N, n_fft + 2] fp32 (log-magnitude | phase, as the
    head's Linear writes them) -> S = min(exp(log_mag), max_magnitude) e^{i phase} with the DC
    and Nyquist bins zeroed -> inverse real DFT of n_fft -> times the window [n_fft].
    Returns the windowed frames [N, n_fft] fp32, ready to overlap-add."""
    if spec.shape[0] == 0:  # MKL's FFT rejects an empty batch
        return spec.new_zeros(0, window.shape[0], dtype=torch.float32)
    return torch.fft.irfft(_head_spectrum(spec, max_magnitude), n=window.shape[0]) * window


def istft(spec: torch.Tensor, window: torch.Tensor, hop: int,
          max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    """The Vocos ISTFT head over whole sequences, as upstream computes it with ``torch.istft``.

    spec: [B, F, n_fft + 2] fp32 head rows (see ``istft_frames``); window: [n_fft] (periodic
    Hann); returns [B, hop (F - 1)] fp32: the frames overlap-added every ``hop`` samples,
    divided by the summed squared window, ``n_fft // 2`` samples trimmed at each end.
    """
    n_fft = window.shape[0]
    if spec.shape[1] < 2:  # no sample lies between two frame centres (torch.istft raises)
        return spec.new_zeros(spec.shape[0], 0, dtype=torch.float32)
    return torch.istft(_head_spectrum(spec, max_magnitude).transpose(1, 2), n_fft, hop, n_fft,
                       window, center=True)


# The GGUF tensor types ``dequantize`` decodes (gguf.GGMLQuantizationType names).
DEQUANT_TYPES = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
DEQUANT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_dequantize(op: str, raw: torch.Tensor, qtype: int, n: int, dtype: torch.dtype):
    """``dequantize``'s argument checks, shared by every backend: returns qtype as a
    gguf.GGMLQuantizationType, or raises ValueError naming what is wrong."""
    # gguf (and numpy) load only when GGUF data is decoded: ``import soprano`` stays light
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    try:
        t = GGMLQuantizationType(qtype)
    except ValueError:
        raise ValueError(f"{op}: {qtype!r} is not a ggml type id") from None
    if t.name not in DEQUANT_TYPES:
        raise ValueError(f"{op}: type {t.name} ({int(t)}) is not supported; dequantize decodes "
                         f"{', '.join(DEQUANT_TYPES)}")
    if dtype not in DEQUANT_DTYPES:
        raise ValueError(f"{op}: dtype must be float32, bfloat16 or float16, got {dtype}")
    if raw.dtype != torch.uint8 or raw.dim() != 1 or not raw.is_contiguous():
        raise ValueError(f"{op}: raw must be contiguous 1-D uint8, got {raw.dtype} "
                         f"{list(raw.shape)} with strides {raw.stride()}")
    block, size = GGML_QUANT_SIZES[t]
    if n < 0 or n % block or raw.numel() != n // block * size:
        raise ValueError(f"{op}: {t.name} takes {size} bytes per block of {block}: {n} values are "
                         f"not a whole number of blocks of {raw.numel()} bytes")
    return t


def dequantize(raw: torch.Tensor, qtype: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """GGUF blocks -> floats: raw uint8 [n_bytes] (contiguous, the tensor's data as the file
    stores it) holding ``n`` values of ggml type ``qtype`` (a gguf.GGMLQuantizationType value,
    one of ``DEQUANT_TYPES``) -> [n] in ``dtype`` (fp32, bf16 or fp16) on raw's device.

    gguf-py's numpy decoder (gguf.quants.dequantize) in fp32, then torch's round to nearest even
    to ``dtype``: every backend matches this bit for bit (NaN stays NaN, payload unspecified).
    """
    t = check_dequantize("dequantize", raw, qtype, n, dtype)
    if n == 0:
        return torch.empty(0, dtype=dtype, device=raw.device)
    from gguf.quants import dequantize as gguf_dequantize
    values = gguf_dequantize(raw.cpu().numpy(), t).reshape(-1)
    return torch.from_numpy(values).to(raw.device, dtype)


def quant_linear(x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ w^T (+ bias) for a GGUF-block weight (``soprano.ops.quantized.QuantMatrix``
    [N, K]): the weight dequantized to fp32 (``dequantize``), then ``linear``, in x's dtype."""
    return linear(x, w.dequantized(torch.float32).to(x.dtype), bias)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """logits [B, V] float, seen [B, V] bool -> penalized logits (new tensor): where seen,
    negative logits multiplied by ``penalty`` and the others divided (Hugging Face's rule)."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def greedy_tokens(logits: torch.Tensor, seen: torch.Tensor, slots: torch.Tensor,
                  penalty: float) -> torch.Tensor:
    """Greedy decoding's next tokens: logits [S, V] float, seen [S, V] bool, slots int64 [B]
    -> int64 [B], row b the argmax of slot slots[b]'s penalized logits (the first maximum;
    a NaN wins, as torch.argmax has it)."""
    return apply_repetition_penalty(logits[slots].float(), seen[slots], penalty).argmax(dim=-1)
