"""soprano.gguf.kquants: Q4_K/Q5_K/Q6_K blocks that gguf's own reader decodes correctly.

``gguf.quants.dequantize`` is the reference reader of the layout, so round trips go through it.
The hand-built blocks pin individual bytes to what ggml's block structs and packing loops
(llama.cpp ggml-common.h / ggml-quants.c) prescribe, so a layout error that happened to
round-trip through a matching bug in a reader would still fail here.

SNR bounds sit a little under what was measured (seeded Gaussian data, 262 144 values):
Q4_K 22.9 dB, Q5_K 28.8 dB, Q6_K 35.0 dB, against gguf.quants' Q4_0 21.3, Q5_0 27.4, Q8_0 45.4.
llama.cpp's quantize_row_q*_K_ref gives the same SNRs to 0.01 dB on this data.
"""
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import Q4_K, dequantize
from gguf.quants import quantize as gguf_quantize

from soprano.gguf.kquants import SUPPORTED_TYPES, quantize

Q4K, Q5K, Q6K = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K
BLOCK_BYTES = {Q4K: 144, Q5K: 176, Q6K: 210}
GAUSSIAN_SNR_DB = {Q4K: 22.5, Q5K: 28.5, Q6K: 34.5}
# Half-normal rows: the sub-block offset (dmin) carries the shift, Q4_K/Q5_K gain from that.
ONE_SIGNED_SNR_DB = {Q4K: 27.0, Q5K: 33.0, Q6K: 34.5}


def snr_db(ref, approx):
    ref = np.asarray(ref, dtype=np.float64)
    return 10 * np.log10(np.sum(ref**2) / np.sum((ref - approx) ** 2))


def round_trip(data, qtype):
    return dequantize(quantize(data, qtype), qtype)


@pytest.fixture(scope="module")
def gaussian():
    return np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)


def test_supported_types():
    assert SUPPORTED_TYPES == (Q4K, Q5K, Q6K)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_shape_dtype_and_bytes_per_block(qtype):
    data = np.random.default_rng(1).standard_normal((3, 2, 512)).astype(np.float32)
    out = quantize(data, qtype)
    assert GGML_QUANT_SIZES[qtype] == (256, BLOCK_BYTES[qtype])
    assert out.dtype == np.uint8
    assert out.shape == (3, 2, 2 * BLOCK_BYTES[qtype])
    assert dequantize(out, qtype).shape == data.shape
    # A 1-D tensor is a single row.
    assert quantize(data.reshape(-1), qtype).shape == (12 * BLOCK_BYTES[qtype],)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_gaussian_round_trip_snr(gaussian, qtype):
    assert snr_db(gaussian, round_trip(gaussian, qtype)) >= GAUSSIAN_SNR_DB[qtype]


def test_k_quants_at_least_as_good_as_legacy_types(gaussian):
    def legacy(qtype):
        return snr_db(gaussian, dequantize(gguf_quantize(gaussian, qtype), qtype))

    q4_k, q5_k, q6_k = (snr_db(gaussian, round_trip(gaussian, t)) for t in SUPPORTED_TYPES)
    q4_0 = legacy(GGMLQuantizationType.Q4_0)
    q5_0 = legacy(GGMLQuantizationType.Q5_0)
    q8_0 = legacy(GGMLQuantizationType.Q8_0)
    assert q4_k >= q4_0 + 1.0  # measured 22.9 vs 21.3 dB
    assert q5_k >= q5_0 + 1.0  # measured 28.8 vs 27.4 dB
    # More bits, less error: about 6 dB per bit (measured gaps 5.9, 6.2 and 10.4 dB).
    assert q5_k - q4_k > 5 and q6_k - q5_k > 5 and q8_0 - q6_k > 8


@pytest.mark.parametrize("sign", [-1, 1], ids=["negative", "positive"])
@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_one_signed_rows(qtype, sign):
    data = sign * np.abs(np.random.default_rng(2).standard_normal((16, 2048))).astype(np.float32)
    assert snr_db(data, round_trip(data, qtype)) >= ONE_SIGNED_SNR_DB[qtype]


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_all_zero_gives_zero_bytes_and_zeros(qtype):
    out = quantize(np.zeros((2, 512), dtype=np.float32), qtype)
    assert not out.any()  # all-zero blocks are all-zero bytes, as llama.cpp writes them
    back = dequantize(out, qtype)
    assert np.all(back == 0)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_zero_block_next_to_data(qtype):
    data = np.random.default_rng(3).standard_normal((1, 768)).astype(np.float32)
    data[0, 256:512] = 0
    back = round_trip(data, qtype)
    assert np.all(back[0, 256:512] == 0)
    assert np.isfinite(back).all()
    assert snr_db(data, back) >= GAUSSIAN_SNR_DB[qtype] - 1


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_blocks_six_decades_apart(qtype):
    """Each 256-value block has its own fp16 scale: 1e-2 to 1e4 in one row all keep their SNR."""
    rng = np.random.default_rng(4)
    decades = (10.0 ** np.arange(-2, 5)).astype(np.float32)
    data = rng.standard_normal((8, 7, 256)).astype(np.float32) * decades[:, None]
    back = round_trip(data.reshape(8, -1), qtype).reshape(data.shape)
    for k in range(len(decades)):
        assert snr_db(data[:, k], back[:, k]) >= GAUSSIAN_SNR_DB[qtype] - 1, decades[k]


