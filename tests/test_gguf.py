"""GGUF models: our converter's files load back and speak like the safetensors model.

Random weights make greedy paths diverge on tiny differences, so the lossy types are compared
under teacher forcing: the same token sequence is fed to both models and their hidden states
and the decoded audio are compared (SNR against the fp32 reference).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from soprano import SopranoTTS
from soprano.gguf.file import GGUFFile
from soprano.gguf.tokenizer import tokenizer_from_gguf
from soprano.gguf.writer import convert
from soprano.ops import native
from soprano.ops.bf16_dots import Bf16DotsMatrix
from soprano.runtime.sentences import prompt_ids
from soprano.testing import snr_db, teacher_forced, write_checkpoint

from gguf_files import write_audiocpp, write_codeccpp

TEXT = "Hello world, this is a test of 42 things."
# SNR floors (dB) of teacher-forced hidden states and audio against the fp32 model
SNR_FLOOR = {"q8_0": 30.0, "q6_k": 18.0, "q5_k": 18.0, "q4_k": 12.0, "q4_0": 12.0,
             "q4_k_m": 12.0, "q5_k_m": 18.0}
TOKENIZER_TEXTS = [
    TEXT, "ANOTHER Sentence, with CAPS!", "Numbers: 1234567890 and 3.14159.",
    "Tabs\tand   many    spaces\n\nnewlines.", "Punctuation?! (parens) [brackets] {braces}...",
    "[STOP][TEXT]control tokens inside[START]", "audio tokens [0][7999] [12]",
    "Unicode: café naïve façade — “quotes”", "emoji 🎉 and 中文", "", "   ",
    "under_scores and hyphen-ated words", "it's 5:30pm on 2026-11-30, $12.50 or 50%",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp32_ckpt(tmp_path_factory):
    """Real shapes in fp32, so that an F32 GGUF holds it exactly."""
    return Path(write_checkpoint(tmp_path_factory.mktemp("gguf") / "fp32", "real",
                                 backbone_dtype=torch.float32, decoder_dtype=torch.float32))


@pytest.fixture(scope="module")
def converted(fp32_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    cache = {}

    def get(outtype):
        if outtype not in cache:
            cache[outtype] = convert(fp32_ckpt, out / outtype / f"soprano-{outtype}.gguf",
                                     outtype)
        return cache[outtype]
    return get


@pytest.fixture(scope="module")
def reference(fp32_ckpt):
    return SopranoTTS(fp32_ckpt, device="cpu")


def forced(tts, tokens) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states [N, H] of ``TEXT``'s prompt followed by ``tokens`` (fed, not sampled),
    and their audio."""
    hidden, _ = teacher_forced(tts.backbone, prompt_ids(tts.tokenizer, TEXT), tokens)
    return hidden, tts.decode_hidden(hidden)


def test_f32_round_trip_is_identical(reference, converted):
    ggml = SopranoTTS(converted("f32").backbone, device="cpu")
    a = reference.generate([TEXT], max_new_tokens=40)[0][0].generated
    b = ggml.generate([TEXT], max_new_tokens=40)[0][0].generated
    assert a.token_ids == b.token_ids
    assert np.array_equal(a.hidden, b.hidden)
    assert np.array_equal(reference.decode_hidden(a.hidden), ggml.decode_hidden(b.hidden))


def test_bf16_round_trip_of_a_bf16_backbone_is_identical(real_ckpt, tmp_path):
    """The published backbone is bf16: a BF16 file holds it exactly (its fp16 decoder does not
    survive bf16, so the audio is compared under the lossy types' SNR tests)."""
    out = convert(real_ckpt, tmp_path / "m.gguf", "bf16")
    a = SopranoTTS(real_ckpt, device="cpu").generate([TEXT], max_new_tokens=30)[0][0]
    b = SopranoTTS(out.backbone, device="cpu").generate([TEXT], max_new_tokens=30)[0][0]
    assert a.generated.token_ids == b.generated.token_ids
    assert np.array_equal(a.generated.hidden, b.generated.hidden)


@pytest.mark.parametrize("outtype", ["f16", "bf16"])
def test_16_bit_hidden_states_within_2e_2(reference, converted, outtype):
    tokens = reference.generate([TEXT], max_new_tokens=40)[0][0].generated.token_ids
    ref_hidden, _ = forced(reference, tokens)
    hidden, _ = forced(SopranoTTS(converted(outtype).backbone, device="cpu"), tokens)
    assert np.abs(hidden - ref_hidden).max() <= 2e-2


@pytest.mark.parametrize("outtype", sorted(SNR_FLOOR))
def test_quantized_snr(reference, converted, outtype):
    tokens = reference.generate([TEXT], max_new_tokens=40)[0][0].generated.token_ids
    ref_hidden, ref_audio = forced(reference, tokens)
    hidden, audio = forced(SopranoTTS(converted(outtype).backbone, device="cpu"), tokens)
    assert len(audio) == len(ref_audio) > 0
    assert snr_db(ref_hidden, hidden) >= SNR_FLOOR[outtype]
    assert snr_db(ref_audio, audio) >= SNR_FLOOR[outtype]


