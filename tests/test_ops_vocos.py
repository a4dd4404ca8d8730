"""The Vocos decoder ops (embed_norm, convnext_block, istft_frames, istft) on every backend the
table lists, against ``soprano.ops.reference``: both decoder variants' shapes and odd ones,
rows packed from several sequences, no rows, every weight dtype; the ISTFT head against
``torch.istft`` over 1..400 frames with fp32 and bf16 spectra.

Triton runs in its interpreter without a GPU, on fewer cases; CUDA cases are marked ``gpu``.
"""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before any soprano.kernels module is imported

from soprano.model.vocos import HOP, N_FFT  # noqa: E402
from soprano.ops import reference  # noqa: E402
from soprano.ops.reference import MAX_MAGNITUDE  # noqa: E402
from soprano.ops.table import backend_available  # noqa: E402
from op_cases import impl_cases  # noqa: E402

EPS = 1e-6
WDTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _close(out, ref, tol, what):
    assert out.shape == ref.shape and out.dtype == ref.dtype, (what, out.shape, ref.shape)
    bound = tol * (1 + ref.abs().max().item()) if ref.numel() else 0.0
    err = (out - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= bound, f"{what}: max abs err {err:.3g} > {bound:.3g}"


def _packed(gen, lengths, width, k, device):
    """Rows of several sequences back to back, each with k // 2 zero rows either side, and
    src for every output centre (as VocosDecoder's gather builds them)."""
    r = k // 2
    parts, src, start = [torch.zeros(0, width)], [torch.zeros(0, dtype=torch.int64)], 0
    for n in lengths:
        rows = torch.randn(n, width, generator=gen)
        parts.append(torch.cat([torch.zeros(r, width), rows, torch.zeros(r, width)]))
        src.append(torch.arange(start, start + n))
        start += n + 2 * r
    return torch.cat(parts).to(device), torch.cat(src).to(device)


def _skip_unavailable(impl, device):
    ok, why = backend_available(impl.backend, device)
    if not ok:
        pytest.skip(why)


def _interpreted(impl, device):
    return impl.backend == "triton" and device == "cpu"


# (D, k, sequence lengths): Soprano-1.1, Soprano-80M, odd widths and kernels, no rows; D = 30
# and 40: rows of w (90 and 30, 120 and 40) that the AVX-512 few-rows tiles (4 or 6 weight rows)
# do not divide, at 7 and 12 rows of x (a 6 x 4 and a 4 x 6 tile)
BLOCK_CASES = [(768, 3, [13]), (512, 3, [1, 7, 30]), (40, 5, [3, 1]), (24, 3, []), (30, 3, [5, 2]),
               (40, 3, [12])]
EMBED_CASES = [(768, 512, 1, [13, 4]), (512, 512, 3, [9]), (40, 24, 5, [2, 6]), (8, 16, 3, [])]


def _block_weights(gen, D, k, wdtype, device):
    def vec(n, scale=0.1, shift=0.0):
        return (torch.randn(n, generator=gen) * scale + shift).to(device)
    return (vec(D * k, 0.3).view(D, 1, k), vec(D), vec(D, 0.2, 1.0), vec(D),
            (torch.randn(3 * D, D, generator=gen) * D ** -0.5).to(device, wdtype), vec(3 * D),
            (torch.randn(D, 3 * D, generator=gen) * (3 * D) ** -0.5).to(device, wdtype),
            vec(D), vec(D, 0.5))


@pytest.mark.parametrize("op,impl,device,dtype,wdtype",
                         list(impl_cases(["convnext_block"])))
@pytest.mark.parametrize("wd", WDTYPES, ids=lambda d: f"w{str(d)[6:]}")
def test_convnext_block(op, impl, device, dtype, wdtype, wd):
    _skip_unavailable(impl, device)
    gen = torch.Generator().manual_seed(1)
    cases = BLOCK_CASES[2:] if _interpreted(impl, device) else BLOCK_CASES
    for D, k, lengths in cases:
        x, src = _packed(gen, lengths, D, k, device)
        w = _block_weights(gen, D, k, wd, device)
        out = impl.fn(x, src, *w, EPS)
        _close(out, reference.convnext_block(x, src, *w, EPS), 2e-5, f"D={D} k={k} {lengths}")


@pytest.mark.parametrize("op,impl,device,dtype,wdtype", list(impl_cases(["embed_norm"])))
@pytest.mark.parametrize("wd", WDTYPES, ids=lambda d: f"w{str(d)[6:]}")
def test_embed_norm(op, impl, device, dtype, wdtype, wd):
    _skip_unavailable(impl, device)
    gen = torch.Generator().manual_seed(2)
    cases = EMBED_CASES[2:] if _interpreted(impl, device) else EMBED_CASES
    for D, C, k, lengths in cases:
        x, src = _packed(gen, lengths, C, k, device)
        weight = (torch.randn(D, C, k, generator=gen) * (C * k) ** -0.5).to(device, wd)
        vecs = [(torch.randn(D, generator=gen) * 0.2 + shift).to(device) for shift in (0, 1, 0)]
        out = impl.fn(x, src, weight, *vecs, EPS)
        _close(out, reference.embed_norm(x, src, weight, *vecs, EPS), 2e-5,
               f"D={D} C={C} k={k} {lengths}")


def _spec(gen, frames, batch=None, dtype=torch.float32):
    """Head rows: log-magnitudes spanning the clip at MAX_MAGNITUDE, phases beyond +-pi."""
    shape = (frames, N_FFT + 2) if batch is None else (batch, frames, N_FFT + 2)
    spec = torch.randn(shape, generator=gen) * 2
    spec[..., N_FFT // 2 + 1:] *= 3
    return spec.to(dtype)


@pytest.mark.parametrize("op,impl,device,dtype,wdtype", list(impl_cases(["istft_frames"])))
@pytest.mark.parametrize("sdtype", (torch.float32, torch.bfloat16), ids=("fp32", "bf16"))
def test_istft_frames(op, impl, device, dtype, wdtype, sdtype):
    _skip_unavailable(impl, device)
    gen = torch.Generator().manual_seed(3)
    window = torch.hann_window(N_FFT).to(device)
    for n in ((0, 3) if _interpreted(impl, device) else (0, 1, 5, 64)):
        spec = _spec(gen, n, dtype=sdtype).to(device)
        _close(impl.fn(spec, window), reference.istft_frames(spec, window), 2e-5, f"{n} frames")


@pytest.mark.parametrize("op,impl,device,dtype,wdtype", list(impl_cases(["istft"])))
@pytest.mark.parametrize("sdtype", (torch.float32, torch.bfloat16), ids=("fp32", "bf16"))
def test_istft(op, impl, device, dtype, wdtype, sdtype):
    _skip_unavailable(impl, device)
    gen = torch.Generator().manual_seed(4)
    window = torch.hann_window(N_FFT).to(device)
    sizes = ((1, 1), (2, 4)) if _interpreted(impl, device) else ((1, 1), (1, 2), (3, 17),
                                                                 (2, 400))
    for batch, frames in sizes:
        spec = _spec(gen, frames, batch, sdtype).to(device)
        _close(impl.fn(spec, window, HOP), reference.istft(spec, window, HOP), 2e-5,
               f"{batch} x {frames} frames")


@pytest.mark.parametrize("frames", [2, 3, 17, 400])
def test_reference_istft_is_torch_istft_of_the_head(frames):
    """The contract itself: upstream's head (exp, clip at 100, polar, DC and Nyquist zeroed)
    then torch.istft; and istft_frames overlap-added and normalized gives the same audio."""
    gen = torch.Generator().manual_seed(frames)
    spec = _spec(gen, frames, 2)
    window = torch.hann_window(N_FFT)
    mag = torch.clip(torch.exp(spec[..., :N_FFT // 2 + 1]), max=MAX_MAGNITUDE)
    s = torch.polar(mag, spec[..., N_FFT // 2 + 1:]).transpose(1, 2)
    s[:, 0] = s[:, -1] = 0
    want = torch.istft(s, N_FFT, HOP, N_FFT, window, center=True)
    assert torch.equal(reference.istft(spec, window, HOP), want)
    windowed = reference.istft_frames(spec.flatten(0, 1), window).view(2, frames, N_FFT)
    length = HOP * (frames - 1) + N_FFT
    summed = torch.nn.functional.fold(windowed.transpose(1, 2), (1, length), (1, N_FFT),
                                      stride=(1, HOP))[:, 0, 0]
    env = torch.nn.functional.fold((window ** 2)[None, :, None].expand(1, -1, frames),
                                   (1, length), (1, N_FFT), stride=(1, HOP))[0, 0, 0]
    trim = slice(N_FFT // 2, length - N_FFT // 2)
    _close(summed[:, trim] / env[trim], want, 1e-5, "frames overlap-added")


def test_cpu_block_rejects_a_src_row_past_the_input():
    from soprano.ops import native_vocos
    gen = torch.Generator().manual_seed(5)
    x, src = _packed(gen, [4], 16, 3, "cpu")
    w = _block_weights(gen, 16, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"convnext_block_cpu: src\[1\] = 5 needs rows 5..7 of "
                                         r"x, which has 6"):
        native_vocos.convnext_block_cpu(x, torch.tensor([0, 5]), *w, EPS)
    with pytest.raises(ValueError, match=r"convnext_block_cpu: w2 must be contiguous "
                                         r"float32/float16/bfloat16 \[16, 48\]"):
        native_vocos.convnext_block_cpu(x, src, *w[:6], w[6].T.contiguous().T, *w[7:], EPS)


def _quantized_block(gen, D, k, w1_type, w2_type):
    """Block weights with w1 / w2 as GGUF blocks of these types (None: left fp16)."""
    from test_ops_quant_linear import quantized
    w = list(_block_weights(gen, D, k, torch.float32, "cpu"))
    for i, t in ((4, w1_type), (6, w2_type)):
        w[i] = quantized(w[i], t) if t else w[i].half()
    return w


@pytest.mark.parametrize("w1_type,w2_type", [("Q8_0", "Q8_0"), ("Q6_K", "Q4_K"),
                                             ("Q4_0", None), (None, "Q5_K")])
@pytest.mark.parametrize("lengths", [[1], [4, 9], [12], [40]])
def test_cpu_block_multiplies_gguf_blocks_in_fp32(w1_type, w2_type, lengths):
    """A GGUF decoder's matrices stay in their blocks on the CPU, multiplied as the fp32 math
    on the dequantized weights: few rows decode a tile's weight rows at a time (3 with AVX2; 6
    or, at 12 rows, 4 with AVX-512) into the row tiles, many (from 32) into the packed GEMM; no int8 rounding of the activations, so a streamed
    decode matches the one-shot one as with float weights."""
    from soprano.ops import native_vocos
    gen = torch.Generator().manual_seed(9)
    D, k = 512, 3
    x, src = _packed(gen, lengths, D, k, "cpu")
    w = _quantized_block(gen, D, k, w1_type, w2_type)
    plain = [m.dequantized() if hasattr(m, "qtype") else m.float() for m in w]
    _close(native_vocos.convnext_block_cpu(x, src, *w, EPS),
           reference.convnext_block(x, src, *plain, EPS), 1e-5, "the fp32 math")


def test_cpu_block_names_a_block_type_it_cannot_multiply():
    from soprano.ops import native_vocos
    gen = torch.Generator().manual_seed(4)
    x, src = _packed(gen, [2], 256, 3, "cpu")
    w = _quantized_block(gen, 256, 3, "Q4_1", "Q8_0")
    with pytest.raises(ValueError, match="convnext_block_cpu: w1 type must be float32, float16, "
                                         "bfloat16, Q8_0, Q4_0, Q4_K, Q5_K or Q6_K, got 'Q4_1'"):
        native_vocos.convnext_block_cpu(x, src, *w, EPS)
    w = _quantized_block(gen, 256, 3, None, None)
    w[6] = w[6].bfloat16()
    with pytest.raises(ValueError, match="w1 and w2 must share a float dtype, got float16 and "
                                         "bfloat16"):
        native_vocos.convnext_block_cpu(x, src, *w, EPS)

