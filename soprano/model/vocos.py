"""Soprano's Vocos decoder: LM hidden states -> 32 kHz audio, 2048 samples per token.

hidden [B, C, T] -> linear x4 interpolation (align_corners) to 4(T-1)+1 frames -> embed conv ->
LayerNorm -> ConvNeXt blocks -> LayerNorm -> Linear to log-magnitude | phase -> ISTFT
(n_fft 2048, hop 512, center) -> [B, 2048 (T-1)] samples. Every dimension comes from the weights
(D=768 with a k=1 embed for Soprano-1.1, D=512 with k=3 for Soprano-80M). Compute is fp32, as
upstream. Out of scope: streaming windows (``runtime/streaming.py``), file loading.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops import OpTable

UPSCALE = 4
N_FFT = 2048
HOP = 512
SAMPLES_PER_TOKEN = UPSCALE * HOP
LN_EPS = 1e-6
MAX_MAGNITUDE = 100.0


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


def frames_for(tokens: int, speed: float = 1.0) -> int:
    """Decoder frames for ``tokens`` hidden states: 4 (T-1) + 1, or 4 (T-1) / speed rounded + 1
    (at least 2, so a short sentence at top speed keeps some audio) for a tempo change."""
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, got {speed}")
    if speed == 1.0:
        return UPSCALE * (tokens - 1) + 1
    return max(2, round(UPSCALE * (tokens - 1) / speed) + 1)


class VocosDecoder:
    def __init__(self, w: VocosWeights, ops: OpTable):
        self.w = w
        self.ops = ops
        self.dim = w.embed_weight.shape[0]
        self.input_channels = w.embed_weight.shape[1]
        self.device = w.embed_weight.device
        # How far (in frames) a frame's output reaches into its neighbours' inputs.
        self.receptive_frames = (w.embed_weight.shape[-1] // 2
                                 + sum(b.dw_weight.shape[-1] // 2 for b in w.blocks))

    @torch.inference_mode()
    def __call__(self, hidden: torch.Tensor, speed: float = 1.0) -> torch.Tensor:
        """hidden [B, C, T] (any float dtype) -> audio [B, 512 (F-1)] fp32, F = frames_for(T).

        At speed 1 that is 2048 (T-1) samples. Another ``speed`` changes the tempo, not the
        pitch: the hidden states are interpolated to more or fewer frames while each frame still
        synthesizes 512 samples (resampling the audio would move the pitch with the tempo).
        """
        w = self.w
        x = hidden.float()
        x = F.interpolate(x, size=frames_for(hidden.shape[-1], speed), mode="linear",
                          align_corners=True)
        x = self._embed(x.transpose(1, 2))
        x = F.layer_norm(x, (self.dim,), w.norm_weight, w.norm_bias, LN_EPS)
        for b in w.blocks:
            x = self._convnext(x, b)
        x = F.layer_norm(x, (self.dim,), w.final_norm_weight, w.final_norm_bias, LN_EPS)
        spec = self.ops.linear(x, w.head_weight, w.head_bias).transpose(1, 2)
        log_mag, phase = spec.chunk(2, dim=1)
        mag = torch.clip(torch.exp(log_mag), max=MAX_MAGNITUDE)
        return self.ops.istft(mag, phase, N_FFT, HOP, w.window)

    # The convolutions are written as matmuls and shifted sums over channels-last frames: on a
    # streaming window (a dozen frames) torch's conv1d spends ~0.15-0.5 ms a call in setup.
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Conv1d(C -> D, k, padding k // 2) of x [B, F, C] -> [B, F, D]."""
        w = self.w.embed_weight
        k = w.shape[-1]
        if k > 1:
            x = F.pad(x, (0, 0, k // 2, k // 2)).unfold(1, k, 1).flatten(2)  # [B, F, C k]
        return self.ops.linear(x, w.flatten(1), self.w.embed_bias)

    @staticmethod
    def _depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Depthwise Conv1d(D, D, k, padding k // 2, groups=D) of x [B, F, D] -> [B, F, D]."""
        k, frames = weight.shape[-1], x.shape[1]
        padded = F.pad(x, (0, 0, k // 2, k // 2))
        y = bias + weight[:, 0, 0] * padded[:, :frames]
        for t in range(1, k):
            y = y + weight[:, 0, t] * padded[:, t:t + frames]
        return y

    def _convnext(self, x: torch.Tensor, b: ConvNeXtWeights) -> torch.Tensor:
        """x [B, F, D] channels-last, so the pointwise layers are plain matmuls."""
        y = self._depthwise(x, b.dw_weight, b.dw_bias)
        y = F.layer_norm(y, (self.dim,), b.norm_weight, b.norm_bias, LN_EPS)
        y = F.gelu(self.ops.linear(y, b.w1, b.b1))
        return x + b.gamma * self.ops.linear(y, b.w2, b.b2)
