"""A GGUF file's tensors under our (safetensors / ``decoder.pth``) names, as torch tensors.

``GGUFSource`` is to a GGUF what ``soprano.model.loader.StateDictSource`` is to a state dict:
the loader's builders ask it for vectors and matrices by our names and shapes. Float tensors
are taken as stored. A quantized matrix stays in its blocks (a ``QuantMatrix``) when the source is
told to keep them and the backend table multiplies that type (``native_quant_type``: the CPU
backbone, and the CPU decoder, ``keeps_decoder_blocks``); otherwise quantized tensors are
dequantized once, on the model's device, by the table's ``dequantize``: matrices to a 16-bit type
the ops multiply natively (fp16 holds every Q8_0/Q4_x/Q5_x/K-quant value of a weight more closely
than bf16), else to the compute dtype.
"""
import torch

from ..errors import ModelFileError
from ..model.loader import matmul_dtype
from ..ops.quantized import QuantMatrix

_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _copied(gf, t, dtype: torch.dtype) -> torch.Tensor:
    """Tensor ``t``'s bytes read once, straight into a tensor torch allocated (torch wants
    writable memory and the map is read-only)."""
    out = torch.empty(t.data.nbytes, dtype=torch.uint8)
    gf.read_into(t, memoryview(out.numpy()))
    return out.view(dtype)


class GGUFSource:
    """Tensors of GGUF file ``gf`` (a ``GGUFFile``); ``names`` maps each of our names to the
    file's, ``shapes`` gives our torch shape of tensors the file stores reshaped (ggml drops
    trailing unit dimensions, e.g. llama.cpp's squeezed [D, C] decoder embed).
    ``native_layouts``: kept matrices take the table's layout (``OpTable.native_layout``)."""

    def __init__(self, gf, names: dict[str, str], ops, shapes: dict | None = None,
                 keep_quantized: bool = False, native_layouts: bool = False):
        self.gf, self.path, self.ops = gf, gf.path, ops
        self.by_ours = names
        self.shapes = shapes or {}
        self.keep_quantized = keep_quantized
        self.native_layouts = native_layouts

    def names(self):
        return self.by_ours.keys()

    def shape(self, name: str) -> tuple | None:
        if name not in self.by_ours:
            return None
        return self.shapes.get(name) or self.gf.tensor(self.by_ours[name]).shape

    def _load(self, name: str, shape: tuple, quantized_dtype: torch.dtype | None):
        """The tensor as floats; a quantized one in ``quantized_dtype``, or as a QuantMatrix
        when that is None and the table multiplies its type."""
        if name not in self.by_ours:
            raise ModelFileError(self.path, f"tensor for '{name}' is missing")
        t = self.gf.tensor(self.by_ours[name], shape)
        if t.type_name in _FLOAT_TYPES:
            out = _copied(self.gf, t, _FLOAT_TYPES[t.type_name])
            return out.reshape(shape).to(self.ops.device)
        import gguf
        raw = _copied(self.gf, t, torch.uint8).reshape(-1).to(self.ops.device)
        qtype = gguf.GGMLQuantizationType[t.type_name].value
        if quantized_dtype is None and self.ops.native_quant_type(qtype):
            m = QuantMatrix(raw.reshape(shape[0], -1), qtype, tuple(shape))
            return self.ops.native_layout(m) if self.native_layouts else m
        return self.ops.dequantize(raw, qtype, t.numel,
                                   quantized_dtype or self._half()).reshape(shape)

    def vector(self, name: str, *shape, dtype=None) -> torch.Tensor:
        dtype = dtype or self.ops.dtype
        return self._load(name, shape, dtype).to(dtype)

    def matrix(self, name: str, *shape):
        """A matmul weight: a QuantMatrix (see the module's docstring) or a float tensor."""
        t = self._load(name, shape, None if self.keep_quantized else self._half())
        return t if isinstance(t, QuantMatrix) else t.to(matmul_dtype(t.dtype, self.ops))

    def _half(self) -> torch.dtype:
        return torch.float16 if self.ops.native_weight_dtype(torch.float16) else self.ops.dtype
