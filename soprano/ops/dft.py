"""The inverse real DFT as a matrix, for the ISTFT kernels that run it as a GEMM (Triton, CUDA).

With the DC and Nyquist bins zeroed (as the Vocos head does), frame sample j of the inverse DFT
of a + ib over bins k = 0..n/2 is sum_k a_k 2 cos(2 pi k j / n) / n - b_k 2 sin(2 pi k j / n) / n.
``inverse_basis`` is that matrix as [n, 2 (n/2 + 1)]: the cos columns, then the -sin ones, built
in fp64 with k j reduced mod n before the angle, rounded once to fp32.
"""
import functools
import math

import torch


@functools.cache
def inverse_basis(n_fft: int, device: torch.device) -> torch.Tensor:
    bins = n_fft // 2 + 1
    kj = (torch.arange(n_fft, dtype=torch.int64)[:, None] * torch.arange(bins)[None]) % n_fft
    angle = kj.double() * (2 * math.pi / n_fft)
    scale = torch.full((1, bins), 2.0 / n_fft, dtype=torch.float64)
    scale[0, 0] = scale[0, -1] = 0.0
    basis = torch.cat([scale * angle.cos(), -scale * angle.sin()], dim=1)
    return basis.float().to(device).contiguous()
