"""The backend table: which implementation runs each op, decided once when an engine is built.

Each backend (``torch`` reference, ``cpu`` C++, ``cuda`` C++, ``triton``) declares, per op, the
devices and dtypes it accepts (ggml's "does this backend support this op on this tensor?").
``OpTable(device, dtype, backend)`` answers once for every op: ``auto`` takes the first backend
in the device's preference order that is built here and accepts the op; a forced backend takes
its own implementation where it has one and falls back to the torch reference (one log line
naming the op) where it has not. The runtime then calls ``table.rms_norm(...)`` and so on,
with no further choice per call.
"""
import functools
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..model.decoder_dots import quantized_decoder_on_tile_unit
from . import native, native_attention, native_gguf, native_vocos, reference
from .bf16_dots import Bf16DotsMatrix
from .quantized import (GGML_MATMUL_TYPES, QUANT_MATMUL_TYPES, QuantMatrix, RowStack,
                        interleave_rows8, matrix_runs)

log = logging.getLogger("soprano.ops")

BACKENDS = ("torch", "cpu", "cuda", "triton")
# auto's preference per device. The Triton interpreter (its only way to run on a CPU) is a test
# vehicle, hundreds of times slower than the reference, so auto never picks it there.
# Measured on an H200, bf16 (bench/kernels.py and bench/decode_step.py --profile, 2026-11-30):
# in the graphed decode step Triton's rms_norm, qk_norm_rope and flash-decoding took 1.3, 1.4
# and 4.1 us per layer against our CUDA C++ ones' 1.6, 2.2 and 4.4 (a batch-1 step 0.61 vs
# 0.64 ms), while our CUDA prefill of a 42-token prompt took 14 us against Triton's 31.
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}
AUTO_ORDER_BY_OP = {("cuda", "attention_prefill"): ("cuda", "triton", "torch")}
# The decoder's Triton and CUDA kernels (fp32 FMA GEMMs) have not run on a GPU yet: until
# bench/decoder.py measures them against torch's cuBLAS there, auto keeps torch for them.
AUTO_ORDER_BY_OP.update({("cuda", op): ("torch",) for op in
                         ("embed_norm", "convnext_block", "istft_frames", "istft")})