@pytest.mark.parametrize(
    ("qtype", "outlier_rel_err", "rest_snr_db"),
    # measured: 0.0036 / 9.9 dB, 0.0009 / 15.7 dB, 0.0002 / 19.0 dB (llama.cpp: the same)
    [(Q4K, 0.01, 9.5), (Q5K, 0.003, 15.0), (Q6K, 0.001, 18.5)],
    ids=["Q4_K", "Q5_K", "Q6_K"],
)
def test_outlier_within_a_block(qtype, outlier_rel_err, rest_snr_db):
    """An outlier 50x the rest is kept; the rest of its block pays in precision, not NaN."""
    data = np.random.default_rng(5).standard_normal((64, 256)).astype(np.float32)
    data[:, 37] = np.where(np.arange(64) % 2 == 0, 50, -50)
    back = round_trip(data, qtype)
    assert np.isfinite(back).all()
    assert np.max(np.abs(back[:, 37] - data[:, 37])) <= 50 * outlier_rel_err
    rest = np.delete(np.arange(256), 37)
    assert snr_db(data[:, rest], back[:, rest]) >= rest_snr_db


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_rows_and_chunks_are_independent(qtype):
    """More blocks than one internal chunk (2048): the result is the same as row by row."""
    data = np.random.default_rng(6).standard_normal((2100, 256)).astype(np.float32)
    whole = quantize(data, qtype)
    assert np.array_equal(whole[:7], quantize(data[:7], qtype))
    assert np.array_equal(whole[2047:2050], quantize(data[2047:2050], qtype))
    assert np.array_equal(whole[-1], quantize(data[-1], qtype))


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_float64_and_float16_input(qtype):
    data = np.random.default_rng(7).standard_normal((2, 256)).astype(np.float16)
    expected = quantize(data.astype(np.float32), qtype)
    assert np.array_equal(quantize(data, qtype), expected)
    assert np.array_equal(quantize(data.astype(np.float64), qtype), expected)


# --- hand-built blocks --------------------------------------------------------------------
# Q4_K/Q5_K: sub-block s holds x = k[s] * D * q - m[s] * M with integer levels q that span
# [0, nmax], so the quantizer must find scale k[s] * D and offset m[s] * M exactly. max(k) and
# max(m) are 63, so d = D and dmin = M, and the 6-bit scales and mins are k and m themselves.
D, M = 2.0**-6, 2.0**-5
K = [63, 1, 17, 32, 48, 5, 60, 33]
MINS = [0, 63, 20, 7, 44, 16, 35, 51]
# bytes 0-3: k[0:4] | top 2 bits of k[4:8] << 6; bytes 4-7: same for m; bytes 8-11:
# low nibbles of k[4:8] | low nibbles of m[4:8] << 4.  e.g. byte 0 = 63 | (48 >> 4) << 6 = 255,
# byte 8 = (48 & 15) | (44 & 15) << 4 = 0xC0.
PACKED_SCALES = [255, 1, 209, 160, 128, 127, 148, 199, 192, 5, 60, 49]


def affine_block(levels):
    x = [(K[s] * D) * np.asarray(levels[s], dtype=np.float64) - MINS[s] * M for s in range(8)]
    return np.concatenate(x).astype(np.float32)


