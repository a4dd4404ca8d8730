"""The Vocos decoder's names in the three GGUF layouts that exist for Soprano.

- llama.cpp (its Soprano pull request #28607, "mtmd : add Soprano audio generation", read in the
  fork savoflux-spec/AI.local at ac39512e88604c06a99b60d3ba7b118cf3a362d1: ``conversion/
  soprano.py``, ``tools/mtmd/clip.cpp``): an "mmproj" file of architecture ``clip`` with
  ``clip.has_gen_audio_encoder`` and projector type ``soprano``, tensors ``a.gen.wav.*``, the
  embed weight squeezed to [D, C], depthwise weights F16, no ISTFT window (a periodic Hann).
  Our writer produces exactly this file.
- codec.cpp (mybigday/codec.cpp c5ef02b, ``scripts/converters/soprano.py``; hans00's
  ``codec-F32.gguf``): architecture ``soprano``, tensors ``sop.decode.*``.
- audio.cpp (0xShug0/audio.cpp PR #323, read at drzsdrtfg/audio.cpp 64fff92; WalkingCat's
  files): one ``audiocpp`` file holding backbone and decoder under their safetensors /
  ``decoder.pth`` names, except ``head.*`` prefixed with ``decoder.``.
Each layout is a list of (their name, our name) templates, ``{i}`` a block index and ``{wb}``
``weight`` or ``bias`` (``{s}``: codec.cpp's ``w`` or ``b``); a decoder tensor no template
matches is an error naming it, so an unknown variant fails loudly instead of loading half.
"""
import re

from ..errors import ModelFileError

_BLOCK = "decoder.convnext.{i}."
LLAMA_CPP = (
    ("a.gen.wav.input.{wb}", "decoder.embed.{wb}"),
    ("a.gen.wav.norm.{wb}", "decoder.norm.{wb}"),
    ("a.gen.wav.up.blk.{i}.dwconv.{wb}", _BLOCK + "dwconv.{wb}"),
    ("a.gen.wav.up.blk.{i}.norm.{wb}", _BLOCK + "norm.{wb}"),
    ("a.gen.wav.up.blk.{i}.pw1.{wb}", _BLOCK + "pwconv1.{wb}"),
    ("a.gen.wav.up.blk.{i}.pw2.{wb}", _BLOCK + "pwconv2.{wb}"),
    ("a.gen.wav.up.blk.{i}.gamma", _BLOCK + "gamma"),
    ("a.gen.wav.output_norm.{wb}", "decoder.final_layer_norm.{wb}"),
    ("a.gen.wav.output.{wb}", "head.out.{wb}"),
)
CODEC_CPP = (
    ("sop.decode.embed.{s}", "decoder.embed.{wb}"),
    ("sop.decode.norm.{s}", "decoder.norm.{wb}"),
    ("sop.decode.cnx.{i}.dw.{s}", _BLOCK + "dwconv.{wb}"),
    ("sop.decode.cnx.{i}.ln.{s}", _BLOCK + "norm.{wb}"),
    ("sop.decode.cnx.{i}.pw1.{s}", _BLOCK + "pwconv1.{wb}"),
    ("sop.decode.cnx.{i}.pw2.{s}", _BLOCK + "pwconv2.{wb}"),
    ("sop.decode.cnx.{i}.gamma", _BLOCK + "gamma"),
    ("sop.decode.fln.{s}", "decoder.final_layer_norm.{wb}"),
    ("sop.decode.head.out.{s}", "head.out.{wb}"),
    ("sop.decode.istft.window", "head.istft.window"),
)
AUDIO_CPP = tuple((ours, ours) for ours in (
    "decoder.embed.{wb}", "decoder.norm.{wb}", _BLOCK + "dwconv.{wb}", _BLOCK + "norm.{wb}",
    _BLOCK + "pwconv1.{wb}", _BLOCK + "pwconv2.{wb}", _BLOCK + "gamma",
    "decoder.final_layer_norm.{wb}")) + (
    ("decoder.head.out.{wb}", "head.out.{wb}"),
    ("decoder.head.istft.window", "head.istft.window"),
)
_LAYOUTS = {"llama.cpp": LLAMA_CPP, "codec.cpp": CODEC_CPP, "audio.cpp": AUDIO_CPP}
# which of a file's tensors are the decoder's (the audio.cpp file also holds the backbone)
_DECODER_PREFIX = {"llama.cpp": "a.gen.wav.", "codec.cpp": "sop.decode.",
                   "audio.cpp": "decoder."}
