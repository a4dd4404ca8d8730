"""Tensor-level wrappers around the native extension ``soprano._C``: the cpu and cuda backends.

``_C`` takes raw pointers, sizes and stream handles so it never links libtorch (one build serves
every torch version). This module turns tensors into those arguments and checks them first: a
wrong shape or stride handed to C++ is a crash or silent garbage, not an exception.
"""
import warnings

import torch

from .bf16_dots import Bf16DotsMatrix

try:
    import soprano._C as _C
except ImportError as err:
    _C = None
    warnings.warn(f"soprano._C is not built ({err}); ops fall back to torch", RuntimeWarning,
                  stacklevel=2)

# dtype names as _C parses them (torch's own, minus "torch.")
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def has_cpu() -> bool:
    return _C is not None


def has_cuda() -> bool:
    return _C is not None and _C.has_cuda()


def has_bf16_dots() -> bool:
    """Whether ``Bf16DotsMatrix`` products run natively here (AMX-BF16)."""
    return _C is not None and _C.bf16_dots_available()


def cpu_features() -> dict[str, bool]:
    """The x86 extensions the CPU has and the OS enables (avx2, avx512f, amx_tile, ...), as the
    native kernels see them; {} when _C is not built."""
    return _C.cpu_features() if _C is not None else {}


def build_info() -> dict:
    """How soprano._C was built: compiler, cxx_standard, openmp, openmp_version, cuda,
    cuda_version, cuda_archs (empty and False values when it is not built)."""
    if _C is None:
        return {"compiler": "", "cxx_standard": 0, "openmp": False, "openmp_version": 0,
                "cuda": False, "cuda_version": "", "cuda_archs": ""}
    return _C.build_info()


def num_threads() -> int:
    """OpenMP threads the native CPU kernels use (1 when _C is not built)."""
    return _C.num_threads() if _C is not None else 1


def set_num_threads(n: int) -> None:
    """Set the native CPU kernels' threads for the whole process (every thread's calls); n >= 1.

    torch keeps its own count: ``soprano.runtime.threads.configure_threads`` sets both."""
    if _C is None:
        if n < 1:
            raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
        return
    _C.set_num_threads(n)


def set_thread_threads(n: int) -> None:
    """Set the native CPU kernels' threads for calls from the calling thread only, over the
    process's count (``set_num_threads``); 0 goes back to it."""
    if n < 0:
        raise ValueError(f"set_thread_threads: n must be >= 0, got {n}")
    if _C is not None:
        _C.set_thread_threads(n)


