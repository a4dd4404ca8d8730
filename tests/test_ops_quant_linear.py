"""Matmuls over weights kept as GGUF blocks (``quant_linear``, csrc/cpu/quant_linear.cpp) and
the fused CPU step over such matrices, against the torch reference.

Few rows of x take int8 dots over x quantized per block, so they are held to an oracle that
quantizes x the same way (``quantize_activations``): equal up to fp32 summation order. Many rows
take the dequantized fp32 GEMM and are held to the plain reference. Every instruction set this
CPU runs is tested (portable, avx2, avx512vnni, avx512), over real quantizations of random weights.
"""
import numpy as np
import pytest
import torch

import gguf

from soprano.gguf import kquants
from soprano.ops import OpTable, native, native_gguf, reference
from soprano.ops.quantized import (GGML_MATMUL_TYPES, QUANT_MATMUL_TYPES, QuantMatrix, RowStack,
                                   cat_rows, deinterleave_rows8, interleave_rows8,
                                   quantize_activations)

pytestmark = pytest.mark.skipif(not native.has_cpu(), reason="soprano._C not built")

FEATURES = native.cpu_features()
VNNI = bool(FEATURES.get("avx512_vnni") and FEATURES.get("avx512vl"))
ISAS = ["portable"] + (["avx2"] if FEATURES.get("avx2") else []) + (["avx512vnni"] if VNNI else [])
ISAS += ["avx512"] if VNNI and FEATURES.get("avx512f") and FEATURES.get("avx512bw") else []
ISAS += ["amx"] if native_gguf.has_int8_tiles() else []
# 64 rows: the x8 layouts' 16-row (two-group) vectors where the CPU has 512-bit ones
SHAPES = [(1, 256), (37, 512), (64, 512), (130, 1536)]


def quantized(w: torch.Tensor, name: str) -> QuantMatrix:
    """``w`` quantized to ggml type ``name``, or for "Q4_0x8" / "Q4_Kx8" to Q4_0 / Q4_K with
    its rows interleaved by 8 (as a CPU table lays them out at load)."""
    if name.endswith("x8"):
        return interleave_rows8(quantized(w, name[:-2]))
    t = gguf.GGMLQuantizationType[name]
    arr = w.float().numpy()
    raw = kquants.quantize(arr, t) if t in kquants.SUPPORTED_TYPES else gguf.quants.quantize(arr, t)
    return QuantMatrix(torch.from_numpy(np.ascontiguousarray(raw)).reshape(w.shape[0], -1),
                       int(t), tuple(w.shape))


def act_block(name: str) -> int:
    return 32 if name.removesuffix("x8") in ("Q8_0", "Q4_0") else 256


def rows_for(name: str, n: int) -> int:
    """n, rounded up to whole groups of 8 rows for the x8 layouts."""
    return -(-n // 8) * 8 if name.endswith("x8") else n


def bound(x: torch.Tensor, w: torch.Tensor, rel: float) -> torch.Tensor:
    """rel times the sum of |products|: fp32 summation-order error scales with it."""
    return rel * (x.abs().double() @ w.abs().double().T) + 1e-6


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M", [1, 3, 6, 13])  # four rows at a time, and what is left
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(QUANT_MATMUL_TYPES))
def test_int8_dots_match_the_quantized_activation_oracle(name, shape, M, isa):
    gen = torch.Generator().manual_seed(M * 1000 + shape[0])
    shape = (rows_for(name, shape[0]), shape[1])
    w = quantized(torch.randn(*shape, generator=gen), name)
    x = torch.randn(M, shape[1], generator=gen) * 3
    wd = w.dequantized().double()
    xq = quantize_activations(x, act_block(name))
    y = native_gguf.quant_linear_cpu(x, w, isa=isa).double()
    err = (y - xq @ wd.T).abs()
    assert (err <= bound(xq, wd, 2e-6)).all(), f"max error {err.max():.3g}"
    # and the activations' 8-bit rounding is all that separates it from the fp32 math
    rel = ((y - x.double() @ wd.T).norm() / (x.double() @ wd.T).norm()).item()
    assert rel < 0.02, rel


