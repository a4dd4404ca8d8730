"""Every RMSNorm backend against ``soprano.ops.reference.rms_norm``.

cpu_cpp always runs (the extension is built before tests; a missing one fails, never skips).
triton runs on CPU tensors through the interpreter when there is no GPU, and for real on one.
cuda_cpp needs a GPU.
"""
import importlib
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # Triton picks interpreter or compiler when a kernel is decorated, so this must precede the
    # import of soprano.kernels.rms_norm.
    os.environ["TRITON_INTERPRET"] = "1"

from soprano.ops import native  # noqa: E402
from soprano.ops.reference import rms_norm as rms_norm_reference  # noqa: E402

EPS = 1e-6
ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (device, dtypes) per backend
BACKENDS = {
    "cpu_cpp": ("cpu", (torch.float32,)),
    "triton": ("cuda" if CUDA else "cpu", ALL_DTYPES),
    "cuda_cpp": ("cuda", ALL_DTYPES),
}


def _triton_rms_norm():
    mod = importlib.import_module("soprano.kernels.rms_norm")
    interpreted = type(mod._rms_norm_kernel).__name__ == "InterpretedFunction"
    if interpreted == CUDA:  # imported earlier in this process under the other mode
        mod = importlib.reload(mod)
    return mod.rms_norm


def backend_fn(name):
    if name == "cpu_cpp":
        assert native.has_cpu(), "soprano._C is not built: run `pip install .` first"
        return native.rms_norm_cpu
    if name == "triton":
        return _triton_rms_norm()
    if not CUDA:
        pytest.skip("cuda_cpp needs a GPU")
    assert native.has_cuda(), "a GPU is present but soprano._C was built without CUDA"
    return native.rms_norm_cuda


def _cases():
    for name, (_, dtypes) in BACKENDS.items():
        for dtype in dtypes:
            for rows in (1, 7, 97):
                for hidden in (128, 512, 123, 1025):
                    yield pytest.param(name, dtype, rows, hidden,
                                       id=f"{name}-{str(dtype)[6:]}-{rows}x{hidden}")


def _inputs(device, dtype, rows, hidden, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=g) * 2 + 0.3
    w = torch.randn(hidden, generator=g)
    return x.to(device, dtype), w.to(device, dtype)


def assert_matches_reference(out, x, w, truncating_bf16=False):
    assert out.shape == x.shape and out.dtype == x.dtype
    if truncating_bf16 and x.dtype == torch.bfloat16:
        # Triton's interpreter truncates fp32 -> bf16 where GPUs round to nearest. Two
        # truncations (< 2^-7 relative each) plus the reference's two roundings (< 2^-8 each)
        # stay under 2^-6 relative, element by element: after the reduction there are only
        # products, so no cancellation.
        torch.testing.assert_close(out, rms_norm_reference(x, w, EPS), atol=1e-5, rtol=2**-6)
        return
    if x.dtype == torch.float32:
        torch.testing.assert_close(out, rms_norm_reference(x, w, EPS), atol=1e-5, rtol=1e-5)
        return
    # Low precision: the output rounding dominates, so the budget is twice the error the
    # reference itself makes at this dtype, both measured against an fp32 computation.
    exact = rms_norm_reference(x.float(), w.float(), EPS)
    ref_err = (rms_norm_reference(x, w, EPS).float() - exact).abs().max().item()
    err = (out.float() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"max error {err:.3g} vs reference's own {ref_err:.3g}"


@pytest.mark.parametrize("name,dtype,rows,hidden", list(_cases()))
def test_matches_reference(name, dtype, rows, hidden):
    fn = backend_fn(name)
    x, w = _inputs(BACKENDS[name][0], dtype, rows, hidden)
    assert_matches_reference(fn(x, w, EPS), x, w, truncating_bf16=name == "triton" and not CUDA)


@pytest.mark.parametrize("name", BACKENDS)
def test_strided_rows_batched_and_in_place(name):
    fn = backend_fn(name)
    device = BACKENDS[name][0]
    big, w = _inputs(device, torch.float32, 12, 300)
    x = big[:, 5:261]  # rows 300 elements apart, last dim contiguous
    assert_matches_reference(fn(x, w[:256], EPS), x, w[:256])

    x3 = big.view(3, 4, 300).clone()
    out = torch.empty_like(x3)
    assert fn(x3, w, EPS, out=out) is out
    assert_matches_reference(out, x3, w)

    expected = rms_norm_reference(x3, w, EPS)
    fn(x3, w, EPS, out=x3)
    torch.testing.assert_close(x3, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_arguments_raise(name):
    fn = backend_fn(name)
    device = BACKENDS[name][0]
    x, w = _inputs(device, torch.float32, 4, 64)
    wrong_dtype = torch.float16 if name == "cpu_cpp" else torch.float64
    with pytest.raises(ValueError, match="dtype"):
        fn(x.to(wrong_dtype), w.to(wrong_dtype), EPS)
    with pytest.raises(ValueError, match="weight"):
        fn(x, w.double() if name == "cpu_cpp" else w.half(), EPS)
    with pytest.raises(ValueError, match="contiguous"):
        fn(x.t(), torch.ones(4, device=device), EPS)
    with pytest.raises(ValueError, match="weight"):
        fn(x, w[:32], EPS)
    with pytest.raises(ValueError, match="out"):
        fn(x, w, EPS, out=torch.empty(4, 65, device=device))


def test_extension_validates_raw_arguments():
    assert native.has_cpu(), "soprano._C is not built: run `pip install .` first"
    x, w = _inputs("cpu", torch.float32, 4, 64)
    ptrs = (x.data_ptr(), w.data_ptr(), x.data_ptr())
    C = native._C
    with pytest.raises(ValueError, match="null pointer"):
        C.rms_norm_cpu(0, *ptrs[1:], 4, 64, 64, 64, EPS)
    with pytest.raises(ValueError, match="hidden must be > 0"):
        C.rms_norm_cpu(*ptrs, 4, 0, 64, 64, EPS)
    with pytest.raises(ValueError, match="overlap"):
        C.rms_norm_cpu(*ptrs, 4, 64, 64, 32, EPS)
    with pytest.raises(ValueError, match="aligned"):
        C.rms_norm_cpu(ptrs[0] + 1, *ptrs[1:], 4, 64, 64, 64, EPS)
    if C.has_cuda():  # validation happens before any CUDA call, so no GPU is needed here
        with pytest.raises(ValueError, match="dtype must be"):
            C.rms_norm_cuda(*ptrs, 4, 64, 64, 64, EPS, "float64", 0)
        with pytest.raises(ValueError, match="null pointer"):
            C.rms_norm_cuda(0, *ptrs[1:], 4, 64, 64, 64, EPS, "float16", 0)
    else:
        with pytest.raises(RuntimeError, match="without CUDA"):
            C.rms_norm_cuda(*ptrs, 4, 64, 64, 64, EPS, "float32", 0)