# Likewise GGUF dequantization: its Triton and CUDA kernels are bit-exact in the interpreter and
# compile for sm_80/sm_90, but have not run on a GPU yet (the reference decodes on the CPU).
AUTO_ORDER_BY_OP[("cuda", "dequantize")] = ("torch",)
# upstream soprano-tts's backend= values: which library ran its LM. Ours runs either way.
UPSTREAM_BACKENDS = ("auto", "lmdeploy", "transformers")
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
WEIGHT_DTYPES = FLOATS


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of one op: what it accepts and the callable."""
    backend: str
    fn: Callable
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]                     # activations
    weight_dtypes: tuple[torch.dtype, ...] | None = None  # ops with a weight operand

    def accepts(self, device: str, dtype: torch.dtype, wdtype: torch.dtype | None) -> bool:
        return (device in self.devices and dtype in self.dtypes
                and (wdtype is None or self.weight_dtypes is None or wdtype in self.weight_dtypes))


@dataclass(frozen=True)
class Op:
    name: str
    doc: str
    reference: Callable | None  # None: a composed op, whose reference is its parts run one by one
    has_weight: bool = False


def _triton(module: str, name: str) -> Callable:
    """A Triton kernel's entry point, imported at its first call: importing triton costs a
    second, and under TRITON_INTERPRET the mode is fixed when a kernel module is imported."""
    @functools.cache
    def load() -> Callable:
        return getattr(importlib.import_module(f"soprano.kernels.{module}"), name)

    def call(*args, **kwargs):
        return load()(*args, **kwargs)
    call.__qualname__ = call.__name__ = f"triton_{name}"
    return call


OPS = {op.name: op for op in (
    Op("rms_norm", "RMSNorm over the last dim: x [..., H], weight [H] -> x's shape and dtype",
       reference.rms_norm),
    Op("linear", "x [..., K] @ w [N, K]^T (+ bias [N]) -> [..., N] in x's dtype; w may be "
       "stored in another dtype", reference.linear, has_weight=True),
    Op("qk_norm_rope", "per-head RMSNorm + half-split RoPE of q and k, k and v written to the "
       "cache: qkv [N, (NH+2KVH) D], cache [S, KVH, L, D], positions/slots int64 [N] -> q "
       "[N, NH, D]", reference.qk_norm_rope),
    Op("attention_decode", "one query per sequence against its cache slot: q [B, NH, D], "
       "cache [S, KVH, L, D], slots/lengths int64 [B] -> [B, NH, D]", reference.attention_decode),
    Op("attention_prefill", "causal varlen attention of packed prompts over their cached keys: "
       "q [N, NH, D], cache [S, KVH, L, D], cu_seqlens [P+1], slots [P] -> [N, NH, D]",
       reference.attention_prefill),
    Op("embed_norm", "Vocos embed conv + LayerNorm of gathered frames: x [R, C], src int64 "
       "[M] (first tap rows), weight [D, C, k] -> [M, D]", reference.embed_norm),
    Op("convnext_block", "Vocos ConvNeXt block of gathered frames: depthwise conv + LayerNorm "
       "+ Linear/GELU/Linear + gamma residual; x [R, D], src int64 [M] -> [M, D]",
       reference.convnext_block),
    Op("istft_frames", "Vocos head rows [N, n_fft+2] (log-magnitude | phase) -> windowed "
       "inverse-DFT frames [N, n_fft]", reference.istft_frames),
    Op("istft", "Vocos ISTFT of whole sequences: head rows [B, F, n_fft+2] -> [B, hop (F-1)]",
       reference.istft),
    Op("dequantize", "GGUF blocks -> floats: raw uint8 [n_bytes], ggml type id, element count "
       "-> [n] in the table's or a given dtype", reference.dequantize),
    Op("quant_linear", "x [..., K] @ w^T (+ bias [N]) with w a QuantMatrix [N, K] kept in its "
       "GGUF blocks (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) -> [..., N] in x's dtype",
       reference.quant_linear),
    Op("greedy_tokens", "greedy decoding's next tokens: logits [S, V] float, seen [S, V] bool, "
       "slots int64 [B] -> int64 [B], the argmax of each slot's repetition-penalized logits",
       reference.greedy_tokens),
    Op("vocos_layers", "a whole Vocos decoder pass in one call: VocosWeights -> callable("
       "pending, frames, final) as VocosDecoder.run_layers, with its own pending state", None),
    Op("qwen3_step", "a whole Qwen3 step (decode rows or a prefill) in one call: Qwen3Weights, "
       "KV cache [layers, S, KVH, L, D] -> callable(tokens, positions, slots)", None,
       has_weight=True),
)}

IMPLS: dict[str, list[Impl]] = {
    "greedy_tokens": [
        Impl("cpu", native.greedy_tokens_cpu, ("cpu",), (torch.float32,)),
    ],
    "rms_norm": [
        Impl("cpu", native.rms_norm_cpu, ("cpu",), (torch.float32,)),
        Impl("cuda", native.rms_norm_cuda, ("cuda",), FLOATS),
        Impl("triton", _triton("rms_norm", "rms_norm"), ("cuda", "cpu"), FLOATS),
    ],
    "qk_norm_rope": [
        Impl("cpu", native_attention.qk_norm_rope_cpu, ("cpu",), (torch.float32,)),
        Impl("cuda", native_attention.qk_norm_rope_cuda, ("cuda",), FLOATS),
        Impl("triton", _triton("qk_norm_rope", "qk_norm_rope"), ("cuda", "cpu"), FLOATS),
    ],
    "attention_decode": [
        Impl("cpu", native_attention.attention_decode_cpu, ("cpu",), (torch.float32,)),
        Impl("cuda", native_attention.attention_decode_cuda, ("cuda",), FLOATS),
        Impl("triton", _triton("attention_decode", "attention_decode"), ("cuda", "cpu"),
             FLOATS),
    ],
    "attention_prefill": [
        Impl("cpu", native_attention.attention_prefill_cpu, ("cpu",), (torch.float32,)),
        Impl("cuda", native_attention.attention_prefill_cuda, ("cuda",), FLOATS),
        Impl("triton", _triton("attention_prefill", "attention_prefill"), ("cuda", "cpu"),
             FLOATS),
    ],
    "embed_norm": [
        Impl("cpu", native_vocos.embed_norm_cpu, ("cpu",), (torch.float32,)),
        Impl("cuda", native_vocos.embed_norm_cuda, ("cuda",), (torch.float32,)),
        Impl("triton", _triton("vocos_blocks", "embed_norm"), ("cuda", "cpu"), (torch.float32,)),
    ],
    "convnext_block": [
        Impl("cpu", native_vocos.convnext_block_cpu, ("cpu",), (torch.float32,)),
        Impl("cuda", native_vocos.convnext_block_cuda, ("cuda",), (torch.float32,)),
        Impl("triton", _triton("vocos_blocks", "convnext_block"), ("cuda", "cpu"),
             (torch.float32,)),
    ],
    "istft_frames": [
        Impl("cpu", native_vocos.istft_frames_cpu, ("cpu",), (torch.float32,)),
        Impl("cuda", native_vocos.istft_frames_cuda, ("cuda",), (torch.float32,)),
        Impl("triton", _triton("istft", "istft_frames"), ("cuda", "cpu"), (torch.float32,)),
    ],
    "istft": [
        Impl("cpu", native_vocos.istft_cpu, ("cpu",), (torch.float32,)),
        Impl("cuda", native_vocos.istft_cuda, ("cuda",), (torch.float32,)),
        Impl("triton", _triton("istft", "istft"), ("cuda", "cpu"), (torch.float32,)),
    ],
    # The output dtype is the call's (a weight loads in the dtype it is kept in), not the
    # activations': every backend takes all three.
    "dequantize": [
        Impl("cpu", native_gguf.dequantize_cpu, ("cpu",), FLOATS),
        Impl("cuda", native_gguf.dequantize_cuda, ("cuda",), FLOATS),
        Impl("triton", _triton("gguf_dequant", "dequantize"), ("cuda", "cpu"), FLOATS),
    ],
    # fp32 weights stay with torch: its BLAS is as fast as ours on same-dtype operands, while
    # torch has no fast fp32 x bf16/fp16 matmul on a CPU.
    "linear": [
        Impl("cpu", native.linear_cpu, ("cpu",), (torch.float32,),
             (torch.bfloat16, torch.float16)),
    ],
    # Few rows: int8 activations and integer dots (llama.cpp's scheme), so its results differ
    # from the reference's fp32 math by the activations' 8-bit rounding (tests bound both).
    "quant_linear": [
        Impl("cpu", native_gguf.quant_linear_cpu, ("cpu",), (torch.float32,)),
    ],
    "vocos_layers": [
        Impl("cpu", native_vocos.VocosLayersCpu, ("cpu",), (torch.float32,)),
    ],
    "qwen3_step": [
        Impl("cpu", native.Qwen3StepCpu, ("cpu",), (torch.float32,), WEIGHT_DTYPES),
    ],
}


def backend_available(backend: str, device: str) -> tuple[bool, str]:
    """Whether ``backend`` can run on ``device`` here, and why not."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'")
    if device == "cuda" and not torch.cuda.is_available():
        return False, "torch sees no CUDA GPU"
    if backend == "torch":
        return True, ""
    if backend == "cpu":
        return (native.has_cpu(), "soprano._C is not built") if device == "cpu" else (
            False, "runs on cpu only")
    if backend == "cuda":
        if device != "cuda":
            return False, "runs on cuda only"
        return (native.has_cuda(), "soprano._C was built without CUDA")
    if backend == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed"
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return False, "on cpu only under TRITON_INTERPRET=1"
    return True, ""


