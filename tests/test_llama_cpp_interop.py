"""llama.cpp's own converter and runtime on our checkpoints (tests/llama_cpp_support.py).

The backbone GGUF that llama.cpp's ``convert_hf_to_gguf.py`` writes for a Soprano checkpoint (its
pre-tokenizer detection overridden, decoder.pth ignored) must load in llama.cpp and give the same
logits as transformers' Qwen3ForCausalLM in fp32 on the same checkpoint; its layout (tensor names,
types, shapes, metadata keys) is pinned here with PyPI gguf's reader, since our GGUF reader and
writer must accept and produce exactly that file.
Measured on 2 CPU cores (a 20-token prompt, max |logit| ~100): max abs error 6e-5 in f32 (tiny and
real shapes), 3.5e-2 in f16, 1.4 in q8_0.
"""
import numpy as np
import pytest
import torch

import llama_cpp_support as lcs

pytestmark = pytest.mark.slow

# Tolerances on max |llama.cpp - transformers| relative to max |logit| (~100 for our checkpoints),
# 5-20x the measured error: f32 differs only in summation order; f16 and q8_0 round the weights
# (and, for q8_0, llama.cpp's activations) first.
REL_TOL = {"f32": 1e-5, "f16": 5e-3, "q8_0": 6e-2}

# MODEL.md's "GGUF" section: the backbone tensors of a qwen3 GGUF.
GLOBAL_TENSORS = {"token_embd.weight", "output.weight", "output_norm.weight"}
BLOCK_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                 "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
NORMS = {"output_norm", "attn_norm", "attn_q_norm", "attn_k_norm", "ffn_norm"}
WEIGHT_TYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}


@pytest.fixture(scope="module")
def converted(request, tmp_path_factory):
    """``converted(preset, outtype)``: path of llama.cpp's GGUF of the ``tiny``/``real`` checkpoint
    (conftest's ``tiny_ckpt``/``real_ckpt``), converted once per module."""
    lcs.require()
    out_dir = tmp_path_factory.mktemp("llama-cpp-gguf")
    cache = {}

    def convert(preset, outtype):
        if (preset, outtype) not in cache:
            ckpt = request.getfixturevalue(f"{preset}_ckpt")
            cache[preset, outtype] = lcs.convert_hf_to_gguf(
                ckpt, out_dir / f"{preset}-{outtype}.gguf", outtype)
        return cache[preset, outtype]
    return convert


def prompt_ids(ckpt):
    """A Soprano prompt, [STOP][TEXT]{text}[START], then some audio tokens: 20 ids."""
    from tokenizers import Tokenizer
    text = Tokenizer.from_file(f"{ckpt}/tokenizer.json").encode("hello world.").ids
    return [3, 1, *text, 2, *(4 + a for a in (17, 4242, 7999, 0, 123, 5000, 64))]


@pytest.fixture(scope="module")
def reference(request):
    """``reference(preset)``: (prompt ids, transformers' fp32 logits [n, vocab])."""
    from transformers import Qwen3ForCausalLM
    cache = {}

    def logits(preset):
        if preset not in cache:
            ckpt = request.getfixturevalue(f"{preset}_ckpt")
            ids = prompt_ids(ckpt)
            model = Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
            with torch.no_grad():
                cache[preset] = ids, model(torch.tensor([ids])).logits[0].numpy()
        return cache[preset]
    return logits


@pytest.mark.parametrize("preset, outtype",
                         [("tiny", "f32"), ("real", "f32"), ("real", "f16"), ("real", "q8_0")])
def test_llama_cpp_logits_match_transformers(converted, reference, preset, outtype):
    ids, ref = reference(preset)
    got = lcs.llama_cpp_logits(converted(preset, outtype), ids)
    assert got.shape == ref.shape == (len(ids), 8192)
    err = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    assert err <= REL_TOL[outtype] * scale, (
        f"{preset} {outtype}: max abs error {err:.3g} at max |logit| {scale:.3g}")
    if outtype != "q8_0":  # the greedy token at every position (the LM head avoids near-ties)
        np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("preset", ["tiny", "real"])