def test_q4_k_block_layout():
    # Even sub-blocks count up 0..15 twice, odd ones down, so nibble order is visible.
    levels = [[j % 16 if s % 2 == 0 else 15 - j % 16 for j in range(32)] for s in range(8)]
    out = quantize(affine_block(levels), Q4K)
    assert out.shape == (144,)
    assert out[0:2].tobytes() == np.float16(D).tobytes() == b"\x00\x24"
    assert out[2:4].tobytes() == np.float16(M).tobytes() == b"\x00\x28"
    assert out[4:16].tolist() == PACKED_SCALES
    scales, mins = Q4_K.get_scale_min(out[4:16].reshape(1, 12))
    assert scales.tolist() == [K] and mins.tolist() == [MINS]
    # qs: 32 bytes per pair of sub-blocks, first of the pair in the low nibble.
    qs = out[16:]
    assert qs[0] == 0xF0 and qs[1] == 0xE1 and qs[15] == 0x0F and qs[16] == 0xF0
    expected = [levels[2 * (i // 32)][i % 32] | levels[2 * (i // 32) + 1][i % 32] << 4
                for i in range(128)]
    assert qs.tolist() == expected
    assert np.array_equal(dequantize(out, Q4K), affine_block(levels))


def test_q5_k_block_layout():
    levels = [[j if s % 2 == 0 else 31 - j for j in range(32)] for s in range(8)]
    out = quantize(affine_block(levels), Q5K)
    assert out.shape == (176,)
    assert out[0:2].tobytes() == b"\x00\x24" and out[2:4].tobytes() == b"\x00\x28"
    assert out[4:16].tolist() == PACKED_SCALES
    # qh bit s of byte j is bit 4 of value j of sub-block s: set in even sub-blocks for j >= 16,
    # in odd ones (31 - j) for j < 16.
    assert out[16:48].tolist() == [0xAA] * 16 + [0x55] * 16
    qs = out[48:]
    assert qs[0] == 0xF0 and qs[1] == 0xE1 and qs[16] == 0xF0 and qs[31] == 0x0F
    expected = [(levels[2 * (i // 32)][i % 32] & 15) | (levels[2 * (i // 32) + 1][i % 32] & 15) << 4
                for i in range(128)]
    assert qs.tolist() == expected
    assert np.array_equal(dequantize(out, Q5K), affine_block(levels))


def test_q6_k_block_layout():
    # x = sc[s] * DELTA * (q - 32): level 0 (-32) is each sub-block's largest magnitude, where
    # the quantizer puts it, and sc[0] = -128 is the largest scale, so d = DELTA exactly.
    delta = 2.0**-12
    sc = [-128, 1, -1, 127, 64, -64, 3, -100, 17, 2, -7, 90, 33, -45, 8, 11]
    q = [[0 if j == 0 else 1 + (7 * s + 3 * j) % 63 for j in range(16)] for s in range(16)]
    data = np.concatenate([sc[s] * delta * (np.asarray(q[s], np.float64) - 32)
                           for s in range(16)]).astype(np.float32)
    out = quantize(data, Q6K)
    assert out.shape == (210,)
    flat = [v for row in q for v in row]
    ql, qh = out[:128], out[128:192]
    assert out[192:208].view(np.int8).tolist() == sc
    assert out[208:210].tobytes() == np.float16(delta).tobytes() == b"\x00\x0c"
    # Per 128-value half h: ql[64h + l] packs values 128h + l (low) and 128h + 64 + l (high),
    # ql[64h + 32 + l] packs 128h + 32 + l and 128h + 96 + l, qh[32h + l] packs the top two
    # bits of values 128h + l + 32k at bit 2k.
    # Worked by hand: values 1, 2, 33, 65, 66, 97 have levels 4, 7, 18, 32, 35, 46, so
    # ql[1] = 4 | (32 & 15) << 4, ql[2] = 7 | (35 & 15) << 4, qh[1] = 1 << 2 | 2 << 4 | 2 << 6.
    assert (ql[1], ql[2], qh[1]) == (0x04, 0x37, 0xA4)
    for h in range(2):
        for lane in range(32):
            base = 128 * h + lane
            assert ql[64 * h + lane] == flat[base] & 15 | (flat[base + 64] & 15) << 4
            assert ql[64 * h + 32 + lane] == flat[base + 32] & 15 | (flat[base + 96] & 15) << 4
            assert qh[32 * h + lane] == sum((flat[base + 32 * k] >> 4) << 2 * k for k in range(4))
    assert np.array_equal(dequantize(out, Q6K), data)


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "qtype",
    [GGMLQuantizationType.F32, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0,
     GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K],
    ids=lambda t: t.name,
)
def test_unsupported_type(qtype):
    with pytest.raises(ValueError, match=f"Q4_K, Q5_K and Q6_K only, not {qtype.name}"):
        quantize(np.zeros(256, np.float32), qtype)


@pytest.mark.parametrize("shape", [(4, 300), (128,), (256, 255), ()])
def test_last_dim_not_multiple_of_256(shape):
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.zeros(shape, np.float32), Q4K)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input(bad):
    data = np.zeros(256, np.float32)
    data[3] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize(data, Q5K)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_values_beyond_fp16_scale_range(qtype):
    data = np.random.default_rng(8).standard_normal(256).astype(np.float32) * 1e9
    with pytest.raises(ValueError, match="too large for the float16 block scales"):
        quantize(data, qtype)
