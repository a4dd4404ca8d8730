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
    for n in ((0, 3) if _interpreted(impl, device) else (0, 1, 5, 21, 64)):
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


@pytest.mark.parametrize("windowed", (True, False), ids=("windowed", "bare"))
def test_cpu_pocketfft_frames_at_every_row_count(windowed):
    """``_C.istft_frames_cpu`` (the lean engine's at every size, the torch engine's up to 32
    rows): blocks of rows over threads, a partial last block, n_fft other than 2048."""
    from soprano.ops import native
    if not native.has_cpu():
        pytest.skip("soprano._C is not built")
    gen = torch.Generator().manual_seed(6)
    for n_fft, rows in ((N_FFT, 3), (N_FFT, 40), (N_FFT, 300), (64, 9)):
        spec = torch.randn(rows, n_fft + 2, generator=gen) * 2
        window = torch.hann_window(n_fft)
        out = torch.empty(rows, n_fft)
        native._C.istft_frames_cpu(spec.data_ptr(), window.data_ptr() if windowed else 0, rows,
                                   n_fft, n_fft + 2, MAX_MAGNITUDE, out.data_ptr())
        want = reference.istft_frames(spec, window if windowed else torch.ones(n_fft))
        _close(out, want, 2e-5, f"{rows} rows of {n_fft}")