def test_metadata_matches_config(fp32_ckpt, converted):
    cfg = json.loads((fp32_ckpt / "config.json").read_text())
    gf = GGUFFile(converted("q8_0").backbone)
    expect = {"qwen3.block_count": cfg["num_hidden_layers"],
              "qwen3.embedding_length": cfg["hidden_size"],
              "qwen3.feed_forward_length": cfg["intermediate_size"],
              "qwen3.attention.head_count": cfg["num_attention_heads"],
              "qwen3.attention.head_count_kv": cfg["num_key_value_heads"],
              "qwen3.attention.key_length": cfg["head_dim"],
              "qwen3.context_length": cfg["max_position_embeddings"],
              "tokenizer.ggml.eos_token_id": cfg["eos_token_id"]}
    assert {k: gf.get(k) for k in expect} == expect
    assert gf.get("qwen3.rope.freq_base") == pytest.approx(cfg["rope_theta"])
    assert gf.get("qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(
        cfg["rms_norm_eps"], rel=1e-6)
    assert gf.tensor("blk.0.ffn_down.weight").type_name == "Q8_0"
    assert gf.tensor("blk.0.attn_norm.weight").type_name == "F32"
    dec = GGUFFile(converted("q8_0").decoder)
    assert dec.architecture == "clip"
    assert dec.get("clip.gen.audio.projector_type") == "soprano"
    assert dec.get("clip.gen.audio.embedding_length") == 768
    assert dec.tensor("a.gen.wav.up.blk.0.dwconv.weight").type_name == "F16"
    assert dec.tensor("a.gen.wav.up.blk.7.pw1.weight").type_name == "Q8_0"
    assert dec.tensor("a.gen.wav.input.weight").shape == (768, 512)
    assert len(dec.tensors) == 80


def test_tokenizer_from_ggml_metadata_matches_tokenizer_json(fp32_ckpt, tmp_path, reference):
    out = convert(fp32_ckpt, tmp_path / "no-json.gguf", "q4_0", hf_tokenizer=False)
    gf = GGUFFile(out.backbone)
    assert not gf.has("tokenizer.huggingface.json")
    rebuilt = tokenizer_from_gguf(gf)
    for text in TOKENIZER_TEXTS:
        assert rebuilt.encode(text).ids == reference.tokenizer.encode(text).ids, text


def test_directory_with_gguf_and_decoder_pth_beside(fp32_ckpt, converted, tmp_path):
    """llama.cpp's stock converter writes the backbone only: it runs with decoder.pth."""
    shutil.copy(converted("f32").backbone, tmp_path / "backbone.gguf")
    shutil.copy(fp32_ckpt / "decoder.pth", tmp_path / "decoder.pth")
    tts = SopranoTTS(tmp_path, device="cpu")
    assert tts.model_files.decoder.name == "decoder.pth"
    ref = SopranoTTS(fp32_ckpt, device="cpu").infer(TEXT, max_new_tokens=20)
    assert np.array_equal(tts.infer(TEXT, max_new_tokens=20), ref)


def test_audio_cpp_one_file_layout(fp32_ckpt, reference, tmp_path):
    """WalkingCat's files: one audio.cpp GGUF, config and tokenizer embedded, in a subfolder."""
    (tmp_path / "Soprano-1.1-80M-GGUF").mkdir()
    write_audiocpp(fp32_ckpt, tmp_path / "Soprano-1.1-80M-GGUF" / "soprano-f32.gguf")
    tts = SopranoTTS(tmp_path, device="cpu")
    assert tts.model_files.decoder == tts.model_files.backbone
    assert np.array_equal(tts.infer(TEXT, max_new_tokens=20),
                          reference.infer(TEXT, max_new_tokens=20))


def test_codec_cpp_decoder_beside_a_llama_cpp_backbone(fp32_ckpt, reference, converted, tmp_path):
    """hans00's files: a llama.cpp backbone and codec.cpp's decoder GGUF."""
    shutil.copy(converted("f32").backbone, tmp_path / "Soprano-1.1-80M.F32.gguf")
    write_codeccpp(fp32_ckpt, tmp_path / "codec-F32.gguf")
    tts = SopranoTTS(tmp_path, device="cpu")
    assert tts.model_files.decoder.name == "codec-F32.gguf"
    assert np.array_equal(tts.infer(TEXT, max_new_tokens=20),
                          reference.infer(TEXT, max_new_tokens=20))


@pytest.mark.parametrize("outtype,layout,bytes_per_weight", [
    ("q8_0", "Q8_0x8", 34 / 32), ("q4_k", "Q4_Kx8", 148 / 256), ("q4_0", "Q4_0x8", 18 / 32)])
