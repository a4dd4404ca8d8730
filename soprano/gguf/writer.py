"""``soprano-tts convert``: a published-layout model written as llama.cpp's two GGUF files.

The backbone goes to ``OUT.gguf`` as llama.cpp's ``convert_hf_to_gguf.py`` writes a ``qwen3``
model (names and keys in ``backbone.py``), the decoder to ``mmproj-OUT.gguf`` as llama.cpp's
Soprano converter writes its "mmproj" file (``decoder.py``). Tensor types follow llama.cpp:
1-D tensors (norms, biases, gamma) stay F32, the decoder's depthwise convolutions F16 (F32 in an
f32 file, which is then lossless: llama.cpp does not check their type), and every other matrix
takes ``--outtype`` (the decoder's at Q8_0 at most, see ``decoder_outtype``; ``q4_k_m`` and
``q5_k_m`` mix types per tensor as llama-quantize does, see ``backbone_outtype``); a matrix whose
rows do not split into the type's blocks falls back to F16, as llama.cpp does. ``gguf.quants``
quantizes the types it implements; Q4_K, Q5_K and Q6_K, which it does not, come from
``kquants.py``.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cli.convert import OUTTYPES  # one list: the parser is built without numpy
from ..errors import SopranoError
from . import backbone as bb
from . import kquants
from .decoder import DECODER_F16, add_decoder_metadata, decoder_tensor_name
from .tokenizer import GGUF_PRE, tokenizer_json

# general.file_type: a uniform K-quant file is closest to llama-quantize's "_S" mixtures.
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16",
               "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "q4_k": "MOSTLY_Q4_K_S",
               "q5_k": "MOSTLY_Q5_K_S", "q6_k": "MOSTLY_Q6_K", "q4_k_m": "MOSTLY_Q4_K_M",
               "q5_k_m": "MOSTLY_Q5_K_M"}
# llama-quantize's _M mixtures, as its llama_tensor_get_type picks them for a dense model (read
# in llama.cpp's src/llama-quant.cpp): the base K-quant, with output.weight in Q6_K and attn_v
# and ffn_down in Q6_K in the layers _more_bits picks.
_MIXTURE_BASE = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}
_MORE_BITS_TENSORS = ("attn_v.weight", "ffn_down.weight")
# gguf's TokenType values
_NORMAL, _CONTROL = 1, 3


@dataclass(frozen=True)
class Converted:
    backbone: Path
    decoder: Path
    tensors: int


def _encode(array: np.ndarray, type_name: str):
    """(data, raw_dtype) for ``GGUFWriter.add_tensor``: floats as numpy floats, other types as
    the quantized blocks."""
    import gguf
    if type_name == "F32":
        return array.astype(np.float32), None
    if type_name == "F16":
        return array.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType[type_name]
    if qtype in kquants.SUPPORTED_TYPES:
        return kquants.quantize(array.astype(np.float32), qtype), qtype
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def tensor_type(array: np.ndarray, outtype: str, keep_f16: bool = False) -> str:
    """The GGUF type a tensor is written in (see the module doc)."""
    import gguf
    if array.ndim < 2:
        return "F32"
    name = outtype.upper()
    if keep_f16 and name != "F32":
        return "F16"
    if name in ("F32", "F16"):
        return name
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][0]
    return name if array.shape[-1] % block == 0 else "F16"


def _more_bits(layer: int, n_layers: int) -> bool:
    """The layers an _M mixture gives more bits: the first and last eighth and every third
    one between."""
    return (layer < n_layers // 8 or layer >= 7 * n_layers // 8
            or (layer - n_layers // 8) % 3 == 2)


def backbone_outtype(name: str, outtype: str, n_layers: int) -> str:
    """The outtype backbone tensor ``name`` (its GGUF name) is written in: ``outtype``, or for
    an _M mixture its base or Q6_K (see _MIXTURE_BASE)."""
    if outtype not in _MIXTURE_BASE:
        return outtype
    if name == "output.weight":
        return "q6_k"
    layer, _, tensor = name.removeprefix("blk.").partition(".")
    if name.startswith("blk.") and tensor in _MORE_BITS_TENSORS and _more_bits(int(layer),
                                                                               n_layers):
        return "q6_k"
    return _MIXTURE_BASE[outtype]


def _add_tokenizer(writer, tokenizer, eos_id: int, pre: str, hf_json: bool) -> None:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    model = json.loads(tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([_CONTROL if t in specials else _NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(eos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_pad_token_id(eos_id)
    writer.add_add_bos_token(False)
    # what llama.cpp's current converter records for tokenizer.json's Lowercase normalizer
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", True)
    if hf_json:
        writer.add_string("tokenizer.huggingface.json", tokenizer_json(tokenizer))


def _write(writer, entries, outtype_of, progress, done, total) -> int:
    for name, array, keep_f16 in entries:
        data, raw = _encode(array, tensor_type(array, outtype_of(name), keep_f16))
        writer.add_tensor(name, data, raw_dtype=raw)
        done += 1
        if progress:
            progress(done, total, name)
    return done


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def decoder_outtype(outtype: str) -> str:
    """The decoder's matrices are written at Q8_0 at most: llama.cpp's converter writes an
    mmproj in f32/f16/bf16/q8_0 only, and the decoder turns weight noise into audio noise ~10 dB
    louder (teacher-forced, real shapes: a Q4_K decoder alone gave 11.7 dB of audio SNR, a Q8_0
    one 33.9)."""
    return outtype if outtype in ("f32", "f16", "bf16", "q8_0") else "q8_0"


def _check_window(dec: dict, path) -> None:
    """llama.cpp's mmproj has no window tensor: it assumes the periodic Hann window, so a
    decoder with another one cannot be written in its layout."""
    import torch
    window = dec.get("head.istft.window")
    if window is None:
        return
    hann = torch.hann_window(window.numel())
    if window.numel() != 2048 or not torch.allclose(window.float(), hann, atol=1e-3):
        raise SopranoError(f"{path}: head.istft.window is not the periodic 2048-sample Hann "
                           "window that llama.cpp's Soprano decoder assumes; this decoder "
                           "cannot be written in its layout")


def convert(model_dir, out, outtype: str = "f16", progress=None,
            pre_tokenizer: str = GGUF_PRE, hf_tokenizer: bool = True) -> Converted:
    """Write ``model_dir`` (the published layout) as ``out`` (backbone) and
    ``mmproj-<out's name>`` beside it (decoder). ``progress(done, total, tensor)`` is called
    after each tensor. ``pre_tokenizer``: the ``tokenizer.ggml.pre`` name (see
    ``tokenizer.GGUF_PRE``). ``hf_tokenizer``: also store ``tokenizer.json`` whole, as
    ``tokenizer.huggingface.json`` (llama.cpp's own files lack it)."""
    import gguf
    import torch
    from ..model.config import BackboneConfig
    from ..model.files import load_tokenizer
    from ..model.loader import read_decoder_pth, read_safetensors

    if outtype not in OUTTYPES:
        raise SopranoError(f"--outtype must be one of {', '.join(OUTTYPES)}, got '{outtype}'")
    model_dir, out = Path(model_dir), Path(out)
    cfg = BackboneConfig.from_json(model_dir / "config.json")
    tokenizer = load_tokenizer(model_dir)
    sd = read_safetensors(model_dir / "model.safetensors")
    dec = read_decoder_pth(model_dir / "decoder.pth")

    def as_numpy(t):
        return t.detach().to(torch.float32).numpy()

    backbone = [(bb.gguf_name(k), as_numpy(v), False) for k, v in sd.items()
                if bb.gguf_name(k) is not None]
    _check_window(dec, model_dir / "decoder.pth")
    decoder = []
    for k, v in dec.items():
        name, array = decoder_tensor_name(k), as_numpy(v)
        if name is None:
            continue
        if k == "decoder.embed.weight" and array.shape[-1] == 1:
            array = array[..., 0]  # llama.cpp squeezes the kernel-1 embed to [D, C]
        decoder.append((name, array, DECODER_F16.fullmatch(k) is not None))
    total = len(backbone) + len(decoder)
    decoder_out = out.with_name(f"mmproj-{out.name}")
    file_type = gguf.LlamaFileType[_FILE_TYPES[outtype]]
    name = model_dir.resolve().name

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, bb.ARCH)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    bb.add_backbone_metadata(writer, cfg)
    writer.add_vocab_size(cfg.vocab_size)
    _add_tokenizer(writer, tokenizer, cfg.eos_token_id, pre_tokenizer, hf_tokenizer)
    done = _write(writer, backbone,
                  lambda tensor: backbone_outtype(tensor, outtype, cfg.num_layers), progress, 0,
                  total)
    _finish(writer)

    writer = gguf.GGUFWriter(decoder_out, "clip")
    writer.add_type("mmproj")
    writer.add_name(name)
    writer.add_file_type(file_type)
    add_decoder_metadata(writer, {k: tuple(v.shape) for k, v in dec.items()},
                         cfg.hidden_size)
    _write(writer, decoder, lambda _: decoder_outtype(outtype), progress, done, total)
    _finish(writer)
    return Converted(out, decoder_out, total)


