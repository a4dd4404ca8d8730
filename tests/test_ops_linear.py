"""The cpu backend's linear (16-bit weights, fp32 activations) against the torch reference,
and how the backend table routes linear by weight dtype."""
import pytest
import torch

from soprano.ops import OpTable, native, reference

# M < 8: the few-rows (GEMV) kernel; M >= 8: the packed-panel tile, incl. partial panels
# (M % 16 in 1..8 and 9..15) and partial 6-row weight groups (N % 6 != 0).
SHAPES = [(1, 512, 768), (1, 512, 4608), (1, 2304, 512), (3, 123, 97), (8, 1025, 33),
          (2, 7, 5), (5, 512, 8192), (42, 2304, 512), (13, 768, 2050), (16, 97, 7),
          (17, 512, 4608), (33, 5, 1)]


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
def test_cpu_kernel_matches_reference(M, K, N, wdtype):
    gen = torch.Generator().manual_seed(M * 1000 + K + N)
    x = torch.randn(M, K, generator=gen)
    w = (torch.randn(N, K, generator=gen) * 0.05).to(wdtype)
    ref = reference.linear(x, w)
    out = native.linear_cpu(x, w)
    assert out.dtype == torch.float32 and out.shape == (M, N)
    # fp32 accumulation in another order: error bounded by K * eps * sum|x w|
    bound = K * 2e-7 * (x.abs() @ w.float().abs().T) + 1e-6
    assert ((out - ref).abs() <= bound).all()


def _isas():
    features = native.cpu_features()
    return [isa for isa, has in (("avx2", features["avx2"]), ("avx512", features["avx512f"]))
            if has]


# M: passes of x of 1, 2 and 3 panels (the AVX-512 tile's 24, 12 and 8 weight rows), whole and
# partial; N: two and five tasks of weight rows, each shape's last tile partial.
@pytest.mark.parametrize("M", [8, 15, 16, 17, 42, 48, 49, 64, 65, 97, 130])
@pytest.mark.parametrize("N", [37, 101])
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
def test_packed_gemm_gives_the_same_bits_at_every_vector_width(M, N, wdtype):
    isas = _isas()
    if len(isas) < 2:
        pytest.skip(f"this CPU runs only {isas or 'the portable code'}: nothing to compare")
    gen = torch.Generator().manual_seed(M * 1000 + N)
    x = torch.randn(M, 301, generator=gen)
    w = (torch.randn(N, 301, generator=gen) * 0.05).to(wdtype)
    outs = [native.linear_cpu(x, w, isa=isa, packed_from_rows=1) for isa in isas]
    bound = 301 * 2e-7 * (x.abs() @ w.float().abs().T) + 1e-6
    assert ((outs[0] - reference.linear(x, w)).abs() <= bound).all()
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@pytest.mark.parametrize("M,K,N", [(1, 512, 768), (2, 2304, 512), (3, 123, 97), (7, 768, 50)])
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
def test_few_rows_at_every_vector_width_match_reference_and_ignore_the_batch(M, K, N, wdtype):
    gen = torch.Generator().manual_seed(K + N)
    x = torch.randn(M, K, generator=gen)
    w = (torch.randn(N, K, generator=gen) * 0.05).to(wdtype)
    bound = K * 2e-7 * (x.abs() @ w.float().abs().T) + 1e-6
    ref = reference.linear(x, w)
    for isa in _isas():
        out = native.linear_cpu(x, w, isa=isa)
        assert ((out - ref).abs() <= bound).all(), isa
        # a row's sums run in one order whatever rows share the call
        assert torch.equal(native.linear_cpu(x[-1:], w, isa=isa), out[-1:]), isa


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
def test_register_tiles_from_8_to_27_rows_give_a_row_one_result_in_any_such_batch(wdtype):
    """The default between the one-row kernel and the packed GEMM (8 to 27 rows: a short
    prompt's prefill, a batched step) is the few-rows kernel's register tiles, whose sums for a
    row run in one order whatever rows share the call."""
    gen = torch.Generator().manual_seed(27)
    x = torch.randn(27, 512, generator=gen)
    w = (torch.randn(300, 512, generator=gen) * 0.05).to(wdtype)
    bound = 512 * 2e-7 * (x.abs() @ w.float().abs().T) + 1e-6
    ref = reference.linear(x, w)
    for isa in _isas():
        out = native.linear_cpu(x, w, isa=isa)
        assert ((out - ref).abs() <= bound).all(), isa
        for M in (8, 13, 20):
            assert torch.equal(native.linear_cpu(x[-M:], w, isa=isa), out[-M:]), (isa, M)


def test_an_isa_this_cpu_lacks_or_an_unknown_one_is_refused():
    x, w = torch.randn(16, 8), torch.randn(4, 8).bfloat16()
    with pytest.raises(ValueError, match="isa must be auto, avx2 or avx512, got 'sse'"):
        native.linear_cpu(x, w, isa="sse")
    if "avx512" not in _isas():
        with pytest.raises(ValueError, match="this CPU cannot run isa 'avx512'"):
            native.linear_cpu(x, w, isa="avx512")


def test_table_uses_kernel_for_3d_input_and_strided_rows():
    ops = OpTable("cpu", torch.float32)
    assert ops.choices[("linear", torch.bfloat16)] == "cpu"
    x = torch.randn(2, 3, 64)[:, 1:, :]  # rows not contiguous as a whole
    w = torch.randn(16, 64).bfloat16()
    out = ops.linear(x, w)
    assert out.shape == (2, 2, 16)
    assert torch.allclose(out, reference.linear(x, w), atol=1e-5, rtol=1e-5)


def test_same_dtype_goes_to_torch():
    ops = OpTable("cpu", torch.float32)
    assert ops.choices[("linear", torch.float32)] == "torch"
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    assert torch.equal(ops.linear(x, w), torch.nn.functional.linear(x, w))


@pytest.mark.parametrize("x,w,match", [
    (torch.randn(2, 8).double(), torch.randn(4, 8).bfloat16(), "float32 x"),
    (torch.randn(2, 8), torch.randn(4, 9).bfloat16(), "agree on K"),
    (torch.randn(2, 8), torch.randn(8, 4).bfloat16().T, "contiguous"),
])
def test_bad_arguments_are_clear_errors(x, w, match):
    with pytest.raises(ValueError, match=match):
        native.linear_cpu(x, w)