@pytest.mark.parametrize("M", [32, 42])
@pytest.mark.parametrize("name", list(GGML_MATMUL_TYPES))
def test_many_rows_take_the_exact_fp32_gemm(name, M):
    gen = torch.Generator().manual_seed(M)
    w = quantized(torch.randn(rows_for(name, 130), 512, generator=gen), name)
    x = torch.randn(M, 512, generator=gen)
    bias = torch.randn(w.shape[0], generator=gen)
    y = native_gguf.quant_linear_cpu(x, w, bias)
    want = reference.quant_linear(x.double(), w, bias.double())
    assert (y.double() - want).abs().max() <= 1e-4


@pytest.mark.parametrize("M", [16, 42])
@pytest.mark.parametrize("name", [n for n in QUANT_MATMUL_TYPES if n.endswith("x8")])
def test_x8_layouts_keep_their_int8_dots_for_many_rows(name, M):
    """A prefill (or a batch of 16) over an x8 layout stays on the int8 dots, which beat the
    packed GEMM there: the quantized-activation oracle, as for few rows."""
    gen = torch.Generator().manual_seed(M)
    w = quantized(torch.randn(136, 512, generator=gen), name)
    x = torch.randn(M, 512, generator=gen)
    wd = w.dequantized().double()
    xq = quantize_activations(x, act_block(name))
    err = (native_gguf.quant_linear_cpu(x, w).double() - xq @ wd.T).abs()
    assert (err <= bound(xq, wd, 2e-6)).all(), f"max error {err.max():.3g}"


@pytest.mark.parametrize("N", [48, 96, 136])  # two-group vectors need N % 16 == 0; 136 not
@pytest.mark.parametrize("M", [1, 5, 16])
@pytest.mark.parametrize("name", [n for n in QUANT_MATMUL_TYPES if n.endswith("x8")])
def test_x8_dots_give_the_same_bits_on_256_and_512_bit_vectors(name, M, N):
    if "avx512" not in ISAS:
        pytest.skip("this CPU has no AVX-512 VNNI + BW: only one vector width to run")
    gen = torch.Generator().manual_seed(M * N)
    w = quantized(torch.randn(N, 512, generator=gen), name)
    x = torch.randn(M, 512, generator=gen) * 3
    assert torch.equal(native_gguf.quant_linear_cpu(x, w, isa="avx512"),
                       native_gguf.quant_linear_cpu(x, w, isa="avx512vnni"))


# rows: below the tiles' thresholds (5 for Q8_0, 8 for Q5_K, 16 for the others), whole tiles,
# leftover rows on the vectors or on a tile of their own; N: one task, tasks split between
# threads, and a matrix of 8-row groups the tiles cannot take
@pytest.mark.parametrize("N", [16, 1040, 136])
@pytest.mark.parametrize("M", [1, 4, 5, 8, 15, 16, 17, 20, 21, 25, 32, 37, 48])
@pytest.mark.parametrize("name", ["Q8_0x8", "Q4_0x8", "Q4_Kx8", "Q5_Kx8", "Q6_Kx8"])
def test_tiles_give_the_512_bit_dots_bits(name, M, N):
    """Every x8 layout on the tile unit (AMX-INT8) is the 512-bit dots' arithmetic: the same
    bits, pinned (every row on the tiles) or auto, with the epilogue on the tiles' output."""
    if "amx" not in ISAS:
        pytest.skip("this CPU has no AMX-INT8 (or the OS refused its tile data)")
    gen = torch.Generator().manual_seed(M * 7 + N)
    w = quantized(torch.randn(N, 1024, generator=gen), name)
    x = torch.randn(M, 1024, generator=gen) * 3
    bias = torch.randn(N, generator=gen)
    want = native_gguf.quant_linear_cpu(x, w, bias, isa="avx512")
    assert torch.equal(native_gguf.quant_linear_cpu(x, w, bias, isa="amx"), want)
    assert torch.equal(native_gguf.quant_linear_cpu(x, w, bias), want)