def test_quantized_matrices_stay_in_their_blocks_on_cpu(converted, outtype, layout,
                                                         bytes_per_weight):
    """The CPU backbone multiplies Q8_0/Q4_0/K-quant matrices as stored (their rows interleaved
    by 8, Q4_K's and Q5_K's scales decoded to bytes): a decode step reads the file's bytes, not
    fp16 copies. A backend without those kernels decodes them at load."""
    path = converted(outtype).backbone
    weights = SopranoTTS(path, device="cpu").backbone.weights
    assert {m.type_name for m in weights.matrices} == {layout}
    weights_count = sum(m.shape[0] * m.shape[1] for m in weights.matrices)
    assert weights.matrix_bytes == weights_count * bytes_per_weight
    plain = SopranoTTS(path, device="cpu", backend="torch").backbone.weights
    assert all(m.dtype == torch.float32 for m in plain.matrices)
    assert torch.equal(plain.lm_head, weights.lm_head.dequantized())


# llama-quantize's use_more_bits over the real shape's 17 layers: the first and last eighth
# (0-1, 14-16) and every third layer between (4, 7, 10, 13)
MORE_BITS = {0, 1, 4, 7, 10, 13, 14, 15, 16}


@pytest.mark.parametrize("outtype,base", [("q4_k_m", "Q4_K"), ("q5_k_m", "Q5_K")])
def test_k_m_files_mix_types_as_llama_quantize_and_run_fused(converted, outtype, base):
    """output, and attn_v and ffn_down in the more-bits layers, in Q6_K; the rest in the base
    type. On a CPU the q|k|v of a more-bits layer is a RowStack of both types, kept in its
    blocks and multiplied by the fused step."""
    path = converted(outtype).backbone
    gf = GGUFFile(path)
    assert gf.tensor("output.weight").type_name == "Q6_K"
    assert gf.tensor("token_embd.weight").type_name == base
    for i in range(17):
        for name in ("attn_v", "ffn_down"):
            want = "Q6_K" if i in MORE_BITS else base
            assert gf.tensor(f"blk.{i}.{name}.weight").type_name == want, (i, name)
        for name in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert gf.tensor(f"blk.{i}.{name}.weight").type_name == base, (i, name)
    tts = SopranoTTS(path, device="cpu")
    layers = tts.backbone.weights.layers
    cpu = base + "x8"  # as the CPU table lays it out
    assert layers[0].wqkv.type_name == f"{cpu}|{cpu}|Q6_Kx8"
    assert layers[2].wqkv.type_name == cpu and layers[0].w_down.type_name == "Q6_Kx8"
    assert type(tts.engine.runner).__name__ == "FusedCpuRunner"


@pytest.mark.parametrize("math", ["fp32", "bf16"])
def test_a_gguf_decoder_keeps_its_blocks_on_cpu_and_streams_as_it_decodes(converted, math,
                                                                           monkeypatch):
    """The decoder's pointwise matrices stay Q8_0 on a CPU (the head in fp16), multiplied as the
    fp32 math on their dequantized values; where the CPU has AMX-BF16 they (and the head)
    become bf16 for its tile unit unless SOPRANO_DECODER_BF16=0. Either way a stream still
    concatenates to ``infer``'s audio; a backend without those kernels dequantizes them at
    load."""
    if math == "bf16" and not native.has_bf16_dots():
        pytest.skip("this CPU has no AMX-BF16")
    if math == "fp32":
        monkeypatch.setenv("SOPRANO_DECODER_BF16", "0")
    path = converted("q8_0").backbone
    tts = SopranoTTS(path, device="cpu")
    blocks = tts.decoder.w.blocks
    head = tts.decoder.w.head_weight
    if math == "fp32":
        assert {(b.w1.type_name, b.w2.type_name) for b in blocks} == {("Q8_0", "Q8_0")}
        assert head.dtype == torch.float16
    else:
        assert {(type(b.w1), type(b.w2)) for b in blocks} == {(Bf16DotsMatrix, Bf16DotsMatrix)}
        assert isinstance(head, Bf16DotsMatrix)
    plain = SopranoTTS(path, device="cpu", backend="torch")
    assert plain.decoder.w.blocks[0].w1.dtype == torch.float32
    hidden = np.random.default_rng(3).standard_normal((30, 512)).astype(np.float32)
    # measured: 67.8 dB with fp32 math, 41.9 with bf16 dots
    assert snr_db(plain.decode_hidden(hidden), tts.decode_hidden(hidden)) >= (
        60 if math == "fp32" else 38)
    kw = dict(max_new_tokens=24, seed=5)
    streamed = np.concatenate(list(tts.infer_stream(TEXT, **kw)))
    whole = tts.infer(TEXT, **kw)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() <= 1e-4
