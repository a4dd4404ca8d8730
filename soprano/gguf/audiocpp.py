"""audio.cpp's one-file Soprano GGUF (WalkingCat's files): backbone, decoder, config and
tokenizer together.

audio.cpp (0xShug0/audio.cpp PR #323, read at drzsdrtfg/audio.cpp 64fff92,
``src/framework/assets/tensor_source.cpp``) writes architecture ``audiocpp`` with
``audiocpp.model_spec.family`` = ``soprano_tts``, the tensors under their safetensors and
``decoder.pth`` names (the decoder's ``head.*`` prefixed with ``decoder.``, see
``decoder.py``), and the model folder's other files embedded whole:
``audiocpp.embedded_files.names`` / ``.offsets`` (n + 1 byte offsets) / ``.data`` (bytes).
``config.json`` and ``tokenizer.json`` come from there instead of llama.cpp's keys.
"""
import json

import numpy as np

from ..errors import ModelFileError
from ..model.config import BackboneConfig

ARCH = "audiocpp"


def embedded_file(gf, name: str) -> bytes:
    """The bytes of file ``name`` embedded in audio.cpp GGUF ``gf``."""
    names = gf.get("audiocpp.embedded_files.names", list, default=[])
    if name not in names:
        raise ModelFileError(gf.path, f"no embedded '{name}' (audiocpp.embedded_files.names "
                                      f"holds {names})")
    offsets = gf.get("audiocpp.embedded_files.offsets", list)
    field = gf.fields["audiocpp.embedded_files.data"]
    data = np.concatenate([field.parts[i] for i in field.data]).astype(np.uint8)
    i = names.index(name)
    if len(offsets) != len(names) + 1 or not 0 <= offsets[i] <= offsets[i + 1] <= len(data):
        raise ModelFileError(gf.path, "audiocpp.embedded_files.offsets do not fit its data")
    return data[offsets[i]:offsets[i + 1]].tobytes()


def backbone_config(gf) -> BackboneConfig:
    try:
        raw = json.loads(embedded_file(gf, "config.json"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(gf.path, f"embedded config.json is not JSON ({e})") from e
    return BackboneConfig.from_dict(raw, f"{gf.path} (embedded config.json)")


def tokenizer(gf):
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_str(embedded_file(gf, "tokenizer.json").decode("utf-8"))
    except ModelFileError:
        raise
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise ModelFileError(gf.path, f"embedded tokenizer.json is not readable ({e})") from e


def tensor_names(gf) -> dict[str, str]:
    """The backbone's tensors, which audio.cpp keeps under their safetensors names."""
    return {n: n for n in gf.tensors if n.startswith(("model.", "lm_head."))}