def test_amx_is_refused_where_the_cpu_lacks_it():
    w = quantized(torch.randn(16, 256), "Q8_0x8")
    if "amx" in ISAS:
        assert native_gguf.quant_linear_cpu(torch.randn(2, 256), w, isa="amx").shape == (2, 16)
    else:
        with pytest.raises(ValueError, match="cannot run isa 'amx'"):
            native_gguf.quant_linear_cpu(torch.randn(2, 256), w, isa="amx")


@pytest.mark.parametrize("name", list(QUANT_MATMUL_TYPES))
def test_a_rows_result_does_not_depend_on_its_batch(name):
    """Below the GEMM's threshold (on an x8 layout, at any row count) a row's bits are the same
    alone or among others (the server batches sessions without changing anyone's audio)."""
    gen = torch.Generator().manual_seed(11)
    w = quantized(torch.randn(96, 512, generator=gen), name)
    rows = 20 if name.endswith("x8") else 11
    x = torch.randn(rows, 512, generator=gen)
    together = native_gguf.quant_linear_cpu(x, w)
    for m in range(rows):
        assert torch.equal(native_gguf.quant_linear_cpu(x[m:m + 1], w)[0], together[m])


def test_int8_path_takes_strided_rows_and_leading_dims():
    gen = torch.Generator().manual_seed(3)
    w = quantized(torch.randn(64, 256, generator=gen), "Q8_0")
    x = torch.randn(2, 3, 512, generator=gen)[..., ::2]  # last dim strided: copied
    y = native_gguf.quant_linear_cpu(x, w)
    assert y.shape == (2, 3, 64)
    flat = native_gguf.quant_linear_cpu(x.reshape(6, 256).contiguous(), w)
    assert torch.equal(y.reshape(6, 64), flat)


def test_bad_arguments_name_what_is_wrong():
    w = quantized(torch.randn(8, 256), "Q4_K")
    with pytest.raises(ValueError, match="x .* and a contiguous w .* must agree on K"):
        native_gguf.quant_linear_cpu(torch.randn(1, 128), w)
    with pytest.raises(ValueError,
                       match="isa must be auto, portable, avx2, avx512vnni, avx512 or amx"):
        native_gguf.quant_linear_cpu(torch.randn(1, 256), w, isa="sse9")
    q41 = QuantMatrix(torch.zeros(8, 20, dtype=torch.uint8), int(gguf.GGMLQuantizationType.Q4_1),
                      (8, 32))
    with pytest.raises(ValueError, match="a QuantMatrix of Q8_0, .* got QuantMatrix Q4_1"):
        native_gguf.quant_linear_cpu(torch.randn(1, 32), q41)
    with pytest.raises(ValueError, match=r"Q4_K \[8, 100\] needs uint8 \[8, 0\]"):
        QuantMatrix(torch.zeros(8, 144, dtype=torch.uint8), 12, (8, 100))
    with pytest.raises(ValueError, match="ggml type 3 is not one quant_linear multiplies"):
        native._C.quant_linear_cpu(1 << 12, 1 << 12, 1 << 12, 1, 8, 32, 32, 8, 3, "auto")


def test_the_table_routes_quant_matrices_by_backend():
    w = quantized(torch.randn(16, 256), "Q6_K")
    x = torch.randn(1, 256)
    cpu, ref = OpTable("cpu", torch.float32), OpTable("cpu", torch.float32, "torch")
    assert cpu.native_quant_type(w.qtype) and not ref.native_quant_type(w.qtype)
    assert not cpu.native_quant_type(int(gguf.GGMLQuantizationType.Q4_1))
    assert torch.equal(cpu.linear(x, w), native_gguf.quant_linear_cpu(x, w))
    assert torch.equal(ref.linear(x, w), reference.quant_linear(x, w))