def test_cpu_pocketfft_frames_name_a_bad_size():
    from soprano.ops import native
    if not native.has_cpu():
        pytest.skip("soprano._C is not built")
    spec, out = torch.zeros(2, 12), torch.zeros(2, 12)
    with pytest.raises(ValueError, match="istft_frames_cpu: needs .* an even n_fft >= 2 .*"
                                         "got N 2, n_fft 11"):
        native._C.istft_frames_cpu(spec.data_ptr(), 0, 2, 11, 12, MAX_MAGNITUDE, out.data_ptr())


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
    or, at 12 rows, 4 with AVX-512) into the row tiles, many (from 32) into the packed GEMM;
    no int8 rounding of the activations, so a streamed decode matches the one-shot one as with
    float weights."""
    from soprano.ops import native_vocos
    gen = torch.Generator().manual_seed(9)
    D, k = 512, 3
    x, src = _packed(gen, lengths, D, k, "cpu")
    w = _quantized_block(gen, D, k, w1_type, w2_type)
    plain = [m.dequantized() if hasattr(m, "qtype") else m.float() for m in w]
    _close(native_vocos.convnext_block_cpu(x, src, *w, EPS),
           reference.convnext_block(x, src, *plain, EPS), 1e-5, "the fp32 math")


@pytest.mark.parametrize("rows", [1, 4, 7, 12, 16, 31, 40])
def test_cpu_block_multiplies_q8_0_as_its_fp32_rows_bit_for_bit(rows):
    """Q8_0 matrices (the GGUF decoders') are decoded in registers in the few-rows kernel: the
    same bits as the block with those matrices dequantized to fp32, at every tile shape (and
    from 32 rows the packed GEMM over decoded rows)."""
    from soprano.ops import native_vocos
    gen = torch.Generator().manual_seed(13)
    D, k = 256, 3
    x, src = _packed(gen, [rows], D, k, "cpu")
    w = _quantized_block(gen, D, k, "Q8_0", "Q8_0")
    plain = [m.dequantized() if hasattr(m, "qtype") else m for m in w]
    assert plain[4].dtype == torch.float32
    assert torch.equal(native_vocos.convnext_block_cpu(x, src, *w, EPS),
                       native_vocos.convnext_block_cpu(x, src, *plain, EPS))


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


def _decoder_weights(gen, C, D, embed_k, block_ks, wdtype, quant=None):
    """A small VocosWeights: embed k ``embed_k``, one block per entry of ``block_ks``, matrices
    in ``wdtype`` or, with ``quant``, the blocks' matrices as GGUF blocks of that type."""
    from soprano.model.vocos import ConvNeXtWeights, VocosWeights
    blocks = []
    for k in block_ks:
        w = _quantized_block(gen, D, k, quant, quant) if quant else list(
            _block_weights(gen, D, k, wdtype, "cpu"))
        blocks.append(ConvNeXtWeights(*w))
    vec = lambda n, s=0.1, shift=0.0: torch.randn(n, generator=gen) * s + shift  # noqa: E731
    return VocosWeights(
        embed_weight=(torch.randn(D, C, embed_k, generator=gen) * (C * embed_k) ** -0.5).to(
            wdtype), embed_bias=vec(D), norm_weight=vec(D, 0.2, 1.0), norm_bias=vec(D),
        blocks=blocks, final_norm_weight=vec(D, 0.2, 1.0), final_norm_bias=vec(D),
        head_weight=(torch.randn(N_FFT + 2, D, generator=gen) * D ** -0.5).to(wdtype),
        head_bias=vec(N_FFT + 2), window=torch.hann_window(N_FFT))


def _as_floats(w):
    """``w`` with every GGUF matrix dequantized, for the torch table."""
    import dataclasses
    blocks = [dataclasses.replace(b, w1=b.w1.dequantized(), w2=b.w2.dequantized())
              if hasattr(b.w1, "qtype") else b for b in w.blocks]
    return dataclasses.replace(w, blocks=blocks)


def _passes(gen, C, streams, passes):
    """Per pass, per stream: new frames (0-6 rows), and whether the stream ends there."""
    out = []
    for i in range(passes):
        out.append([(torch.randn(int(torch.randint(0, 7, (1,), generator=gen)), C,
                                 generator=gen), i == passes - 1 and s % 2 == 0)
                    for s in range(streams)])
    return out


@pytest.mark.skipif(not backend_available("cpu", "cpu")[0], reason="soprano._C is not built")
@pytest.mark.parametrize("embed_k,block_ks,wdtype,quant", [
    (1, [3, 3], torch.float16, None), (3, [3, 5], torch.bfloat16, None),
    (3, [3], torch.float32, None), (1, [3, 3], torch.float32, "Q8_0")])
def test_cpu_fused_pass_equals_its_layers_op_by_op(embed_k, block_ks, wdtype, quant):
    """vocos_layers (one native call a pass) against the op-by-op pass on the torch table:
    streams of several pieces, packed together, some new frames empty, some streams ending."""
    from soprano.model.vocos import VocosDecoder
    from soprano.ops import OpTable
    from soprano.ops.native_vocos import PendingRows
    gen = torch.Generator().manual_seed(11)
    C, D, streams = 24, 64, 3
    w = _decoder_weights(gen, C, D, embed_k, block_ks, wdtype, quant)
    fused = VocosDecoder(w, OpTable("cpu", torch.float32))
    plain = VocosDecoder(_as_floats(w), OpTable("cpu", torch.float32, backend="torch"))
    assert fused._fused is not None and plain._fused is None
    fused_state = [fused.fresh_pending() for _ in range(streams)]
    plain_state = [plain.fresh_pending() for _ in range(streams)]
    assert isinstance(fused_state[0], PendingRows)
    emitted = 0
    for step in _passes(gen, C, streams, 3):
        frames, final = [f for f, _ in step], [last for _, last in step]
        got, fused_state = fused.run_layers(fused_state, frames, final)
        want, plain_state = plain.run_layers(plain_state, frames, final)
        for g, r in zip(got, want):
            _close(g, r, 1e-5, f"embed k={embed_k} blocks {block_ks} {wdtype} {quant}")
            emitted += r.shape[0]
    assert emitted > 0


@pytest.mark.skipif(not backend_available("cpu", "cpu")[0], reason="soprano._C is not built")
def test_cpu_fused_pass_refuses_states_and_frames_it_cannot_take():
    from soprano.ops.native_vocos import VocosLayersCpu
    gen = torch.Generator().manual_seed(12)
    layers = VocosLayersCpu(_decoder_weights(gen, 24, 64, 1, [3], torch.float16), EPS)
    state = layers.fresh_pending()
    with pytest.raises(ValueError, match=r"vocos_layers_cpu: frames must be \[n, 24\] on cpu, "
                                         r"got \[2, 23\]"):
        layers([state], [torch.zeros(2, 23)], [False])
    with pytest.raises(ValueError, match="pending states must come from this decoder.s fresh"):
        layers([[torch.zeros(0, 24)]], [torch.zeros(2, 24)], [False])
    with pytest.raises(ValueError, match="1 pending states, 2 frame blocks and 1 final flags"):
        layers([state], [torch.zeros(2, 24)] * 2, [False])
    other = VocosLayersCpu(_decoder_weights(gen, 24, 32, 1, [3], torch.float16), EPS)
    with pytest.raises(ValueError, match="pending states must come from this decoder's"):
        layers([other.fresh_pending()], [torch.zeros(2, 24)], [False])
    state.counts[1] = 3
    with pytest.raises(ValueError, match="pending count for layer 1 is 3, outside 0..2"):
        layers([state], [torch.zeros(2, 24)], [False])


@pytest.mark.skipif(not backend_available("cpu", "cpu")[0], reason="soprano._C is not built")
def test_a_decoder_with_an_even_kernel_runs_op_by_op():
    """The fused pass takes a radius of rows either side of a centre: an even-width kernel
    (no Soprano decoder has one) keeps the op-by-op pass, and the native op refuses it."""
    from soprano.model.vocos import VocosDecoder
    from soprano.ops import OpTable
    from soprano.ops.native_vocos import VocosLayersCpu
    w = _decoder_weights(torch.Generator().manual_seed(14), 24, 64, 2, [3], torch.float16)
    assert VocosDecoder(w, OpTable("cpu", torch.float32))._fused is None
    with pytest.raises(ValueError, match="the embed's kernel must have an odd width, got 2"):
        VocosLayersCpu(w, EPS)
