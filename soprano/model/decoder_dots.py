"""Whether a quantized (GGUF) decoder's matrices are multiplied as bf16 on the CPU's tile unit:
one rule for the torch engine (``OpTable.decoder_matrix``) and the torch-free loader
(``soprano.lean.weights``), so the two engines decode a model with the same math.

Only quantized decoders: their audio is already ~31 dB (Q8_0) from the fp32 decoder's, while a
16-bit model's decoder matches upstream's fp32 math (``ops.bf16_dots`` says more).
``SOPRANO_DECODER_BF16=0`` keeps the fp32 math on any CPU.
"""
import os


def quantized_decoder_on_tile_unit() -> bool:
    """AMX-BF16 here (``soprano._C`` built and the OS's leave to use tile data), and not turned
    off by ``SOPRANO_DECODER_BF16=0``."""
    if os.environ.get("SOPRANO_DECODER_BF16") == "0":
        return False
    try:
        from .. import _C
    except ImportError:
        return False
    return _C.bf16_dots_available()