def test_cat_rows_keeps_one_type_quantized_and_stacks_mixed_ones():
    a, b, c = torch.randn(8, 256), torch.randn(4, 256), torch.randn(4, 256)
    same = cat_rows([quantized(a, "Q8_0"), quantized(b, "Q8_0")])
    assert isinstance(same, QuantMatrix) and same.shape == (12, 256)
    assert torch.equal(same.dequantized(), torch.cat([quantized(a, "Q8_0").dequantized(),
                                                      quantized(b, "Q8_0").dequantized()]))
    parts = [quantized(a, "Q4_K"), quantized(b, "Q4_K"), quantized(c, "Q6_K")]
    mixed = cat_rows(parts)
    assert isinstance(mixed, RowStack) and mixed.shape == (16, 256)
    assert mixed.runs == ((12, 8), (12, 4), (14, 4)) and mixed.type_name == "Q4_K|Q4_K|Q6_K"
    assert mixed.nbytes == sum(p.nbytes for p in parts)
    assert torch.equal(mixed.dequantized(), torch.cat([p.dequantized() for p in parts]))
    with_float = cat_rows([quantized(a, "Q8_0"), b.half()])
    assert with_float.dtype == torch.float16 and with_float.shape == (12, 256)
    assert torch.equal(with_float[:8], quantized(a, "Q8_0").dequantized(torch.float16))


@pytest.mark.parametrize("M", [1, 5, 40])
def test_a_row_stack_multiplies_part_by_part(M):
    """Each part's columns are its own quant_linear's (the int8 dots, or from 32 rows the fp32
    GEMM), bias added once."""
    parts = [quantized(torch.randn(n, 512), t) for n, t in ((64, "Q4_K"), (32, "Q6_K"),
                                                            (32, "Q8_0"))]
    stack, x, bias = cat_rows(parts), torch.randn(M, 512), torch.randn(128)
    y = OpTable("cpu", torch.float32).linear(x, stack, bias)
    want = torch.cat([native_gguf.quant_linear_cpu(x, p) for p in parts], dim=-1) + bias
    assert torch.equal(y, want)
    ref = OpTable("cpu", torch.float32, "torch").linear(x, stack, bias)
    assert torch.allclose(ref, reference.linear(x, stack.dequantized(), bias), atol=1e-4)




@pytest.mark.parametrize("name,extra", [("Q8_0", 0), ("Q4_0", 0), ("Q4_K", 4), ("Q5_K", 4),
                                        ("Q6_K", 0)])
def test_interleaved_by_8_rows_round_trips_and_names_bad_row_counts(name, extra):
    """The x8 layouts reorder the file's bytes (8 rows' scales, then their nibbles four bytes at
    a time; the K-quants' 6-bit scales decoded to bytes, 4 more per row and block), so they
    decode to the same values and back to the same bytes."""
    plain = quantized(torch.randn(24, 512), name)
    packed = interleave_rows8(plain)
    nb = 512 // (32 if name in ("Q8_0", "Q4_0") else 256)
    assert packed.type_name == name + "x8" and packed.nbytes == plain.nbytes + 24 * nb * extra
    assert torch.equal(deinterleave_rows8(packed).raw, plain.raw)
    assert torch.equal(packed.dequantized(), plain.dequantized())
    # row 9 = group 1, lane 1: its d is the group's second, the first byte of its values the
    # first chunk's fifth
    g = packed.raw.reshape(3, -1)[1]
    d = 208 if name == "Q6_K" else 0
    nibbles = {"Q8_0": 16, "Q4_0": 16, "Q4_K": 160, "Q5_K": 416, "Q6_K": 656}[name]
    first = {"Q8_0": 2, "Q4_0": 2, "Q4_K": 16, "Q5_K": 48, "Q6_K": 0}[name]
    assert torch.equal(g[2:4], plain.raw[9, d:d + 2]) and g[nibbles + 4] == plain.raw[9, first]
    with pytest.raises(ValueError, match=rf"needs Q8_0, Q4_0, Q4_K, Q5_K or Q6_K with rows a "
                                         rf"multiple of 8, got {name} \[12, 512\]"):
        interleave_rows8(quantized(torch.randn(12, 512), name))
    with pytest.raises(ValueError, match="Q4_0x8 interleaves groups of 8 rows; N = 12"):
        native._C.quant_linear_cpu(1 << 12, 1 << 12, 1 << 12, 1, 12, 32, 32, 12,
                                   QUANT_MATMUL_TYPES["Q4_0x8"], "auto")


