"""GGUF dequantize on every backend the table lists, bit for bit against gguf-py's numpy decoder
(``soprano.ops.reference.dequantize``): every type, 1, 3 and 37 blocks and a 7 x 512 matrix,
fp32/bf16/fp16 out. Inputs are real quantizations (where gguf-py can quantize the type) and
random bytes whose fp16 scale fields are overwritten with finite random fp16 values, so every bit
of a layout (K-quants' packed 6-bit scales above all) is exercised.

Triton runs in its interpreter without a GPU; CUDA cases are marked ``gpu``.
"""
import os

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before any soprano.kernels module is imported

import gguf  # noqa: E402

from soprano.ops import OpTable, native, reference  # noqa: E402
from soprano.ops.reference import DEQUANT_DTYPES, DEQUANT_TYPES  # noqa: E402
from soprano.ops.table import backend_available  # noqa: E402
from op_cases import impl_cases  # noqa: E402

QT = gguf.GGMLQuantizationType
# Block counts, then a [rows, cols] matrix of values (a weight's shape).
SIZES = [1, 3, 37, (7, 512)]
# Byte offsets of each type's fp16 scale fields within a block (F16/BF16: the values themselves).
SCALES = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_1": (0, 2), "Q5_1": (0, 2),
          "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
QUANTIZABLE = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # gguf.quants.quantize
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}

BACKEND_CASES = list(impl_cases(["dequantize"]))
# Random bytes give values past fp16's range (and numpy warns as they become inf, as they must).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def _check_available(impl, device):
    ok, why = backend_available(impl.backend, device)
    assert ok, f"{impl.backend} is not usable on {device} here: {why}"


def _finite_halves(rng, count):
    bits = rng.integers(0, 1 << 16, count, dtype=np.uint16)
    bits[(bits & 0x7C00) == 0x7C00] ^= 0x0400  # an all-ones exponent (inf, NaN) -> finite
    return bits


def _no_nans(name, bits):
    """F16/BF16 values: NaNs made finite (their payloads are unspecified); infinities stay."""
    exp, mant = (0x7C00, 0x03FF) if name == "F16" else (0x7F80, 0x007F)
    bits[((bits & exp) == exp) & ((bits & mant) != 0)] ^= exp & -exp
    return bits