def requested_backend(backend: str | None = None) -> str:
    """The backend a caller asked for: ours by name, or upstream's values (and None), which
    mean ``auto`` unless ``SOPRANO_BACKEND`` forces one."""
    if backend is None or backend in UPSTREAM_BACKENDS:
        backend = os.environ.get("SOPRANO_BACKEND", "auto").strip().lower() or "auto"
        where = "SOPRANO_BACKEND"
    else:
        where = "backend"
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"{where} must be auto, {', '.join(BACKENDS)} (or upstream's "
                         f"lmdeploy/transformers, meaning auto), got '{backend}'")
    return backend


def choose(op: str, device: str, dtype: torch.dtype, wdtype: torch.dtype | None = None,
           backend: str = "auto") -> Impl | None:
    """The implementation of ``op`` for these operands: ``backend``'s own, or for ``auto`` the
    first available one in the device's order; None means the reference (or, for a composed op,
    running its parts)."""
    candidates = IMPLS.get(op, [])
    if backend == "auto":
        order = AUTO_ORDER_BY_OP.get((device, op), AUTO_ORDER.get(device, ("torch",)))
    else:
        order = (backend,)
    for name in order:
        for impl in candidates:
            if (impl.backend == name and impl.accepts(device, dtype, wdtype)
                    and backend_available(name, device)[0]):
                return impl
    return None


