"""Rewrite a GGUF file with changes, to make the damaged and foreign files the loader must
refuse (a tensor dropped, replaced or retyped, a metadata value changed)."""
import numpy as np


def rewrite_gguf(src, dst, *, arch=None, drop=(), replace=None, add=None, fields=None):
    """Copy GGUF ``src`` to ``dst``: ``arch`` as general.architecture, tensors in ``drop``
    left out, ``replace`` {name: (array, raw_dtype or None)} written instead, ``add`` (the
    same) written too, ``fields`` {key: (value, GGUFValueType)} set."""
    import gguf
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch or reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub)
    for key, (value, vtype) in (fields or {}).items():
        writer.add_key_value(key, value, vtype)
    replace = replace or {}
    for t in reader.tensors:
        if t.name in drop:
            continue
        if t.name in replace:
            data, raw = replace[t.name]
            writer.add_tensor(t.name, data, raw_dtype=raw)
        elif t.tensor_type.name in ("F32", "F16"):
            writer.add_tensor(t.name, np.array(t.data))
        else:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for name, (data, raw) in (add or {}).items():
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _decoder_tensors(ckpt):
    import torch
    return {k: v.float().numpy() for k, v in
            torch.load(f"{ckpt}/decoder.pth", weights_only=True).items()}


def write_audiocpp(ckpt, dst):
    """``ckpt`` as audio.cpp lays Soprano out (one file: safetensors names, the decoder's
    head.* under decoder., config.json and tokenizer.json embedded), all F32."""
    import gguf
    from safetensors.numpy import load_file
    writer = gguf.GGUFWriter(dst, "audiocpp")
    writer.add_string("audiocpp.model_spec.family", "soprano_tts")
    files = {n: open(f"{ckpt}/{n}", "rb").read() for n in ("config.json", "tokenizer.json")}
    offsets = np.cumsum([0] + [len(b) for b in files.values()]).tolist()
    writer.add_array("audiocpp.embedded_files.names", list(files))
    writer.add_key_value("audiocpp.embedded_files.offsets", offsets,
                         gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT64)
    writer.add_key_value("audiocpp.embedded_files.data", list(b"".join(files.values())),
                         gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT8)
    for name, t in load_file(f"{ckpt}/model.safetensors").items():
        writer.add_tensor(name, t.astype(np.float32))
    for name, t in _decoder_tensors(ckpt).items():
        writer.add_tensor("decoder." + name if name.startswith("head.") else name, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


CODEC_NAMES = {"embed": "embed", "norm": "norm", "final_layer_norm": "fln"}
CODEC_BLOCK = {"dwconv": "dw", "norm": "ln", "pwconv1": "pw1", "pwconv2": "pw2"}


def write_codeccpp(ckpt, dst):
    """``ckpt``'s decoder as codec.cpp writes it (hans00's codec-F32.gguf), all F32."""
    import gguf
    writer = gguf.GGUFWriter(dst, "soprano")
    writer.add_uint32("codec.n_fft", 2048)
    writer.add_uint32("codec.hop_size", 512)
    for name, t in _decoder_tensors(ckpt).items():
        parts = name.split(".")
        short = {"weight": "w", "bias": "b"}.get(parts[-1], parts[-1])
        if parts[0] == "head":
            theirs = "sop.decode.istft.window" if parts[1] == "istft" else \
                f"sop.decode.head.out.{short}"
        elif parts[1] == "convnext":
            theirs = (f"sop.decode.cnx.{parts[2]}.gamma" if parts[3] == "gamma" else
                      f"sop.decode.cnx.{parts[2]}.{CODEC_BLOCK[parts[3]]}.{short}")
        else:
            theirs = f"sop.decode.{CODEC_NAMES[parts[1]]}.{short}"
        writer.add_tensor(theirs, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
