"""Tensor-level wrappers of the native attention ops (cpu and cuda backends of qk_norm_rope,
attention_decode, attention_prefill).

Contracts are ``soprano.ops.reference``'s. These wrappers check what C++ cannot see (shapes,
dtypes, devices, strides) and pass raw pointers; ``csrc/attention_params.h`` checks sizes and
pointers, the CPU kernels check index values, the CUDA kernels clamp them (they live on the GPU).
"""
import contextlib

import torch

from .native import _C, _DTYPE_NAMES


def _require_built(op: str, device: str) -> None:
    if _C is None:
        raise RuntimeError(f"{op}: soprano._C is not built; use soprano.ops.reference.{op}")
    if device == "cuda" and not _C.has_cuda():
        raise RuntimeError(f"{op}: soprano._C was built without CUDA")


def _check_cache(op: str, k_cache: torch.Tensor, v_cache: torch.Tensor, dtype: torch.dtype,
                 device: torch.device) -> tuple[int, int, int, int]:
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"{op}: k_cache and v_cache must be one layer's [S, KVH, L, D], got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != dtype or t.device != device or not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous {dtype} on {device}, got "
                             f"{t.dtype} on {t.device}, strides {t.stride()}")
    return tuple(k_cache.shape)


def _check_index(op: str, name: str, t: torch.Tensor, n: int, device: torch.device) -> None:
    if t.shape != (n,) or t.dtype != torch.int64 or t.device != device or not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous int64 [{n}] on {device}, got "
                         f"{t.dtype} {tuple(t.shape)} on {t.device}")


def _device_args(op: str, x: torch.Tensor, device: str, dtypes) -> tuple:
    """(dtype name,) on a CPU, (dtype name, stream) on a GPU, after the device/dtype checks."""
    _require_built(op, device)
    if x.device.type != device or x.dtype not in dtypes:
        raise ValueError(f"{op}_{device}: needs {[str(d) for d in dtypes]} on {device}, got "
                         f"{x.dtype} on {x.device}")
    if device == "cpu":
        return (_DTYPE_NAMES[x.dtype],)
    return (_DTYPE_NAMES[x.dtype], torch.cuda.current_stream(x.device).cuda_stream)


