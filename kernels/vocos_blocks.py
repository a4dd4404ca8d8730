"""Triton Vocos embed and ConvNeXt blocks over gathered rows (contracts:
``soprano.ops.reference.embed_norm`` and ``convnext_block``).

A block is three kernels: depthwise conv + LayerNorm (one program per output row, the row in
registers), then two tiled GEMMs whose epilogues add the bias and apply erf-GELU, or add the bias,
scale by gamma and add the centre tap's input row (gathered through ``src``, never copied). The
embed is the same GEMM reading its A operand straight from the tap rows (column c k + t of output
m's row is x[src[m] + t, c]), then a LayerNorm kernel. Weights may be fp32, fp16 or bf16; they
are converted to fp32 as they load and every dot runs in IEEE fp32, like the reference.
"""
import torch
import triton
import triton.language as tl

_EPILOGUE_BIAS, _EPILOGUE_GELU, _EPILOGUE_RESIDUAL = 0, 1, 2


@triton.jit
def _norm_rows_kernel(x_ptr, src_ptr, w_ptr, b_ptr, nw_ptr, nb_ptr, out_ptr, D, eps,
                      TAPS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Output row m: the depthwise conv of rows src[m].. (TAPS of them; 0: no conv, row m of x
    as it is), then LayerNorm."""
    m = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    if TAPS == 0:
        acc = tl.load(x_ptr + m * D + cols, mask=mask, other=0.0)
    else:
        first = tl.load(src_ptr + m)
        acc = tl.load(b_ptr + cols, mask=mask, other=0.0)
        for t in tl.static_range(TAPS):
            w = tl.load(w_ptr + cols * TAPS + t, mask=mask, other=0.0)
            acc += w * tl.load(x_ptr + (first + t) * D + cols, mask=mask, other=0.0)
    mean = tl.sum(acc, axis=0) / D
    diff = tl.where(mask, acc - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(diff * diff, axis=0) / D + eps)
    nw = tl.load(nw_ptr + cols, mask=mask, other=0.0)
    nb = tl.load(nb_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + m * D + cols, diff * rstd * nw + nb, mask=mask)


@triton.jit
def _linear_kernel(a_ptr, src_ptr, w_ptr, bias_ptr, gamma_ptr, res_ptr, out_ptr, M, N, K,
                   A_TAPS: tl.constexpr, RES_SHIFT: tl.constexpr, EPILOGUE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[M, N] = epilogue(A @ w[N, K]^T + bias). A is rows of a_ptr (A_TAPS == 0) or the
    taps of a conv, A[m, c A_TAPS + t] = a[src[m] + t, c] (a has K // A_TAPS columns)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    if A_TAPS > 0 or EPILOGUE == 2:
        first = tl.load(src_ptr + rm, mask=m_ok, other=0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        if A_TAPS == 0:
            a_off = rm[:, None].to(tl.int64) * K + rk[None, :]
        else:
            a_off = ((first[:, None] + (rk % A_TAPS)[None, :]) * (K // A_TAPS)
                     + (rk // A_TAPS)[None, :])
        a = tl.load(a_ptr + a_off, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + rn[None, :].to(tl.int64) * K + rk[:, None],
                    mask=n_ok[None, :] & k_ok[:, None], other=0.0).to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision="ieee")
    acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0)[None, :]
    if EPILOGUE == 1:
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    if EPILOGUE == 2:
        res = tl.load(res_ptr + (first[:, None] + RES_SHIFT) * N + rn[None, :],
                      mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        acc = res + tl.load(gamma_ptr + rn, mask=n_ok, other=0.0)[None, :] * acc
    tl.store(out_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc,
             mask=m_ok[:, None] & n_ok[None, :])


def _check(op: str, x: torch.Tensor, src: torch.Tensor, taps: int) -> None:
    if x.dtype != torch.float32 or x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"{op} (triton): x must be contiguous float32 [R, width], got "
                         f"{x.dtype} {list(x.shape)}")
    if src.dtype != torch.int64 or src.dim() != 1 or src.device != x.device:
        raise ValueError(f"{op} (triton): src must be int64 [M] on {x.device}, got {src.dtype} "
                         f"{list(src.shape)} on {src.device}")
    # A GPU kernel cannot raise: a src row past the input is caught here, at one device read.
    if src.numel() and (int(src.min()) < 0 or int(src.max()) + taps > x.shape[0]):
        raise ValueError(f"{op} (triton): src rows must lie in 0..{x.shape[0] - taps}, got "
                         f"{int(src.min())}..{int(src.max())}")


def _linear(a, src, w, bias, out, taps, epilogue, gamma=None, res=None, res_shift=0):
    M, N = out.shape
    K = w.shape[1]
    grid = (triton.cdiv(M, 32), triton.cdiv(N, 64))
    _linear_kernel[grid](a, src, w, bias, gamma if gamma is not None else bias,
                         res if res is not None else a, out, M, N, K, A_TAPS=taps,
                         RES_SHIFT=res_shift, EPILOGUE=epilogue, BLOCK_M=32, BLOCK_N=64,
                         BLOCK_K=32)


def convnext_block(x, src, dw_weight, dw_bias, norm_weight, norm_bias, w1, b1, w2, b2, gamma,
                   eps: float) -> torch.Tensor:
    k = dw_weight.shape[-1]
    _check("convnext_block", x, src, k)
    M, D = src.shape[0], x.shape[1]
    out = torch.empty(M, D, device=x.device)
    if M == 0:
        return out
    normed = torch.empty(M, D, device=x.device)
    _norm_rows_kernel[(M,)](x, src, dw_weight.contiguous(), dw_bias, norm_weight, norm_bias,
                            normed, D, eps, TAPS=k, BLOCK_D=triton.next_power_of_2(D))
    hidden = torch.empty(M, w1.shape[0], device=x.device)
    _linear(normed, src, w1.contiguous(), b1, hidden, 0, _EPILOGUE_GELU)
    _linear(hidden, src, w2.contiguous(), b2, out, 0, _EPILOGUE_RESIDUAL, gamma, x, k // 2)
    return out


def embed_norm(x, src, weight, bias, norm_weight, norm_bias, eps: float) -> torch.Tensor:
    k = weight.shape[-1]
    _check("embed_norm", x, src, k)
    M, D = src.shape[0], weight.shape[0]
    out = torch.empty(M, D, device=x.device)
    if M == 0:
        return out
    _linear(x, src, weight.reshape(D, -1).contiguous(), bias, out, k, _EPILOGUE_BIAS)
    _norm_rows_kernel[(M,)](out, src, bias, bias, norm_weight, norm_bias, out, D, eps, TAPS=0,
                            BLOCK_D=triton.next_power_of_2(D))
    return out