def _random_bytes(rng, name, n):
    block, size = gguf.GGML_QUANT_SIZES[QT[name]]
    if block == 1:
        return _no_nans(name, rng.integers(0, 1 << 16, n, dtype=np.uint16)).view(np.uint8)
    raw = rng.integers(0, 256, (n // block, size), dtype=np.uint8)
    for offset in SCALES[name]:
        raw[:, offset:offset + 2] = _finite_halves(rng, n // block).view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1)


def _inputs(name, size, seed):
    """(label, raw uint8 tensor, n values) for one type and size."""
    rng = np.random.default_rng(seed)
    block = gguf.GGML_QUANT_SIZES[QT[name]][0]
    shape = size if isinstance(size, tuple) else (size * block,)
    n = int(np.prod(shape))
    yield "random bytes", torch.from_numpy(_random_bytes(rng, name, n)), n
    if name in QUANTIZABLE:
        values = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        raw = gguf.quants.quantize(values, QT[name]).view(np.uint8).reshape(-1)
        yield "quantized", torch.from_numpy(raw.copy()), n


def _assert_bits(out, ref, what):
    assert out.dtype == ref.dtype and out.shape == ref.shape, (what, out.dtype, out.shape)
    same = out.cpu().view(BITS[out.dtype]) == ref.cpu().view(BITS[ref.dtype])
    assert bool(same.all()), f"{what}: {int((~same).sum())} of {same.numel()} values differ"


def _gguf(raw, name):
    return gguf.quants.dequantize(raw.numpy(), QT[name]).reshape(-1)


@pytest.mark.parametrize("dtype", DEQUANT_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("name", DEQUANT_TYPES)
def test_reference_is_gguf_then_round_to_nearest_even(name, dtype):
    """The contract itself: gguf-py's fp32 values exactly, then fp16 as numpy rounds it and bf16
    by the integer round-to-nearest-even, computed here apart from torch."""
    for seed, size in enumerate(SIZES):
        for label, raw, n in _inputs(name, size, seed):
            want = _gguf(raw, name)
            if dtype == torch.float16:
                want = torch.from_numpy(want.astype(np.float16))
            elif dtype == torch.bfloat16:
                bits = want.view(np.uint32).astype(np.uint64)
                bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
                want = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
            else:
                want = torch.from_numpy(want)
            _assert_bits(reference.dequantize(raw, QT[name], n, dtype), want,
                         f"{name} {label} {size}")


@pytest.mark.parametrize("op,impl,device,dtype,wdtype", BACKEND_CASES)
@pytest.mark.parametrize("name", DEQUANT_TYPES)
def test_backend_matches_the_reference_bit_for_bit(op, impl, device, dtype, wdtype, name):
    _check_available(impl, device)
    for seed, size in enumerate(SIZES):
        for label, raw, n in _inputs(name, size, seed):
            ref = reference.dequantize(raw, QT[name], n, dtype)
            out = impl.fn(raw.to(device), int(QT[name]), n, dtype)
            assert out.device.type == device
            _assert_bits(out, ref, f"{name} {label} {size}")


@pytest.mark.parametrize("op,impl,device,dtype,wdtype", BACKEND_CASES)
@pytest.mark.parametrize("name", ("F16", "BF16"))
def test_nan_stays_nan(op, impl, device, dtype, wdtype, name):
    _check_available(impl, device)
    nan, inf = (0x7E01, 0x7C00) if name == "F16" else (0x7FC1, 0x7F80)
    bits = np.array([nan, nan | 0x8000, inf, inf | 0x8000, 0x3C00, 0, 0x8000, nan, 1, 2, 3],
                    dtype=np.uint16)
    raw = torch.from_numpy(bits.view(np.uint8).copy())
    ref = reference.dequantize(raw, QT[name], bits.size, dtype)
    out = impl.fn(raw.to(device), int(QT[name]), bits.size, dtype).cpu()
    assert torch.equal(out.isnan(), ref.isnan()) and int(ref.isnan().sum()) == 3
    _assert_bits(out[~ref.isnan()], ref[~ref.isnan()], name)


@pytest.mark.parametrize("op,impl,device,dtype,wdtype", BACKEND_CASES)
def test_raw_at_any_address_and_no_values(op, impl, device, dtype, wdtype):
    """A tensor's bytes sliced from a file at an odd offset; and an empty tensor."""
    _check_available(impl, device)
    for name in ("F16", "Q4_K", "Q5_0"):
        raw = next(_inputs(name, 3, 7))[1]
        padded = torch.cat([torch.zeros(1, dtype=torch.uint8), raw]).to(device)
        n = raw.numel() // gguf.GGML_QUANT_SIZES[QT[name]][1] * gguf.GGML_QUANT_SIZES[QT[name]][0]
        _assert_bits(impl.fn(padded[1:], int(QT[name]), n, dtype),
                     reference.dequantize(raw, QT[name], n, dtype), name)
        empty = impl.fn(torch.zeros(0, dtype=torch.uint8, device=device), int(QT[name]), 0, dtype)
        assert empty.shape == (0,) and empty.dtype == dtype


@pytest.mark.parametrize("dtype", DEQUANT_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("name", DEQUANT_TYPES)
def test_cpu_portable_kernels_match_the_reference(name, dtype):
    """The kernels a CPU without AVX2/F16C (or an ARM one) runs: here only through this hook."""
    assert native.has_cpu(), "soprano._C is not built: run `pip install .` first"
    for seed, size in enumerate(SIZES):
        for label, raw, n in _inputs(name, size, seed):
            out = torch.empty(n, dtype=dtype)
            native._C.dequantize_cpu(raw.data_ptr(), raw.numel(), int(QT[name]), n,
                                     out.data_ptr(), str(dtype)[6:], portable=True)
            _assert_bits(out, reference.dequantize(raw, QT[name], n, dtype),
                         f"{name} {label} {size}")


def _error_cases(device):
    raw = torch.zeros(144, dtype=torch.uint8, device=device)
    return [
        ((raw, int(QT.Q2_K), 256, torch.float32), "type Q2_K \\(10\\) is not supported"),
        ((raw, 99, 256, torch.float32), "99 is not a ggml type"),
        ((raw[:143], int(QT.Q4_K), 256, torch.float32),
         "Q4_K takes 144 bytes per block of 256: 256 values are not a whole number of blocks "
         "of 143 bytes"),
        ((raw[:34], int(QT.Q8_0), 33, torch.float32), "Q8_0 takes 34 bytes per block of 32:"),
        ((raw[:36], int(QT.F16), 17, torch.float32), "F16 takes 2 bytes per block of 1:"),
        ((raw, int(QT.Q4_K), 256, torch.float64), "dtype must be"),
        ((raw.view(torch.int16), int(QT.Q4_K), 256, torch.float32), "uint8"),
        ((raw.view(12, 12), int(QT.Q4_K), 256, torch.float32), "1-D"),
    ]


@pytest.mark.parametrize("op,impl,device,dtype,wdtype",
                         [c for c in BACKEND_CASES if c.values[3] == torch.float32])
def test_bad_arguments_raise(op, impl, device, dtype, wdtype):
    _check_available(impl, device)
    for fn in (impl.fn, reference.dequantize):
        for args, match in _error_cases(device):
            with pytest.raises(ValueError, match=match):
                fn(*args)


def test_extension_checks_raw_arguments_against_ggufs_layouts():
    """The C++ api layer's own block table is gguf-py's, and it checks what Python would."""
    assert native.has_cpu(), "soprano._C is not built: run `pip install .` first"
    C = native._C
    out = torch.empty(256)
    raw = torch.zeros(256 * 2, dtype=torch.uint8)
    for name in DEQUANT_TYPES:
        block, size = gguf.GGML_QUANT_SIZES[QT[name]]
        C.dequantize_cpu(raw.data_ptr(), size, int(QT[name]), block, out.data_ptr(), "float32")
        with pytest.raises(ValueError, match=f"{name} takes {size} bytes per block of {block}:"):
            C.dequantize_cpu(raw.data_ptr(), size + 1, int(QT[name]), block, out.data_ptr(),
                             "float32")
    args = (raw.data_ptr(), 34, int(QT.Q8_0), 32)
    with pytest.raises(ValueError, match="ggml type 10 is not one dequantize decodes"):
        C.dequantize_cpu(raw.data_ptr(), 84, 10, 256, out.data_ptr(), "float32")
    with pytest.raises(ValueError, match="null pointer"):
        C.dequantize_cpu(0, *args[1:], out.data_ptr(), "float32")
    with pytest.raises(ValueError, match="aligned"):
        C.dequantize_cpu(*args, out.data_ptr() + 2, "float32")
    with pytest.raises(ValueError, match="dtype must be"):
        C.dequantize_cpu(*args, out.data_ptr(), "float64")
    if C.has_cuda():  # validation happens before any CUDA call, so no GPU is needed here
        with pytest.raises(ValueError, match="aligned"):
            C.dequantize_cuda(*args, out.data_ptr() + 4, "float32", 0)
    else:
        with pytest.raises(RuntimeError, match="without CUDA"):
            C.dequantize_cuda(*args, out.data_ptr(), "float32", 0)


def test_table_dequantizes_to_its_dtype_or_a_given_one():
    table = OpTable("cpu", torch.float32)
    assert table.describe()["dequantize"] == "cpu"
    raw = next(_inputs("Q8_0", 3, 1))[1]
    ref = reference.dequantize(raw, QT.Q8_0, 96, torch.bfloat16)
    assert table.dequantize(raw, QT.Q8_0, 96).dtype == torch.float32
    _assert_bits(table.dequantize(raw, QT.Q8_0, 96, torch.bfloat16), ref, "bf16 on request")
    assert OpTable("cpu", torch.float32, "torch").dequantize(raw, QT.Q8_0, 96,
                                                             torch.bfloat16).equal(ref)