def _rows(name: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """View t (shaped like x) as [rows, hidden] without copying, or raise."""
    if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
        raise ValueError(f"rms_norm: {name} must match x ({tuple(x.shape)}, {x.dtype}, "
                         f"{x.device}), got {tuple(t.shape)}, {t.dtype}, {t.device}")
    try:
        return t.view(-1, x.shape[-1])
    except RuntimeError:
        raise ValueError(f"rms_norm: {name}'s leading dims must collapse into one stride "
                         f"(got strides {t.stride()}); pass a contiguous tensor") from None


def _prepare(x, weight, out, device_type: str, dtypes):
    if _C is None:
        raise RuntimeError("soprano._C is not built; use soprano.ops.reference.rms_norm")
    if x.device.type != device_type:
        raise ValueError(f"rms_norm_{device_type}: x must be on {device_type}, got {x.device}")
    if x.dtype not in dtypes:
        raise ValueError(f"rms_norm_{device_type}: dtype must be one of "
                         f"{[str(d) for d in dtypes]}, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"rms_norm: x needs a non-empty last dim, got shape {tuple(x.shape)}")
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"rms_norm: weight must be ({hidden},) {x.dtype} on {x.device}, got "
                         f"{tuple(weight.shape)} {weight.dtype} on {weight.device}")
    if x.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError(f"rms_norm: x and weight need a contiguous last dim, got strides "
                         f"{x.stride()} and {weight.stride()}")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.stride(-1) != 1:
        raise ValueError(f"rms_norm: out needs a contiguous last dim, got strides {out.stride()}")
    # reshape, not view: x whose leading dims don't collapse is copied rather than rejected.
    return out, x.reshape(-1, hidden), _rows("out", x, out)


def _args(x2, weight, out2):
    return (x2.data_ptr(), weight.data_ptr(), out2.data_ptr(), x2.shape[0], x2.shape[1],
            x2.stride(0), out2.stride(0))


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 RMSNorm over the last dim on CPU (C++, AVX2 when available, OpenMP over rows)."""
    # x2 may be a copy; holding it here keeps its memory alive through the call.
    out, x2, out2 = _prepare(x, weight, out, "cpu", (torch.float32,))
    _C.rms_norm_cpu(*_args(x2, weight, out2), eps)
    return out


def rms_norm_cuda(x: torch.Tensor, weight: torch.Tensor, eps: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim on the GPU, enqueued on torch's current stream."""
    out, x2, out2 = _prepare(x, weight, out, "cuda", tuple(_DTYPE_NAMES))
    # The kernel launches on the thread's current device, which must own the stream and x.
    with torch.cuda.device(x.device):
        _C.rms_norm_cuda(*_args(x2, weight, out2), eps, _DTYPE_NAMES[x.dtype],
                         torch.cuda.current_stream().cuda_stream)
    return out


def greedy_tokens_cpu(logits: torch.Tensor, seen: torch.Tensor, slots: torch.Tensor,
                      penalty: float) -> torch.Tensor:
    """``reference.greedy_tokens`` in one C++ pass over each chosen row (no gathers, no
    intermediate tensors): logits [S, V] fp32, seen [S, V] bool, slots int64 [B] -> [B]."""
    if _C is None:
        raise RuntimeError("soprano._C is not built; use soprano.ops.reference.greedy_tokens")
    if (logits.dim() != 2 or logits.dtype != torch.float32 or seen.shape != logits.shape
            or seen.dtype != torch.bool or slots.dim() != 1 or slots.dtype != torch.int64
            or not (logits.is_cpu and seen.is_cpu and slots.is_cpu)):
        raise ValueError(f"greedy_tokens_cpu: needs logits [S, V] float32, seen [S, V] bool "
                         f"and slots [B] int64, all on cpu; got {tuple(logits.shape)} "
                         f"{logits.dtype}, {tuple(seen.shape)} {seen.dtype}, "
                         f"{tuple(slots.shape)} {slots.dtype}")
    logits, seen, slots = logits.contiguous(), seen.contiguous(), slots.contiguous()
    out = torch.empty(slots.shape[0], dtype=torch.int64)
    _C.greedy_tokens_cpu(logits.data_ptr(), seen.data_ptr(), slots.data_ptr(), slots.shape[0],
                         logits.shape[1], logits.shape[0], penalty, out.data_ptr())
    return out


def linear_cpu(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
               isa: str = "auto", packed_from_rows: int = 0) -> torch.Tensor:
    """fp32 x [..., K] @ w [N, K]^T (+ bias [N]) with a bf16/fp16/fp32 w, on CPU -> fp32
    [..., N]. The weight is converted in registers, so 16-bit weights stream half the bytes.
    ``isa`` (auto, avx2, avx512) pins the vector width: the packed GEMM (from 28 rows on, or
    ``packed_from_rows``) gives the same bits at either, the few-rows kernels sum in 8 or 16
    lanes. A ``Bf16DotsMatrix`` w goes to the tile unit (``_C.bf16_dots_available()``), x
    rounded to bf16."""
    if _C is None:
        raise RuntimeError("soprano._C is not built; use soprano.ops.reference.linear")
    dots = isinstance(w, Bf16DotsMatrix)
    if dots:
        w = w.weight
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise ValueError(f"linear_cpu: tensors must be on cpu, got {x.device}, {w.device}")
    if x.dtype != torch.float32 or w.dtype not in _DTYPE_NAMES:
        raise ValueError(f"linear_cpu: needs float32 x and a bfloat16/float16/float32 w, got "
                         f"{x.dtype} and {w.dtype}")
    if w.dim() != 2 or x.shape[-1] != w.shape[1] or not w.is_contiguous():
        raise ValueError(f"linear_cpu: x {tuple(x.shape)} and a contiguous w [N, K] "
                         f"{tuple(w.shape)} must agree on K")
    if bias is not None and (bias.shape != (w.shape[0],) or bias.dtype != torch.float32):
        raise ValueError(f"linear_cpu: bias must be float32 ({w.shape[0]},), got "
                         f"{tuple(bias.shape)} {bias.dtype}")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)
    if x2.shape[0] == 0:
        return y
    _C.linear_cpu(x2.data_ptr(), w.data_ptr(), y.data_ptr(), x2.shape[0], w.shape[0],
                  w.shape[1], x2.stride(0), w.shape[0], _DTYPE_NAMES[w.dtype], isa, dots,
                  packed_from_rows)
    return y if bias is None else y.add_(bias)


