"""Soprano's Vocos decoder: LM hidden states -> 32 kHz audio, 2048 samples per token.

hidden [B, C, T] -> linear x4 interpolation (align_corners) to 4(T-1)+1 frames -> embed conv ->
LayerNorm -> ConvNeXt blocks -> LayerNorm -> Linear to log-magnitude | phase -> ISTFT
(n_fft 2048, hop 512, center) -> [B, 2048 (T-1)] samples. Every dimension comes from the weights
(D=768 with a k=1 embed for Soprano-1.1, D=512 with k=3 for Soprano-80M). Compute is fp32, as
upstream. A streamed sequence goes through the same pass as a whole one, a piece at a time,
with each convolution's pending rows carried between pieces. Out of scope: when pieces go out
and the streamed overlap-add (``runtime/streaming.py``), file loading.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops import OpTable
from .vocos_shape import HOP, LN_EPS, N_FFT, SAMPLES_PER_TOKEN, UPSCALE  # noqa: F401 (its API)


@dataclass
class ConvNeXtWeights:
    dw_weight: torch.Tensor   # [D, 1, k]
    dw_bias: torch.Tensor     # [D]
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    w1: torch.Tensor          # [3D, D]
    b1: torch.Tensor
    w2: torch.Tensor          # [D, 3D]
    b2: torch.Tensor
    gamma: torch.Tensor       # [D]


@dataclass
class VocosWeights:
    embed_weight: torch.Tensor     # [D, C, k]
    embed_bias: torch.Tensor
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    blocks: list[ConvNeXtWeights]
    final_norm_weight: torch.Tensor
    final_norm_bias: torch.Tensor
    head_weight: torch.Tensor      # [n_fft + 2, D]
    head_bias: torch.Tensor
    window: torch.Tensor           # [n_fft] periodic Hann


# F.interpolate's weights for the frames between two states (align_corners, x4).
_LERP = torch.arange(1, UPSCALE + 1, dtype=torch.float32) / UPSCALE


def frames_between(seq: torch.Tensor) -> torch.Tensor:
    """States [..., T, C] fp32 -> the x4 frames after the first one [..., 4 (T-1), C]: frame
    4t + j (j = 1..4) is (1 - j/4) s_t + j/4 s_t+1, F.interpolate's (align_corners) up to its
    last bit. The whole decode and the streamed one both take their frames from here, so they
    agree bit for bit: a bf16-dots decoder (``ops.bf16_dots``) turns a last-bit difference
    into ~1e-3 of audio."""
    lerp = _LERP.to(seq.device)[:, None]
    return ((1 - lerp) * seq[..., :-1, None, :] + lerp * seq[..., 1:, None, :]).flatten(-3, -2)


def frames_for(tokens: int, speed: float = 1.0) -> int:
    """Decoder frames for ``tokens`` hidden states: 4 (T-1) + 1, or 4 (T-1) / speed rounded + 1
    (at least 2, so a short sentence at top speed keeps some audio) for a tempo change."""
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, got {speed}")
    if speed == 1.0:
        return UPSCALE * (tokens - 1) + 1
    return max(2, round(UPSCALE * (tokens - 1) / speed) + 1)


def fresh_pending(radii: list[int], dim: int, channels: int, device) -> list[torch.Tensor]:
    """Each convolution's pending input rows for a sequence with nothing decoded yet: its left
    zero padding (the embed's rows have ``channels`` columns, the blocks' ``dim``)."""
    return [torch.zeros(r, channels if i == 0 else dim, device=device)
            for i, r in enumerate(radii)]


class VocosDecoder:
    """Decodes sequences whole (``__call__``) or piece by piece (``run_layers``): both go through
    the same pass over frames packed from many sequences, so a streamed sequence computes every
    frame once and equals the whole decode up to float rounding."""

    def __init__(self, w: VocosWeights, ops: OpTable):
        self.w = w
        self.ops = ops
        self.dim = w.embed_weight.shape[0]
        self.input_channels = w.embed_weight.shape[1]
        self.device = w.embed_weight.device
        # Each convolution's reach to either side, embed first; a frame's output depends on
        # the input frames within their sum (the receptive field).
        self.radii = [w.embed_weight.shape[-1] // 2] + [b.dw_weight.shape[-1] // 2
                                                        for b in w.blocks]
        self.receptive_frames = sum(self.radii)
        # The whole pass in one native call where the table has one (each sequence's pending
        # rows then in its layout); else op by op, below.
        self._fused = ops.fused_decoder(w, LN_EPS)

    @torch.inference_mode()
    def __call__(self, hidden: torch.Tensor, speed: float = 1.0) -> torch.Tensor:
        """hidden [B, C, T] (any float dtype) -> audio [B, 512 (F-1)] fp32, F = frames_for(T).

        At speed 1 that is 2048 (T-1) samples. Another ``speed`` changes the tempo, not the
        pitch: the hidden states are interpolated to more or fewer frames while each frame still
        synthesizes 512 samples (resampling the audio would move the pitch with the tempo).
        """
        B = hidden.shape[0]
        if speed == 1.0:
            seq = hidden.float().transpose(1, 2)
            x = torch.cat([seq[:, :1], frames_between(seq)], dim=1)
        else:
            x = F.interpolate(hidden.float(), size=frames_for(hidden.shape[-1], speed),
                              mode="linear", align_corners=True).transpose(1, 2)
        pending = [self.fresh_pending() for _ in range(B)]
        spec, _ = self.run_layers(pending, list(x), [True] * B)
        return self.ops.istft(torch.stack(spec), self.w.window, HOP)

    def fresh_pending(self):
        """A sequence's pending state with nothing decoded yet (opaque to callers)."""
        if self._fused is not None:
            return self._fused.fresh_pending()
        return fresh_pending(self.radii, self.dim, self.input_channels, self.device)

    @torch.inference_mode()
    def run_layers(self, pending: list, frames: list[torch.Tensor],
                   final: list[bool]) -> tuple[list[torch.Tensor], list]:
        """Sequence i's new interpolated frames ``frames[i]`` [n_i, C] through the embed, the
        blocks, the final LayerNorm and the head -> (its spec rows [m_i, n_fft + 2] for every
        frame now final, its new pending rows). ``pending[i]`` holds, per convolution, the input
        rows it has not finished with (``fresh_pending`` for a new sequence: a list of tensors
        here, ``PendingRows`` in the fused pass); ``final[i]`` says no frames follow, so the
        right edge is zero-padded and everything comes out."""
        if self._fused is not None:
            return self._fused(pending, frames, final)
        w = self.w
        kept = []  # per convolution: each sequence's rows still pending

        def gather(layer: int, new: list[torch.Tensor]):
            x, src, counts, rest = _gather([p[layer] for p in pending], new, final,
                                           self.radii[layer])
            kept.append(rest)
            return x, src, counts

        x, src, counts = gather(0, frames)
        rows = self.ops.embed_norm(x, src, w.embed_weight, w.embed_bias, w.norm_weight,
                                   w.norm_bias, LN_EPS)
        for layer, b in enumerate(w.blocks, start=1):
            x, src, counts = gather(layer, list(rows.split(counts)))
            rows = self.ops.convnext_block(x, src, b.dw_weight, b.dw_bias, b.norm_weight,
                                           b.norm_bias, b.w1, b.b1, b.w2, b.b2, b.gamma, LN_EPS)
        rows = F.layer_norm(rows, (self.dim,), w.final_norm_weight, w.final_norm_bias, LN_EPS)
        spec = self.ops.linear(rows, w.head_weight, w.head_bias)
        new_pending = [[rest[i] for rest in kept] for i in range(len(frames))]
        return list(spec.split(counts)), new_pending


def _gather(pending: list[torch.Tensor], new: list[torch.Tensor], final: list[bool], radius: int):
    """One convolution's input for every sequence, packed: (rows [R, width], src [M], outputs
    per sequence, rows each sequence keeps pending). Sequence i's rows are its pending rows, its
    new rows and, when final, the right zero padding; it outputs every centre with ``radius``
    rows on either side, and keeps the rows a later centre still needs."""
    parts, srcs, counts, sizes = [], [], [], []
    start = 0
    for rows, more, last in zip(pending, new, final):
        size = rows.shape[0] + more.shape[0] + (radius if last else 0)
        parts += [rows, more] + ([more.new_zeros(radius, more.shape[1])] if last and radius
                                 else [])
        n = max(0, size - 2 * radius)
        srcs.append(torch.arange(start, start + n, device=more.device))
        counts.append(n)
        sizes.append(size)
        start += size
    x = torch.cat(parts)  # one copy of every row, however many sequences
    # copies: a view would keep this pass's whole packed tensor alive until the next piece
    kept = [buf[n:].clone() for buf, n in zip(x.split(sizes), counts)]
    return x, torch.cat(srcs), counts, kept
