"""Matrices whose products round their activations to bf16: the CPU tile unit's (AMX-BF16) form
of a quantized model's decoder matrices.

The decoder's ConvNeXt blocks spend its time in two pointwise GEMMs per block. On two AVX-512
cores fp32 FMAs run them at ~250 GFLOP/s; the tile unit runs bf16 products summed in fp32 at
~1200 (bench/RESULTS.md). Rounding the activations to bf16 (in the blocks and the head) puts
noise ~42 dB under the audio, where a Q8_0 model's weights already put it ~31 dB under, so the
loader gives a decoder whose matrices are GGUF blocks this form on CPUs with AMX-BF16
(``OpTable.decoder_matrix``); a 16-bit model's decoder keeps fp32 math and upstream's audio.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, eq=False)
class Bf16DotsMatrix:
    """A [N, K] weight in bf16 (``weight``) multiplied with its activations rounded to bf16 and
    products summed in fp32: the native kernels' ``bfloat16_dots`` type."""
    weight: torch.Tensor

    def __post_init__(self):
        if self.weight.dtype != torch.bfloat16 or self.weight.dim() != 2:
            raise ValueError(f"Bf16DotsMatrix: needs a bfloat16 [N, K] weight, got "
                             f"{self.weight.dtype} {list(self.weight.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes

    def is_contiguous(self) -> bool:
        return self.weight.is_contiguous()


def linear(x: torch.Tensor, w: Bf16DotsMatrix, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: x [..., K] rounded to bf16, @ w^T in x's dtype (+ bias [N])."""
    return F.linear(x.to(torch.bfloat16).to(x.dtype), w.weight.to(x.dtype), bias)
