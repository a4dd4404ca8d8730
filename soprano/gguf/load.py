"""Load a Soprano model from GGUF files: the backbone (with its config and tokenizer from the
file's metadata) and the decoder (a decoder GGUF, or the published ``decoder.pth``)."""
from ..model.loader import build_backbone, build_decoder
from .check import backbone_parts
from .decoder import decoder_source
from .file import open_gguf
from .weights import GGUFSource


def load_gguf_backbone(path, ops):
    """(backbone, tokenizer) of backbone GGUF ``path``."""
    gf = open_gguf(path)
    cfg, tokenizer, names = backbone_parts(gf)
    source = GGUFSource(gf, names, ops, keep_quantized=True)
    return build_backbone(cfg, source, ops), tokenizer


def load_gguf_decoder(path, hidden_size: int, ops):
    """The Vocos decoder of decoder GGUF ``path``; ``ops`` is a float32 table."""
    return build_decoder(decoder_source(open_gguf(path), ops), hidden_size)