_FIELDS = {"i": r"(?P<i>\d+)", "wb": r"(?P<wb>weight|bias)", "s": r"(?P<s>[wb])"}
# llama.cpp's writer keeps the depthwise convolutions in F16 whatever the output type
DECODER_F16 = re.compile(r"decoder\.convnext\.\d+\.dwconv\.weight")


def _translate(name: str, source: str, target: str) -> str | None:
    """``name`` rewritten from template ``source`` to template ``target``, if it matches."""
    regex = re.sub(r"\\\{(\w+)\\\}", lambda m: _FIELDS[m.group(1)], re.escape(source))
    m = re.fullmatch(regex, name)
    if m is None:
        return None
    fields = m.groupdict()
    if "s" in fields:
        fields["wb"] = {"w": "weight", "b": "bias"}[fields.pop("s")]
    if "{s}" in target:
        fields["s"] = fields["wb"][0]
    return target.format(**fields)


def decoder_layout(gf) -> str | None:
    """Which layout decoder GGUF ``gf`` has, or None when it holds no Soprano decoder."""
    arch = gf.get("general.architecture", str, default=None)
    if arch == "clip" and gf.get("clip.has_gen_audio_encoder", bool, default=False):
        kind = gf.get("clip.projector_type", str, default=None) or gf.get(
            "clip.gen.audio.projector_type", str, default=None)
        return "llama.cpp" if kind == "soprano" else None
    if arch == "soprano" and any(n.startswith("sop.decode.") for n in gf.tensors):
        return "codec.cpp"
    if arch == "audiocpp" and gf.get("audiocpp.model_spec.family", str,
                                     default=None) == "soprano_tts":
        return "audio.cpp"
    return None


def decoder_names(gf) -> dict[str, str]:
    """Our name -> the file's, for every decoder tensor of ``gf``."""
    layout = decoder_layout(gf)
    if layout is None:
        raise ModelFileError(gf.path, "not a Soprano decoder GGUF (expected llama.cpp's mmproj "
                                      "with projector 'soprano', codec.cpp's or audio.cpp's)")
    rules, prefix = _LAYOUTS[layout], _DECODER_PREFIX[layout]
    out = {}
    for name in gf.tensors:
        if not name.startswith(prefix):
            continue
        ours = next((o for theirs, ours_t in rules
                     if (o := _translate(name, theirs, ours_t)) is not None), None)
        if ours is None:
            raise ModelFileError(gf.path, f"tensor '{name}' is not part of a Soprano decoder "
                                          f"in {layout}'s layout")
        out[ours] = name
    return out


def decoder_source(gf, ops):
    """A ``GGUFSource`` over decoder GGUF ``gf``, in our names and shapes."""
    from .weights import GGUFSource
    names = decoder_names(gf)
    shapes = {}
    embed = names.get("decoder.embed.weight")
    if embed is not None and len(gf.tensors[embed].shape) == 2:
        shapes["decoder.embed.weight"] = gf.tensors[embed].shape + (1,)  # llama.cpp's squeeze
    return GGUFSource(gf, names, ops, shapes, keep_quantized=ops.keeps_decoder_blocks())


def decoder_tensor_name(ours: str) -> str | None:
    """llama.cpp's name for one of our decoder tensors (None: not written, e.g. the window)."""
    return next((t for theirs, ours_t in LLAMA_CPP
                 if (t := _translate(ours, ours_t, theirs)) is not None), None)


def add_decoder_metadata(writer, shapes: dict, hidden_size: int) -> None:
    """llama.cpp's mmproj keys, in its converter's order and types, for a decoder whose
    tensors have ``shapes`` (our names)."""
    D = shapes["decoder.embed.weight"][0]
    n_blocks = len({k.split(".")[2] for k in shapes if k.startswith("decoder.convnext.")})
    writer.add_bool("clip.has_gen_audio_encoder", True)
    writer.add_string("clip.gen.audio.projector_type", "soprano")
    writer.add_uint32("clip.gen.audio.projection_dim", hidden_size)
    writer.add_uint32("clip.gen.audio.embedding_length", D)
    writer.add_uint32("clip.gen.audio.feed_forward_length",
                      shapes["decoder.convnext.0.pwconv1.weight"][0])
    writer.add_uint32("clip.gen.audio.block_count", n_blocks)
    writer.add_uint32("clip.gen.audio.attention.head_count", 1)
    writer.add_float32("clip.gen.audio.attention.layer_norm_epsilon", 1e-6)
