"""Triton Vocos ISTFT head (contracts: ``soprano.ops.reference.istft_frames`` and ``istft``).

The inverse real DFT is a GEMM against ``soprano.ops.dft.inverse_basis`` (cos columns, then
-sin ones), where a + ib = min(e^log_mag, clip) e^{i phase}. The head's exp, clip, cos and sin
run on each K tile as it loads (never stored), the window multiplies in the epilogue. A frame
costs 2 n (n/2 + 1) MACs against an FFT's ~n log n, but on a GPU they are dense dots, and the
batch of a decode step is a few hundred frames. Then one kernel overlap-adds, divides by the
summed squared window and trims. All in IEEE fp32.
"""
import torch
import triton
import triton.language as tl

from soprano.ops.dft import inverse_basis
from soprano.ops.reference import MAX_MAGNITUDE


@triton.jit
def _frames_kernel(spec_ptr, basis_ptr, window_ptr, out_ptr, M, spec_row_stride, BINS,
                   NFFT, max_magnitude, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < NFFT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    row = spec_ptr + rm[:, None].to(tl.int64) * spec_row_stride
    for k0 in range(0, BINS, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < BINS
        ok = m_ok[:, None] & k_ok[None, :]
        log_mag = tl.load(row + rk[None, :], mask=ok, other=-float("inf"))
        phase = tl.load(row + BINS + rk[None, :], mask=ok, other=0.0)
        mag = tl.minimum(tl.exp(log_mag.to(tl.float32)), max_magnitude)
        phase = phase.to(tl.float32)
        basis = basis_ptr + rn[None, :].to(tl.int64) * (2 * BINS) + rk[:, None]
        b_ok = k_ok[:, None] & n_ok[None, :]
        c = tl.load(basis, mask=b_ok, other=0.0)
        s = tl.load(basis + BINS, mask=b_ok, other=0.0)
        acc = tl.dot(mag * tl.cos(phase), c, acc, input_precision="ieee")
        acc = tl.dot(mag * tl.sin(phase), s, acc, input_precision="ieee")
    acc *= tl.load(window_ptr + rn, mask=n_ok, other=0.0)[None, :]
    tl.store(out_ptr + rm[:, None].to(tl.int64) * NFFT + rn[None, :], acc,
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _overlap_add_kernel(frames_ptr, window_ptr, out_ptr, F, NFFT, HOP, LENGTH,
                        OVERLAP: tl.constexpr, BLOCK: tl.constexpr):
    """out[b, s] for a block of s: the windowed frames covering padded position s + NFFT / 2,
    divided by their summed squared window (at most OVERLAP = NFFT / HOP frames)."""
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    s_ok = s < LENGTH
    pos = s + NFFT // 2
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    env = tl.zeros((BLOCK,), dtype=tl.float32)
    for back in tl.static_range(OVERLAP):
        g = pos // HOP - back
        i = pos - g * HOP
        ok = s_ok & (g >= 0) & (g < F) & (i < NFFT)
        w = tl.load(window_ptr + i, mask=ok, other=0.0)
        total += tl.load(frames_ptr + (b * F + g) * NFFT + i, mask=ok, other=0.0)
        env += w * w
    tl.store(out_ptr + b * LENGTH + s, total / env, mask=s_ok)


def _check(op: str, spec: torch.Tensor, window: torch.Tensor) -> int:
    n_fft = window.shape[0]
    if spec.shape[-1] != n_fft + 2 or spec.device != window.device:
        raise ValueError(f"{op} (triton): spec must be [..., {n_fft + 2}] on {window.device}, "
                         f"got {list(spec.shape)} on {spec.device}")
    return n_fft


def istft_frames(spec: torch.Tensor, window: torch.Tensor,
                 max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    n_fft = _check("istft_frames", spec, window)
    rows = spec.reshape(-1, n_fft + 2)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], n_fft, device=spec.device)
    if rows.shape[0]:
        grid = (triton.cdiv(rows.shape[0], 32), triton.cdiv(n_fft, 64))
        _frames_kernel[grid](rows, inverse_basis(n_fft, spec.device),
                             window.float().contiguous(), out, rows.shape[0], rows.stride(0),
                             n_fft // 2 + 1, n_fft, max_magnitude, BLOCK_M=32, BLOCK_N=64,
                             BLOCK_K=32)
    return out


def istft(spec: torch.Tensor, window: torch.Tensor, hop: int,
          max_magnitude: float = MAX_MAGNITUDE) -> torch.Tensor:
    n_fft = _check("istft", spec, window)
    B, F = spec.shape[0], spec.shape[1]
    length = hop * (F - 1) if F >= 2 else 0
    out = torch.empty(B, length, device=spec.device)
    if B and length:
        frames = istft_frames(spec, window, max_magnitude)
        _overlap_add_kernel[(B, triton.cdiv(length, 256))](
            frames, window.float().contiguous(), out, F, n_fft, hop, length,
            OVERLAP=triton.cdiv(n_fft, hop), BLOCK=256)
    return out