class Qwen3StepCpu:
    """Whole Qwen3 steps over one set of weights and one KV cache, one native call each.

    ``weights``: ``soprano.ops.weights.Qwen3Weights`` with fp32 vectors (embedding, norms,
    rotary tables) and each matrix bf16, fp16, fp32, or a ``QuantMatrix`` (or a ``RowStack`` of
    them) of Q8_0, Q4_0, Q4_K, Q5_K or Q6_K blocks (types may differ per matrix and part);
    ``k_cache``/``v_cache``: fp32 [layers, slots, KVH, L, D]. All contiguous on CPU. Holds the
    tensors it points into, so they outlive it.
    """

    def __init__(self, weights, k_cache: torch.Tensor, v_cache: torch.Tensor):
        if _C is None:
            raise RuntimeError("soprano._C is not built; step op by op instead")
        from .quantized import (QUANT_MATMUL_TYPES, QuantMatrix, RowStack, matrix_runs,
                                raw_pointer)
        w = weights
        vectors = w.vectors + [k_cache, v_cache]
        for t in vectors + w.matrices:
            if t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError("qwen3_step (cpu): every tensor must be contiguous on cpu")
        if any(t.dtype != torch.float32 for t in vectors):
            raise ValueError("qwen3_step (cpu): embedding, norms, rotary tables and the cache "
                             "must be float32")
        for t in w.matrices:
            if (any(qtype not in QUANT_MATMUL_TYPES.values() for qtype, _ in matrix_runs(t))
                    if isinstance(t, (QuantMatrix, RowStack)) else t.dtype not in _DTYPE_NAMES):
                raise ValueError(f"qwen3_step (cpu): each matrix must be one of "
                                 f"{list(_DTYPE_NAMES.values())} or a QuantMatrix (RowStack) of "
                                 f"{', '.join(QUANT_MATMUL_TYPES)}")
        n_layers, slots, _, max_len, _ = k_cache.shape
        if n_layers != len(w.layers) or v_cache.shape != k_cache.shape:
            raise ValueError(f"qwen3_step (cpu): caches {tuple(k_cache.shape)} and "
                             f"{tuple(v_cache.shape)} must be [{len(w.layers)}, slots, KVH, L, D]")
        self._keep = (vectors, w.matrices)
        ptr = raw_pointer
        layers = [(lw.attn_norm.data_ptr(), ptr(lw.wqkv), lw.q_norm.data_ptr(),
                   lw.k_norm.data_ptr(), ptr(lw.wo), lw.ffn_norm.data_ptr(),
                   ptr(lw.w_gate_up), ptr(lw.w_down)) for lw in w.layers]
        self.hidden_size, self.vocab_size = w.hidden, w.vocab
        self._native = _C.Qwen3StepCpu(
            w.hidden, w.heads, w.kv_heads, w.head_dim, w.intermediate, w.vocab, w.cos.shape[0],
            w.eps, [matrix_runs(m) for m in w.matrices], w.embed.data_ptr(),
            w.final_norm.data_ptr(), ptr(w.lm_head), w.cos.data_ptr(), w.sin.data_ptr(), layers,
            k_cache.data_ptr(), v_cache.data_ptr(), slots, max_len)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                 last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens, positions, slots: int64 [B] -> hidden [B, H], logits [B, V] (fp32), or only
        the last row's ([1, H], [1, V]) with ``last_only`` (a prefill needs no more). Row b
        attends to its slot's positions 0..positions[b]; every row's k and v are cached first,
        so one slot's prompt at positions 0..T-1 is a causal prefill."""
        args = self._rows(tokens, positions, slots)
        B = args[0].shape[0]
        first = B - 1 if last_only else 0
        hidden = torch.empty(B - first, self.hidden_size)
        logits = torch.empty(B - first, self.vocab_size)
        self._native.step(*(a.data_ptr() for a in args), B, first, hidden.data_ptr(),
                          logits.data_ptr())
        return hidden, logits

    def step_into(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                  hidden: torch.Tensor, logits: torch.Tensor) -> None:
        """As a call, each row's outputs written straight to its slot's row of ``hidden`` [S,
        H] and ``logits`` [S, V] (fp32, contiguous), where an engine keeps them: no output
        tensors, no copy. Rows must have distinct slots, each below S."""
        args = self._rows(tokens, positions, slots)
        S = hidden.shape[0] if hidden.dim() == 2 else 0
        for name, t, width in (("hidden", hidden, self.hidden_size),
                               ("logits", logits, self.vocab_size)):
            if (S == 0 or t.shape != (S, width) or t.dtype != torch.float32 or not t.is_cpu
                    or not t.is_contiguous()):
                raise ValueError(f"qwen3_step (cpu): hidden and logits must be contiguous "
                                 f"float32 [S, {self.hidden_size}] and [S, {self.vocab_size}] "
                                 f"on cpu, S > 0; got {name} {t.dtype} {list(t.shape)} on "
                                 f"{t.device}")
        self._native.step(*(a.data_ptr() for a in args), args[0].shape[0], 0, hidden.data_ptr(),
                          logits.data_ptr(), slot_rows=S)

    @staticmethod
    def _rows(tokens, positions, slots) -> list[torch.Tensor]:
        args = [t.to(torch.int64).contiguous() for t in (tokens, positions, slots)]
        B = args[0].shape[0]
        if B == 0 or any(a.shape != (B,) or not a.is_cpu for a in args):
            raise ValueError("qwen3_step (cpu): tokens, positions and slots must be [B] on cpu, "
                             "B > 0")
        return args