def _on(x: torch.Tensor):
    """CUDA kernels launch on the thread's current device, which must own x and the stream."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _qk_norm_rope(device: str, dtypes, qkv, q_weight, k_weight, cos, sin, positions, slots,
                  k_cache, v_cache, eps):
    op = "qk_norm_rope"
    tail = _device_args(op, qkv, device, dtypes)
    S, KVH, L, D = _check_cache(op, k_cache, v_cache, qkv.dtype, qkv.device)
    if qkv.dim() != 2 or qkv.stride(-1) != 1 or qkv.shape[1] % D or qkv.shape[1] // D <= 2 * KVH:
        raise ValueError(f"{op}: qkv must be [N, (NH + 2 KVH) D] with a contiguous last dim "
                         f"(KVH={KVH}, D={D}), got {tuple(qkv.shape)} strides {qkv.stride()}")
    N, NH = qkv.shape[0], qkv.shape[1] // D - 2 * KVH
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (D,) or w.dtype != qkv.dtype or w.device != qkv.device:
            raise ValueError(f"{op}: {name} must be ({D},) {qkv.dtype} on {qkv.device}, got "
                             f"{tuple(w.shape)} {w.dtype} on {w.device}")
    if (cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != D
            or any(t.dtype != torch.float32 or t.device != qkv.device or not t.is_contiguous()
                   for t in (cos, sin))):
        raise ValueError(f"{op}: cos and sin must be contiguous float32 [P, {D}] on "
                         f"{qkv.device}, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    _check_index(op, "positions", positions, N, qkv.device)
    _check_index(op, "slots", slots, N, qkv.device)
    q = torch.empty(N, NH, D, dtype=qkv.dtype, device=qkv.device)
    with _on(qkv):
        getattr(_C, f"qk_norm_rope_{device}")(
            qkv.data_ptr(), qkv.stride(0), q_weight.data_ptr(), k_weight.data_ptr(),
            cos.data_ptr(), sin.data_ptr(), positions.data_ptr(), slots.data_ptr(), q.data_ptr(),
            k_cache.data_ptr(), v_cache.data_ptr(), N, NH, KVH, D, S, L, cos.shape[0], eps, *tail)
    return q


def _check_q(op: str, q: torch.Tensor, KVH: int, D: int) -> tuple[int, int]:
    if q.dim() != 3 or q.shape[2] != D or q.shape[1] % KVH or not q.is_contiguous():
        raise ValueError(f"{op}: q must be contiguous [rows, NH, {D}] with NH a multiple of "
                         f"KVH={KVH}, got {tuple(q.shape)} strides {q.stride()}")
    return q.shape[0], q.shape[1]


def _attention_decode(device: str, dtypes, q, k_cache, v_cache, slots, lengths, span=None):
    op = "attention_decode"
    tail = _device_args(op, q, device, dtypes)
    S, KVH, L, D = _check_cache(op, k_cache, v_cache, q.dtype, q.device)
    B, NH = _check_q(op, q, KVH, D)
    _check_index(op, "slots", slots, B, q.device)
    _check_index(op, "lengths", lengths, B, q.device)
    span = L if span is None else span
    out = torch.empty_like(q)
    if B == 0:
        return out
    args = (q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(),
            lengths.data_ptr(), out.data_ptr(), B, NH, KVH, D, S, L, span)
    if device == "cpu":
        _C.attention_decode_cpu(*args, *tail)
        return out
    # split-K partials (max, sum, accumulator per split), sized by the kernel's own split rule
    size = _C.attention_decode_cuda_workspace(B, NH, D, span)
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=q.device)
    with _on(q):
        _C.attention_decode_cuda(*args, tail[0], workspace.data_ptr(), size, tail[1])
    return out


def _attention_prefill(device: str, dtypes, q, k_cache, v_cache, cu_seqlens, slots,
                       max_seqlen=None):
    op = "attention_prefill"
    tail = _device_args(op, q, device, dtypes)
    S, KVH, L, D = _check_cache(op, k_cache, v_cache, q.dtype, q.device)
    N, NH = _check_q(op, q, KVH, D)
    P = slots.shape[0] if slots.dim() == 1 else -1
    _check_index(op, "slots", slots, P, q.device)
    _check_index(op, "cu_seqlens", cu_seqlens, P + 1, q.device)
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if P else 0
    out = torch.empty_like(q)
    if N == 0 or P == 0:
        return out
    with _on(q):
        getattr(_C, f"attention_prefill_{device}")(
            q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), cu_seqlens.data_ptr(),
            slots.data_ptr(), out.data_ptr(), N, P, max_seqlen, NH, KVH, D, S, L, *tail)
    return out


CPU_DTYPES = (torch.float32,)
CUDA_DTYPES = tuple(_DTYPE_NAMES)


def qk_norm_rope_cpu(*args):
    return _qk_norm_rope("cpu", CPU_DTYPES, *args)


def qk_norm_rope_cuda(*args):
    return _qk_norm_rope("cuda", CUDA_DTYPES, *args)


def attention_decode_cpu(*args, **kwargs):
    return _attention_decode("cpu", CPU_DTYPES, *args, **kwargs)


def attention_decode_cuda(*args, **kwargs):
    return _attention_decode("cuda", CUDA_DTYPES, *args, **kwargs)


def attention_prefill_cpu(*args, **kwargs):
    return _attention_prefill("cpu", CPU_DTYPES, *args, **kwargs)


def attention_prefill_cuda(*args, **kwargs):
    return _attention_prefill("cuda", CUDA_DTYPES, *args, **kwargs)
