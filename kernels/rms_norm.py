"""Triton RMSNorm: the GPU backend that needs no compiled extension.

It JIT-compiles wherever triton runs, so it covers machines where ``soprano._C`` was built
without CUDA; under ``TRITON_INTERPRET=1`` (set before this module is imported) it also runs on
CPU tensors, which is how the tests check it without a GPU.
"""
import torch
import triton
import triton.language as tl

# One program holds a whole row in registers; beyond this a row would need a looped kernel.
_MAX_BLOCK = 65536
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, x_row_stride, out_row_stride, hidden, eps,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden  # BLOCK is hidden rounded up to a power of two
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / hidden + eps)
    # Round the normalized value to the output dtype before the weight, as Qwen3 (and the
    # reference) do.
    dtype = out_ptr.dtype.element_ty
    normed = (x * rstd).to(dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, (w * normed).to(dtype), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim of x ([..., H]) with weight [H]; fp32 accumulation."""
    if x.dtype not in _DTYPES:
        raise ValueError(f"rms_norm (triton): dtype must be one of {_DTYPES}, got {x.dtype}")
    hidden = x.shape[-1] if x.dim() else 0
    if weight.shape != (hidden,) or weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"rms_norm (triton): weight must be ({hidden},) {x.dtype} on {x.device}, "
                         f"got {tuple(weight.shape)} {weight.dtype} on {weight.device}")
    block = triton.next_power_of_2(hidden)
    if not 0 < block <= _MAX_BLOCK:
        raise ValueError(f"rms_norm (triton): hidden must be in 1..{_MAX_BLOCK}, got {hidden}")
    if x.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError(f"rms_norm (triton): x and weight need a contiguous last dim, got "
                         f"strides {x.stride()} and {weight.stride()}")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"rms_norm (triton): out must match x ({tuple(x.shape)}, {x.dtype}), "
                         f"got {tuple(out.shape)}, {out.dtype}")
    elif out.stride(-1) != 1:
        raise ValueError(f"rms_norm (triton): out needs a contiguous last dim, got {out.stride()}")
    x2 = x.reshape(-1, hidden)
    try:
        out2 = out.view(-1, hidden)
    except RuntimeError:
        raise ValueError(f"rms_norm (triton): out's leading dims must collapse into one stride, "
                         f"got strides {out.stride()}") from None
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](x2, weight, out2, x2.stride(0), out2.stride(0), hidden,
                                         eps, BLOCK=block,
                                         num_warps=min(max(block // 256, 1), 8))
    return out
