"""Which files make up a model: the published safetensors layout or GGUF files.

A model is given as a directory, a hub id (resolved to a cached or downloaded directory) or a
backbone ``.gguf`` file. A directory in the published layout loads as before. Otherwise its
GGUF files are sorted by their ``general.architecture``: one backbone (``qwen3``) and a decoder
found beside it (llama.cpp's ``clip`` "mmproj" file or a community decoder GGUF, else
``decoder.pth``), or given with ``decoder_path``: stock llama.cpp converters write the backbone
only, and their users hold exactly that file plus the published ``decoder.pth``.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileError, ModelNotFoundError
from .files import MODEL_FILES

BACKBONE_ARCHITECTURES = ("qwen3",)


@dataclass(frozen=True)
class ModelFiles:
    """``root``: the model's directory; ``backbone``: ``model.safetensors`` (with
    ``config.json`` and ``tokenizer.json`` beside it) or a GGUF holding config and tokenizer;
    ``decoder``: ``decoder.pth`` or a decoder GGUF."""
    root: Path
    backbone: Path
    decoder: Path

    @property
    def is_gguf(self) -> bool:
        return self.backbone.suffix.lower() == ".gguf"

    def names(self) -> list[str]:
        if not self.is_gguf:
            return list(MODEL_FILES)
        return [os.path.relpath(p, self.root) for p in (self.backbone, self.decoder)]


def gguf_role(path: Path) -> str:
    """'backbone', 'decoder' or 'both' (audio.cpp's one-file layout) by the file's
    architecture; a clear error for anything else."""
    from ..gguf.decoder import decoder_layout
    from ..gguf.file import open_gguf
    gf = open_gguf(path)
    arch = gf.get("general.architecture", str, default=None)
    if arch in BACKBONE_ARCHITECTURES:
        return "backbone"
    layout = decoder_layout(gf)
    if layout == "audio.cpp":
        return "both"
    if layout is not None:
        return "decoder"
    raise ModelFileError(path, f"a GGUF of architecture '{arch}', which is neither a Soprano "
                               f"backbone ({', '.join(BACKBONE_ARCHITECTURES)}) nor a Soprano "
                               "decoder")


def _decoder_beside(root: Path, decoders: list[Path]) -> Path:
    if len(decoders) == 1:
        return decoders[0]
    if len(decoders) > 1:
        raise ModelNotFoundError(
            f"{root} holds several decoder GGUFs ({', '.join(p.name for p in decoders)}): "
            "choose one with --decoder-path")
    if (root / "decoder.pth").is_file():
        return root / "decoder.pth"
    raise ModelNotFoundError(
        f"{root} has a backbone GGUF but no decoder: put the decoder GGUF or the published "
        "decoder.pth beside it, or pass --decoder-path")


def _check_decoder(path: Path) -> Path:
    if not path.is_file():
        raise ModelFileError(path, "file is missing")
    if path.suffix.lower() == ".gguf" and gguf_role(path) == "backbone":
        raise ModelFileError(path, "is a backbone GGUF, not a decoder: give it with "
                                   "--model-path and the decoder with --decoder-path")
    return path


def locate_files(model_dir_or_file: Path, decoder_path=None) -> ModelFiles:
    """The files of a model directory, or of a backbone GGUF file and its decoder."""
    path = Path(model_dir_or_file)
    decoder = Path(decoder_path).expanduser() if decoder_path else None
    if path.is_file():
        role = gguf_role(path)
        if role == "decoder":
            raise ModelFileError(path, "is a decoder GGUF: pass the backbone GGUF with "
                                       "--model-path and this file with --decoder-path")
        if role == "both" and decoder is None:
            decoder = path
        if decoder is None:
            decoders = [p for p in sorted(path.parent.glob("*.gguf"))
                        if p != path and gguf_role(p) == "decoder"]
            decoder = _decoder_beside(path.parent, decoders)
        return ModelFiles(path.parent, path, _check_decoder(decoder))
    if (path / "model.safetensors").is_file() or not any(path.rglob("*.gguf")):
        return ModelFiles(path, path / "model.safetensors",
                          _check_decoder(decoder) if decoder else path / "decoder.pth")
    # hub repos may keep their files in a subfolder (WalkingCat's does)
    roles = {p: gguf_role(p) for p in sorted(path.rglob("*.gguf"))}
    backbones = [p for p, r in roles.items() if r in ("backbone", "both")]
    if not backbones:
        raise ModelNotFoundError(f"{path} holds GGUF files but no backbone GGUF "
                                 f"({', '.join(p.name for p in roles)} are decoders)")
    if len(backbones) > 1:
        raise ModelNotFoundError(
            f"{path} holds several backbone GGUFs "
            f"({', '.join(os.path.relpath(p, path) for p in backbones)}): "
            f"choose one with --model-path {backbones[0]}")
    if decoder is None and roles[backbones[0]] == "both":
        decoder = backbones[0]
    if decoder is None:
        decoder = _decoder_beside(path, [p for p, r in roles.items() if r == "decoder"])
    return ModelFiles(path, backbones[0], _check_decoder(decoder))


def gguf_problem(directory) -> str | None:
    """None when some backbone GGUF in ``directory`` (or its subfolders, as hub repos nest
    them) has a readable decoder to go with it, else why not. Reads headers only: what
    ``list`` and ``cache`` report; ``download --verify`` loads the model to be sure."""
    from ..gguf.check import check_header
    problems = []
    for path in sorted(Path(directory).rglob("*.gguf")):
        try:
            if gguf_role(path) == "decoder":
                continue
            check_header(locate_files(path))
            return None
        except (ModelFileError, ModelNotFoundError) as e:
            problems.append(str(e))
    return "; ".join(problems) or f"{directory} holds no backbone GGUF"
