"""bf16 dots on the CPU's tile unit (AMX-BF16): the linear kernel against its reference
(``ops.bf16_dots.linear``), a row's bits whatever its batch, the ConvNeXt block and the fused
decoder pass over ``Bf16DotsMatrix`` weights, a streamed decode equal to the whole one, and when
the table gives a decoder this form. Kernel cases need a CPU with AMX-BF16; the table's choice
and the errors are checked on every CPU."""
import numpy as np
import pytest
import torch

from soprano.model.vocos import VocosDecoder, frames_between
from soprano.ops import OpTable, native, reference
from soprano.ops.bf16_dots import Bf16DotsMatrix
from soprano.ops.quantized import QuantMatrix
from soprano.runtime.streaming import StreamingDecoder, decode_pieces
from test_ops_vocos import EPS, _close, _decoder_weights, _packed, _quantized_block

amx = pytest.mark.skipif(not native.has_bf16_dots(), reason="this CPU has no AMX-BF16")


def _bound(x, w):
    """fp32 sums of exact bf16 products in another order: K eps sum|x w|."""
    xb = x.bfloat16().float()
    return x.shape[-1] * 2e-7 * (xb.abs() @ w.float().abs().T) + 1e-6


# M: one and two 16-row groups of x, whole and partial, and several passes of 32; N: tasks of
# 32 weight rows, a last task of 16 and of fewer (the head's 2050 rows); K: 1 to 72 steps of 32.
@amx
@pytest.mark.parametrize("M,N,K", [(1, 16, 32), (5, 48, 64), (16, 2304, 768), (17, 80, 96),
                                   (32, 32, 32), (37, 768, 2304), (70, 112, 160), (200, 96, 512),
                                   (3, 5, 64), (20, 50, 96), (33, 2050, 768), (1, 1, 32)])
def test_kernel_matches_the_reference(M, N, K):
    gen = torch.Generator().manual_seed(M * 100 + N + K)
    x = torch.randn(M, K, generator=gen)
    w = Bf16DotsMatrix((torch.randn(N, K, generator=gen) * K ** -0.5).bfloat16())
    out = native.linear_cpu(x, w)
    ref = reference.linear(x, w)
    assert out.shape == (M, N)
    assert ((out - ref).abs() <= _bound(x, w.weight)).all()
    # the activations are rounded: the fp32 product of the same weight is measurably off
    assert not torch.allclose(out, x @ w.weight.float().T, rtol=0, atol=1e-5)


@amx
def test_a_row_gets_the_same_bits_alone_and_in_any_batch():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(70, 256, generator=gen)
    w = Bf16DotsMatrix((torch.randn(96, 256, generator=gen) * 0.06).bfloat16())
    whole = native.linear_cpu(x, w)
    for rows in (slice(0, 1), slice(3, 20), slice(31, 33), slice(40, 70)):
        assert torch.equal(native.linear_cpu(x[rows].contiguous(), w), whole[rows])
    assert torch.equal(native.linear_cpu(x[1::3], w), whole[1::3])  # strided rows of x


def test_the_kernel_refuses_what_it_cannot_multiply():
    from soprano import _C
    x, y = torch.randn(4, 64), torch.empty(4, 48)
    w = torch.randn(48, 64).bfloat16()

    def call(wt, N, K, dtype="bfloat16"):
        _C.linear_cpu(x.data_ptr(), wt.data_ptr(), y.data_ptr(), 4, N, K, 64, N, dtype,
                      "auto", True)

    if not native.has_bf16_dots():
        with pytest.raises(ValueError, match="linear_bf16_dots: needs AMX-BF16 and "
                                             "AVX512-BF16, which this CPU lacks"):
            call(w, 48, 64)
        return
    with pytest.raises(ValueError, match="linear_bf16_dots: w must be bfloat16"):
        call(w.half(), 48, 64, "float16")
    with pytest.raises(ValueError, match="linear_bf16_dots: K must be a multiple of 32, got 48"):
        call(w, 48, 48)
    with pytest.raises(ValueError, match="needs a bfloat16 \\[N, K\\] weight"):
        Bf16DotsMatrix(w.half())


def _dots_block(gen, D, k):
    w = _quantized_block(gen, D, k, None, None)
    for i in (4, 6):
        w[i] = Bf16DotsMatrix(w[i].bfloat16())
    return w


@amx
@pytest.mark.parametrize("D,lengths", [(512, [1, 7, 30]), (768, [13]), (64, [40, 2])])
def test_block_matches_the_reference_block(D, lengths):
    """GELU and the gamma residual in the tile kernel's epilogue. The reference's LayerNorm
    differs from the kernel's in last bits, which can flip a bf16 rounding: the bound is a few
    bf16 steps, not fp32's."""
    from soprano.ops import native_vocos
    gen = torch.Generator().manual_seed(D)
    x, src = _packed(gen, lengths, D, 3, "cpu")
    w = _dots_block(gen, D, 3)
    out = native_vocos.convnext_block_cpu(x, src, *w, EPS)
    _close(out, reference.convnext_block(x, src, *w, EPS), 3e-3, "bf16 dots")
    floats = [m.weight.float() if isinstance(m, Bf16DotsMatrix) else m for m in w]
    fp32 = reference.convnext_block(x, src, *floats, EPS)
    assert (out - fp32).abs().max() > 1e-4  # the activations' rounding is there


