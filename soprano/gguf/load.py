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
    # The step's int8 dots read Q8_0, Q4_0 and Q4_K/Q5_K fastest with 8 rows interleaved; the
    # decoder's fp32 rows have no use for it.
    source = GGUFSource(gf, names, ops, keep_quantized=True, native_layouts=True)
    return build_backbone(cfg, source, ops), tokenizer


def load_gguf_decoder(path, hidden_size: int, ops):
    """The Vocos decoder of decoder GGUF ``path``; ``ops`` is a float32 table."""
    return build_decoder(decoder_source(open_gguf(path), ops), hidden_size)