class OpTable:
    """The ops one model runs, each bound to one implementation for its device and dtype.

    ``linear`` and ``qwen3_step`` take a weight operand whose dtype may differ from the
    activations' (16-bit weights, fp32 math on a CPU): they are resolved for every weight dtype
    at once, and a call picks by its weight's dtype.
    """

    def __init__(self, device, dtype: torch.dtype, backend: str | None = "auto"):
        self.device = torch.device(device)
        self.dtype = dtype
        self.backend = requested_backend(backend)
        dev = self.device.type
        self.choices: dict[tuple[str, torch.dtype | None], str] = {}
        self._by_weight: dict[str, dict[torch.dtype, Impl | None]] = {}
        for name, op in OPS.items():
            wdtypes = WEIGHT_DTYPES if op.has_weight else (None,)
            picks = {w: choose(name, dev, dtype, w, self.backend) for w in wdtypes}
            for w, impl in picks.items():
                self.choices[(name, w)] = impl.backend if impl else "torch"
            if self.backend not in ("auto", "torch") and all(p is None for p in picks.values()):
                log.info("backend %s has no %s for %s %s: using the torch reference",
                         self.backend, name, dev, str(dtype).removeprefix("torch."))
            if op.has_weight:
                self._by_weight[name] = picks
            else:
                impl = picks[None]
                # an op with a method here (dequantize: its default dtype) is called through it
                setattr(self, f"_{name}" if hasattr(OpTable, name) else name,
                        impl.fn if impl else op.reference)

    def linear(self, x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ w^T (+ bias) for a float weight, a QuantMatrix or a RowStack of them, or a
        Bf16DotsMatrix (the cpu kernel where the table's bf16 linear is the cpu's)."""
        if isinstance(w, QuantMatrix):
            return self.quant_linear(x, w, bias)
        if isinstance(w, Bf16DotsMatrix):
            impl = self._by_weight["linear"].get(torch.bfloat16)
            cpu = impl is not None and impl.backend == "cpu"
            return (native.linear_cpu if cpu else reference.linear)(x, w, bias)
        if isinstance(w, RowStack):
            y = torch.cat([self.quant_linear(x, p) for p in w.parts()], dim=-1)
            return y if bias is None else y + bias
        impl = self._by_weight["linear"].get(w.dtype)
        return impl.fn(x, w, bias) if impl else reference.linear(x, w, bias)

    def dequantize(self, raw: torch.Tensor, qtype: int, n: int,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        """GGUF blocks -> [n] floats in ``dtype``, by default the table's (contract:
        ``reference.dequantize``)."""
        return self._dequantize(raw, qtype, n, self.dtype if dtype is None else dtype)

    def fused_step(self, weights, k_cache: torch.Tensor, v_cache: torch.Tensor):
        """A native whole-step callable over these weights and cache, or None when no backend
        has one for every matrix (the runner then steps op by op)."""
        by_weight = self._by_weight["qwen3_step"]
        impls = set()
        for m in weights.matrices:
            if isinstance(m, (QuantMatrix, RowStack)):
                if not all(self.native_quant_type(qtype) for qtype, _ in matrix_runs(m)):
                    return None
                impls.add(next((i for i in by_weight.values() if i and i.backend == "cpu"), None))
            else:
                impls.add(by_weight.get(m.dtype))
        if len(impls) != 1 or None in impls:
            return None  # one native step reads every matrix
        return impls.pop().fn(weights, k_cache, v_cache)

    def fused_decoder(self, weights, eps: float):
        """A native whole-pass callable over a Vocos decoder's weights (``vocos_layers``), or
        None where its layers run op by op: no backend has one, the table runs the decoder's
        ops elsewhere, or a kernel has an even width (the pass takes a radius either side)."""
        impl = self.vocos_layers
        if impl is None or any(self.choices[(op, None)] != "cpu"
                               for op in ("embed_norm", "convnext_block")):
            return None
        widths = [weights.embed_weight.shape[-1]] + [b.dw_weight.shape[-1]
                                                     for b in weights.blocks]
        if any(k % 2 == 0 for k in widths):
            return None
        return impl(weights, eps)

    def native_quant_type(self, qtype: int) -> bool:
        """Whether matrices of ggml type ``qtype`` are multiplied in their stored blocks here
        (so a loader keeps them quantized) rather than dequantized at load."""
        return (self.choices.get(("quant_linear", None)) == "cpu"
                and qtype in QUANT_MATMUL_TYPES.values())

    def native_layout(self, m: QuantMatrix) -> QuantMatrix:
        """``m`` in the layout this table's kernels read fastest: on the CPU its rows
        interleaved by 8 (Q8_0x8, Q4_Kx8, ...: 8 rows' dots in the lanes of one vector), else
        as is."""
        if (m.qtype in GGML_MATMUL_TYPES.values()
                and m.shape[0] % 8 == 0 and self.choices.get(("quant_linear", None)) == "cpu"):
            return interleave_rows8(m)
        return m

    def keeps_decoder_blocks(self) -> bool:
        """Whether a GGUF decoder's matrices may stay in their blocks: its ConvNeXt blocks and
        its head run on the CPU kernels, which multiply them (each type still has to pass
        ``native_quant_type``)."""
        return (self.choices.get(("convnext_block", None)) == "cpu"
                and self.choices.get(("quant_linear", None)) == "cpu")

    def decoder_matrix(self, m):
        """A decoder matrix (a ConvNeXt block's, the head) as this table multiplies it: GGUF
        blocks become a ``Bf16DotsMatrix`` where the CPU blocks run on a tile unit
        (``model.decoder_dots``), anything else is returned as is."""
        if not (isinstance(m, QuantMatrix) and self.keeps_decoder_blocks()
                and quantized_decoder_on_tile_unit()):
            return m
        return Bf16DotsMatrix(m.dequantized(torch.bfloat16, self))

    def native_weight_dtype(self, stored: torch.dtype) -> bool:
        """Whether matrices stored as ``stored`` are multiplied natively (kept as stored) rather
        than converted to the activation dtype first."""
        return stored == self.dtype or self.choices.get(("linear", stored), "torch") != "torch"

    def describe(self) -> dict[str, str]:
        """op (with weight dtype where it matters) -> the backend that runs it."""
        out = {}
        for (name, w), backend in self.choices.items():
            if w is None:
                out[name] = backend
            elif w == self.dtype or w in (torch.bfloat16, torch.float16):
                out[f"{name}[w={str(w).removeprefix('torch.')}]"] = backend
        return out