def test_a_block_needs_both_matrices_as_bf16_dots_and_a_width_of_32s():
    from soprano.ops import native_vocos
    gen = torch.Generator().manual_seed(6)
    x, src = _packed(gen, [3], 64, 3, "cpu")
    w = _dots_block(gen, 64, 3)
    w[6] = w[6].weight
    with pytest.raises(ValueError, match="w1 and w2 must both be bfloat16_dots or neither, got "
                                         "bfloat16_dots and bfloat16"):
        native_vocos.convnext_block_cpu(x, src, *w, EPS)
    x, src = _packed(gen, [3], 48, 3, "cpu")
    w = _dots_block(gen, 48, 3)
    with pytest.raises(ValueError, match="bfloat16_dots needs rows of a multiple of 32 values, "
                                         "got 48"):
        native_vocos.convnext_block_cpu(x, src, *w, EPS)


def _dots_decoder(seed):
    import dataclasses
    gen = torch.Generator().manual_seed(seed)
    w = _decoder_weights(gen, 24, 128, 3, [3] * 4, torch.float32, "Q8_0")
    blocks = [dataclasses.replace(b, w1=Bf16DotsMatrix(b.w1.dequantized(torch.bfloat16)),
                                  w2=Bf16DotsMatrix(b.w2.dequantized(torch.bfloat16)))
              for b in w.blocks]
    return dataclasses.replace(w, blocks=blocks,
                               head_weight=Bf16DotsMatrix(w.head_weight.bfloat16()))


@amx
def test_fused_pass_equals_its_layers_op_by_op():
    from test_ops_vocos import _passes
    w = _dots_decoder(14)
    fused = VocosDecoder(w, OpTable("cpu", torch.float32))
    plain = VocosDecoder(w, OpTable("cpu", torch.float32, backend="torch"))
    assert fused._fused is not None and plain._fused is None
    fused_state = [fused.fresh_pending() for _ in range(3)]
    plain_state = [plain.fresh_pending() for _ in range(3)]
    gen = torch.Generator().manual_seed(15)
    for step in _passes(gen, 24, 3, 3):
        frames, final = [f for f, _ in step], [last for _, last in step]
        got, fused_state = fused.run_layers(fused_state, frames, final)
        want, plain_state = plain.run_layers(plain_state, frames, final)
        for g, r in zip(got, want):
            _close(g, r, 3e-3, "bf16 dots pass")


@amx
@pytest.mark.parametrize("chunk,first", [(1, 1), (2, 1), (4, 1), (16, 4)])
def test_a_stream_equals_the_whole_decode(chunk, first):
    """Both take their frames from frames_between and every native GEMM gives a row its bits
    whatever the batch, so no bf16 rounding differs between them: the stream is the whole
    decode up to the fp32 head and overlap-add: ~2e-7 here, and 2.5e-4 with F.interpolate's
    frames for the whole decode (on the real shape ~2e-3)."""
    decoder = VocosDecoder(_dots_decoder(16), OpTable("cpu", torch.float32))
    states = torch.randn(100, 24, generator=torch.Generator().manual_seed(17))
    whole = decoder(states.T[None])[0].numpy()
    stream = StreamingDecoder(decoder, chunk, first)
    pieces = [stream.push_piece(h) for h in states] + [stream.finish_piece()]
    chunks = [c for p in pieces if p is not None for c in decode_pieces(decoder, [p])]
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() <= 1e-5


def test_frames_between_are_f_interpolate_s_frames():
    states = torch.randn(2, 9, 24, generator=torch.Generator().manual_seed(18))
    frames = torch.cat([states[:, :1], frames_between(states)], dim=1)
    want = torch.nn.functional.interpolate(states.transpose(1, 2), size=33, mode="linear",
                                           align_corners=True).transpose(1, 2)
    torch.testing.assert_close(frames, want, rtol=0, atol=5e-7)
    assert torch.equal(frames[:, ::4], states)


def _q8_0(N, K):
    from test_ops_quant_linear import quantized
    return quantized(torch.randn(N, K, generator=torch.Generator().manual_seed(N)), "Q8_0")


def test_the_table_gives_quantized_decoder_matrices_bf16_dots_where_the_cpu_has_amx(
        monkeypatch):
    monkeypatch.delenv("SOPRANO_DECODER_BF16", raising=False)
    m = _q8_0(96, 64)
    cpu = OpTable("cpu", torch.float32)
    got = cpu.decoder_matrix(m)
    if native.has_bf16_dots():
        assert isinstance(got, Bf16DotsMatrix)
        assert torch.equal(got.weight, m.dequantized().bfloat16())
    else:
        assert got is m
    floats = torch.randn(96, 64).half()
    assert cpu.decoder_matrix(floats) is floats  # a 16-bit model keeps fp32 math
    assert OpTable("cpu", torch.float32, backend="torch").decoder_matrix(m) is m
    monkeypatch.setenv("SOPRANO_DECODER_BF16", "0")
    assert isinstance(cpu.decoder_matrix(m), QuantMatrix)