def test_the_cpu_table_interleaves_every_type_it_multiplies():
    cpu, ref = OpTable("cpu", torch.float32), OpTable("cpu", torch.float32, "torch")
    q40 = quantized(torch.randn(16, 256), "Q4_0")
    for name in ("Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"):
        m = quantized(torch.randn(16, 256), name)
        assert cpu.native_layout(m).type_name == name + "x8"
    assert ref.native_layout(q40) is q40
    odd = quantized(torch.randn(12, 256), "Q4_0")
    assert cpu.native_layout(odd) is odd
    q41 = quantized(torch.randn(16, 256), "Q4_1")
    assert cpu.native_layout(q41) is q41


@pytest.mark.parametrize("block", [32, 256])
@pytest.mark.parametrize("portable", [False, True])
def test_activation_blocks_are_quantize_activations_bits(block, portable):
    """The int8 dots' activation blocks (vectorized where the CPU has AVX2, and the scalar
    code) are quantize_activations' d and q bit for bit: an all-zero block, values whose
    scaled product lies exactly halfway (ties go to even), a block of one large value, a block
    so small that 127 / amax overflows (all zero)."""
    gen = torch.Generator().manual_seed(21)
    M, K = 5, 2 * 256
    x = torch.randn(M, K, generator=gen)
    x[1, :block] = 0.0
    x[2, :block] = 0.0  # amax 127, so x * (127 / amax) is x: exact halves
    x[2, :6] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -2.5])
    x[3, 7] = 1e30
    x[4, :block] = 1e-38 * torch.linspace(-1, 1, block)  # 127 / amax overflows: q = 0
    d = torch.empty(M, K // block)
    q = torch.empty(M, K, dtype=torch.int8)
    native._C.quantize_rows_cpu(x.data_ptr(), M, K, block, d.data_ptr(), q.data_ptr(), portable)
    xb = x.reshape(M, -1, block)
    amax = xb.abs().amax(-1)
    inverse = 127.0 / amax
    want_q = torch.round(xb * torch.where((amax > 0) & inverse.isfinite(), inverse, 0.0)[..., None])
    assert torch.equal(q.reshape(M, -1, block).float(), want_q)
    assert torch.equal(d, amax / 127.0)
    assert torch.equal((q.double().reshape(M, -1, block) * d.double()[..., None]).reshape(M, K),
                       quantize_activations(x, block))
    assert q[2, :6].tolist() == [127, 0, 2, 2, 0, -2]
    assert not q[4, :block].any() and d[4, 0] > 0


def test_activation_blocks_refuse_a_k_that_is_not_whole_blocks():
    x = torch.zeros(2, 48)
    with pytest.raises(ValueError, match="K a multiple of it, got M 2, K 48, block 32"):
        native._C.quantize_rows_cpu(x.data_ptr(), 2, 48, 32, 0, 0, False)


FP32_ROW_ISAS = [i for i in ("avx2", "avx512") if i in ISAS]


@pytest.mark.parametrize("isa", FP32_ROW_ISAS)
@pytest.mark.parametrize("M", [1, 4, 7, 12, 15])
def test_fp32_rows_decode_q8_0_in_registers_as_into_a_buffer(isa, M):
    """The decoder's fp32 math over Q8_0 blocks: plain rows are decoded in registers where they
    are FMA'd, interleaved (Q8_0x8) ones into a buffer first; both are d q in fp32 through the
    same row tiles, so the bits agree, at each vector width and tile shape."""
    gen = torch.Generator().manual_seed(17)
    w = torch.randn(48, 256, generator=gen) * 0.05
    x = torch.randn(M, 256, generator=gen)
    plain, x8 = quantized(w, "Q8_0"), quantized(w, "Q8_0x8")
    got = native_gguf.quant_linear_cpu(x, plain, isa=isa, fp32_rows=True)
    assert torch.equal(got, native_gguf.quant_linear_cpu(x, x8, isa=isa, fp32_rows=True))
    want = x.double() @ plain.dequantized().double().T
    assert (got - want).abs().max() <= 1e-5 * (1 + want.abs().max())