def test_llama_cpp_reads_back_the_converter_metadata(converted, request, preset):
    import json
    ckpt = request.getfixturevalue(f"{preset}_ckpt")
    with open(f"{ckpt}/config.json") as f:
        config = json.load(f)
    info = lcs.llama_cpp_info(converted(preset, "f32"))
    assert info["desc"].startswith("qwen3 ")
    assert (info["n_vocab"], info["n_embd"], info["n_layer"], info["n_ctx_train"]) == (
        config["vocab_size"], config["hidden_size"], config["num_hidden_layers"],
        config["max_position_embeddings"])
    meta = info["metadata"]
    assert meta["general.architecture"] == "qwen3"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == lcs.PRE_TOKENIZER
    assert meta["tokenizer.ggml.eos_token_id"] == "3"


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_converter_layout(converted, real_ckpt, outtype):
    """What llama.cpp's converter writes (PyPI gguf's reader): our reader and writer match this."""
    from gguf import GGUFReader, GGUFValueType
    from tokenizers import Tokenizer
    reader = GGUFReader(converted("real", outtype))
    n_layer = 17
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == GLOBAL_TENSORS | {f"blk.{i}.{n}.weight" for i in range(n_layer)
                                             for n in BLOCK_TENSORS}  # no decoder tensors
    shapes = {"token_embd": [512, 8192], "output": [512, 8192], "output_norm": [512],
              "attn_norm": [512], "ffn_norm": [512], "attn_q_norm": [128], "attn_k_norm": [128],
              "attn_q": [512, 512], "attn_k": [512, 128], "attn_v": [512, 128],
              "attn_output": [512, 512], "ffn_gate": [512, 2304], "ffn_up": [512, 2304],
              "ffn_down": [2304, 512]}  # ggml order: ne[0] is the input (row) dimension
    for name, t in tensors.items():
        kind = name.split(".")[-2]
        assert [int(n) for n in t.shape] == shapes[kind], name
        want = "F32" if kind in NORMS else WEIGHT_TYPE[outtype]
        assert t.tensor_type.name == want, name

    fields = reader.fields
    scalars = {k: f.contents() for k, f in fields.items()
               if f.types[0] != GGUFValueType.ARRAY and not k.startswith("GGUF.")}
    assert scalars.pop("qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert {k: v for k, v in scalars.items() if not k.startswith("general.")} == {
        "qwen3.block_count": 17, "qwen3.context_length": 1024, "qwen3.embedding_length": 512,
        "qwen3.feed_forward_length": 2304, "qwen3.attention.head_count": 4,
        "qwen3.attention.head_count_kv": 1, "qwen3.rope.freq_base": 10000.0,
        "qwen3.attention.key_length": 128, "qwen3.attention.value_length": 128,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": lcs.PRE_TOKENIZER,
        "tokenizer.ggml.bos_token_id": 3, "tokenizer.ggml.eos_token_id": 3,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.padding_token_id": 3,
        "tokenizer.ggml.normalizer.lowercase": True}
    assert scalars["general.architecture"] == "qwen3"
    assert scalars["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[outtype]

    # the vocabulary in id order, as tokenizer.json has it; specials and audio tokens CONTROL (3)
    tok = Tokenizer.from_file(f"{real_ckpt}/tokenizer.json")
    tokens = fields["tokenizer.ggml.tokens"]
    assert [tokens.contents(i) for i in range(len(tokens.data))] == [
        tok.id_to_token(i) for i in range(8192)]
    types = fields["tokenizer.ggml.token_type"]
    assert [types.contents(i) for i in range(len(types.data))] == [3] * 8004 + [1] * (8192 - 8004)
    merges = fields["tokenizer.ggml.merges"]
    assert len(merges.data) > 0


def test_llama_cpp_backbone_runs_in_soprano_with_decoder_pth(converted, real_ckpt, tmp_path):
    """Stock llama.cpp's converter writes the backbone only; with the published decoder.pth
    beside it, our engine speaks exactly as from the safetensors checkpoint (bf16 holds the
    bf16 backbone exactly), and the tokenizer rebuilt from its tokenizer.ggml.* metadata
    tokenizes as tokenizer.json does."""
    import shutil
    from soprano import SopranoTTS
    from test_gguf import TOKENIZER_TEXTS
    shutil.copy(converted("real", "bf16"), tmp_path / "soprano.gguf")
    shutil.copy(f"{real_ckpt}/decoder.pth", tmp_path / "decoder.pth")
    ours = SopranoTTS(tmp_path, device="cpu")
    ref = SopranoTTS(real_ckpt, device="cpu")
    text = "Hello world, this is llama.cpp's file speaking."
    a = ref.generate([text], max_new_tokens=30)[0][0].generated
    b = ours.generate([text], max_new_tokens=30)[0][0].generated
    assert a.token_ids == b.token_ids
    assert np.array_equal(a.hidden, b.hidden)
    assert np.array_equal(ref.infer(text, max_new_tokens=30), ours.infer(text, max_new_tokens=30))
    for t in TOKENIZER_TEXTS:
        assert ours.tokenizer.encode(t).ids == ref.tokenizer.encode(t).ids, t


# Our engine against llama.cpp on our converter's file (the real-shape bf16 checkpoint), max abs
# error relative to max |logit| (~108). Measured 2026-11-30: f32 5.7e-5, f16 0.035, bf16 0.26,
# q8_0 0.90, q4_0 0.85, q4_k 1.29, q5_k 1.33, q6_k 1.30. The quantized types' ~1% is llama.cpp
# rounding its activations to 8 bits for quantized matmuls (we multiply fp32 activations by the
# dequantized weights); a misread block layout would give errors of the logits' own size.
OURS_REL_TOL = {"f32": 1e-6, "f16": 1e-3, "bf16": 5e-3, "q8_0": 2e-2, "q4_0": 2e-2,
                "q4_k": 2e-2, "q5_k": 2e-2, "q6_k": 2e-2, "q4_k_m": 2e-2}


@pytest.mark.parametrize("outtype", sorted(OURS_REL_TOL))
def test_our_gguf_runs_in_llama_cpp(real_ckpt, tmp_path, outtype):
    lcs.require()
    from soprano import SopranoTTS
    from soprano.gguf.writer import convert
    from soprano.testing import teacher_forced
    out = convert(real_ckpt, tmp_path / f"ours-{outtype}.gguf", outtype)
    ids = prompt_ids(real_ckpt)
    theirs = lcs.llama_cpp_logits(out.backbone, ids)
    # logits at every position of ids: fed one by one (the trailing 0 is never fed)
    _, ours = teacher_forced(SopranoTTS(out.backbone, device="cpu").backbone, ids[:1],
                             ids[1:] + [0])
    err, scale = float(np.abs(theirs - ours).max()), float(np.abs(ours).max())
    print(f"ours vs llama.cpp on our {outtype} file: max abs error {err:.3g}, max |logit| "
          f"{scale:.3g}")
    assert err <= OURS_REL_TOL[outtype] * scale
    if outtype in ("f32", "f16", "bf16"):  # 8-bit activations can flip a near-tie
        np.testing.assert_array_equal(theirs.argmax(-1), ours.argmax(-1))
