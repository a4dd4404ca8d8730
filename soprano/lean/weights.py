"""A model's weights read into numpy and handed to the native step and decoder pass.

The torch engine's loaders (``model.loader``, ``gguf.load``) build torch tensors through the
backend table on a CPU; this one builds the same bytes without torch, for ``soprano.lean``, from
a GGUF or the published safetensors and ``decoder.pth``: vectors in fp32, each backbone matrix
as stored when 16- or 32-bit, else in its blocks in the CPU kernels' x8 layout (as stored where
8 rows do not divide it), each decoder matrix as stored or in its blocks (bf16 where the tile
unit multiplies them, as ``OpTable.decoder_matrix`` decides). Tensors are read with plain file
reads, one at a time, so the peak is the weights plus one tensor. A GGUF's names, shapes and
metadata come from ``soprano.gguf`` (``backbone_parts``, ``decoder_names``).
"""
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _C
from ..errors import ModelFileError
from ..gguf import interleave
from ..gguf.check import backbone_parts
from ..gguf.decoder import decoder_names
from ..gguf.file import GGUFFile
from ..model.config import BackboneConfig
from ..model.decoder_dots import quantized_decoder_on_tile_unit
from ..model.files import load_tokenizer
from ..model.pth_file import TYPE_NAMES, StateDictFile
from ..model.rope import rope_tables
from ..model.safetensors_file import SafetensorsFile

# GGUF float types: (ggml type id, the numpy dtype holding them, the native kernels' name)
FLOAT_TYPES = {"F32": (0, np.float32, "float32"), "F16": (1, np.float16, "float16"),
               "BF16": (30, np.uint16, "bfloat16")}
BLOCK_TYPES, X8_LAYOUTS = interleave.BLOCK_TYPES, interleave.X8_LAYOUTS


ALIGN = 64  # a cache line, and an AVX-512 vector


def aligned(shape, dtype, zeros: bool = False) -> np.ndarray:
    """A new array whose data starts on a 64-byte boundary (numpy promises 16): the kernels'
    vector and tile loads then never straddle two cache lines (a Q4_K model's decoder pass took
    77 ms on 16-byte-aligned weights against 55-63 ms on torch's, Intel Xeon, 2026-12-02).

    ``zeros``: zero pages of an anonymous map, each allocated when first written, for a buffer
    written sparsely (the KV cache, a position at a time). numpy asks for huge pages for its
    arrays of 4 MB and more, so one write in each 2 MB would allocate all of it: a one-token
    step made a 9 MB cache resident."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if zeros:
        return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype, nbytes // dtype.itemsize
                             ).reshape(shape)
    buf = np.empty(nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    out = aligned(a.shape, a.dtype)
    out[...] = a
    return out


def aligned_concat(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(arrays)`` (along rows) into an ``aligned`` array."""
    shape = (sum(a.shape[0] for a in arrays), *arrays[0].shape[1:])
    return np.concatenate(arrays, out=aligned(shape, arrays[0].dtype))


@dataclass(eq=False)
class Matrix:
    """A [N, K] matmul weight as bytes ``data`` uint8 [N, row bytes] (flat where parts' rows
    differ in width), stacked by rows from
    parts of one or more types: ``runs`` (ggml type id or x8 layout id, rows) in row order;
    ``name``: the type name the decoder's kernels take (one run only)."""
    data: np.ndarray
    runs: list[tuple[int, int]]
    name: str = ""


class Reader:
    """A model file's tensors by our names, each read into an ``aligned`` array: ``_read``
    gives (bytes, stored type name) of each, ``_check`` refuses a missing or misshapen one."""
    path: Path

    def names(self):
        raise NotImplementedError

    def has(self, name: str) -> bool:
        return name in self.names()

    def shape(self, name: str) -> tuple:
        raise NotImplementedError

    def _read(self, name: str) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def _check(self, name: str, shape: tuple) -> None:
        """Raise unless tensor ``name`` is there with ``shape`` (the torch loader's messages)."""
        if not self.has(name):
            raise ModelFileError(self.path, f"tensor '{name}' is missing")
        if tuple(self.shape(name)) != tuple(shape):
            raise ModelFileError(self.path, f"tensor '{name}' has shape "
                                            f"{tuple(self.shape(name))}, expected {tuple(shape)}")

    def _tensor(self, name: str, shape: tuple) -> tuple[np.ndarray, str]:
        self._check(name, shape)
        return self._read(name)

    def floats(self, name: str, *shape) -> np.ndarray:
        """The tensor in fp32, whatever its stored type; quantized values decoded by the native
        kernel (the reference's bits, as the torch loader's)."""
        raw, type_name = self._tensor(name, shape)
        if type_name == "F32":
            return raw.view(np.float32).reshape(shape)
        if type_name == "F16":
            return aligned_copy(raw.view(np.float16).astype(np.float32).reshape(shape))
        if type_name == "BF16":
            return aligned_copy((raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                                .reshape(shape))
        return dequantize(raw, type_name, int(np.prod(shape)), "float32").reshape(shape)

    def blocks(self, name: str, *shape) -> tuple[np.ndarray, str]:
        """(the stored bytes [N, row bytes], the stored type name)."""
        raw, type_name = self._tensor(name, shape)
        return raw.reshape(shape[0], -1), type_name


class GGUFReader(Reader):
    """Tensors of one GGUF file (``names``: ours -> the file's; ``shapes``: our shape of those
    it stores reshaped)."""

    def __init__(self, gf, names: dict[str, str], shapes: dict | None = None):
        self.gf, self.path, self.by_ours, self.shapes = gf, gf.path, names, shapes or {}

    def names(self):
        return self.by_ours.keys()

    def shape(self, name: str) -> tuple:
        return self.shapes.get(name) or self.gf.tensors[self.by_ours[name]].shape

    def _check(self, name: str, shape: tuple) -> None:
        """GGUFFile.tensor's checks (type, shape up to unit dims), named as the file names."""
        if name not in self.by_ours:
            raise ModelFileError(self.path, f"tensor for '{name}' is missing")
        self.gf.tensor(self.by_ours[name], self.shapes.get(name, shape))

    def _read(self, name: str) -> tuple[np.ndarray, str]:
        t = self.gf.tensor(self.by_ours[name])
        raw = aligned(t.data.nbytes, np.uint8)
        self.gf.read_into(t, memoryview(raw))
        return raw, t.type_name


class SafetensorsReader(Reader):
    """Tensors of the published ``model.safetensors`` (F32, F16 or BF16), by their names."""

    def __init__(self, path):
        self.file = SafetensorsFile(path)
        self.path = self.file.path

    def names(self):
        return self.file.keys()

    def shape(self, name: str) -> tuple:
        return self.file.shape(name)

    def _read(self, name: str) -> tuple[np.ndarray, str]:
        type_name = self.file.dtype_name(name)
        if type_name not in FLOAT_TYPES:
            raise ModelFileError(self.path, f"tensor '{name}' has dtype {type_name}, expected "
                                            "F32, F16 or BF16")
        return self.file.read_bytes(name, aligned(self.file.nbytes(name), np.uint8)), type_name


class StateDictReader(Reader):
    """Tensors of a ``torch.save``d state dict (the published ``decoder.pth``)."""

    def __init__(self, path):
        self.file = StateDictFile(path)
        self.path = self.file.path

    def names(self):
        return self.file.tensors.keys()

    def shape(self, name: str) -> tuple:
        return self.file.tensors[name].shape

    def _read(self, name: str) -> tuple[np.ndarray, str]:
        t = self.file.tensors[name]
        if TYPE_NAMES.get(t.dtype) not in FLOAT_TYPES:
            raise ModelFileError(self.path, f"tensor '{name}' has dtype {t.dtype}, expected "
                                            "float32, float16 or bfloat16")
        raw = aligned(t.nbytes, np.uint8)
        self.file.read(name, raw)
        return raw, TYPE_NAMES[t.dtype]


def dequantize(raw: np.ndarray, type_name: str, n: int, dtype: str) -> np.ndarray:
    """``n`` values of quantized GGUF type ``type_name`` in ``raw`` -> [n] in ``dtype``
    (float32, float16, or bfloat16 as uint16), by ``_C.dequantize_cpu``."""
    import gguf
    out = aligned(n, {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype])
    raw = np.ascontiguousarray(raw)
    qtype = gguf.GGMLQuantizationType[type_name].value
    _C.dequantize_cpu(raw.ctypes.data, raw.nbytes, qtype, n, out.ctypes.data, dtype)
    return out


def backbone_matrix(reader: Reader, names: list[str], shape_of) -> Matrix:
    """Matrices stacked by rows (q|k|v, gate|up, or one): each part in its blocks' x8 layout
    when the kernels multiply its type and 8 divides its rows, else as stored when 16-bit or
    32-bit; a part of another type, or float parts beside quantized ones, in fp16 (as the torch
    loader's ``cat_rows``)."""
    parts = []
    for name in names:
        N, K = shape_of(name)
        raw, type_name = reader.blocks(name, N, K)
        parts.append((raw, type_name, N, K))
    kinds = {("float" if t in FLOAT_TYPES else "block" if t in BLOCK_TYPES else "other")
             for _, t, _, _ in parts}
    if kinds == {"float"} and len({t for _, t, _, _ in parts}) == 1:
        type_id = FLOAT_TYPES[parts[0][1]][0]
        data = aligned_concat([p[0] for p in parts])
        return Matrix(data, [(type_id, data.shape[0])], FLOAT_TYPES[parts[0][1]][2])
    if kinds == {"block"}:
        data, runs = [], []
        for raw, type_name, N, K in parts:
            qtype = BLOCK_TYPES[type_name]
            if N % 8 == 0:
                blocks = K // interleave.BLOCK_VALUES[qtype]
                raw, qtype = interleave.interleave_rows8(raw, qtype, blocks), X8_LAYOUTS[qtype]
            data.append(raw)
            runs.append((qtype, N))
        if len({q for q, _ in runs}) == 1:
            return Matrix(aligned_concat(data), [(runs[0][0], sum(n for _, n in runs))])
        return Matrix(aligned_concat([d.reshape(-1) for d in data]), runs)  # rows of 2 widths
    halves = [raw.view(np.float16) if t == "F16" else
              dequantize(raw.reshape(-1), t, N * K, "float16")
              for raw, t, N, K in parts]
    data = aligned_concat([h.reshape(N, K) for h, (_, _, N, K) in zip(halves, parts)])
    return Matrix(data.view(np.uint8), [(1, data.shape[0])], "float16")


def load_backbone(files, slots: int = 1) -> "LeanBackbone":
    """The backbone of ``files`` (a ``locate.ModelFiles``): a GGUF, or the published layout's
    config.json, tokenizer.json and model.safetensors."""
    if files.is_gguf:
        gf = GGUFFile(files.backbone)  # its own copy, not open_gguf's: its metadata is dropped
        cfg, tokenizer, names = backbone_parts(gf)
        gf.drop_metadata()
        return LeanBackbone(cfg, tokenizer, GGUFReader(gf, names), slots)
    cfg = BackboneConfig.from_json(files.root / "config.json")
    return LeanBackbone(cfg, load_tokenizer(files.root),
                        SafetensorsReader(files.root / "model.safetensors"), slots)


class LeanBackbone:
    """A backbone's weights (``reader``'s tensors, by the published names) and its native step
    (``_C.Qwen3StepCpu``) over a KV cache of ``slots`` slots and ``max_len`` positions."""

    def __init__(self, cfg: BackboneConfig, tokenizer, reader: Reader, slots: int = 1,
                 max_len: int | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        H, D, I = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        q_out, kv_out = cfg.num_heads * D, cfg.num_kv_heads * D
        shapes = {"q_proj": (q_out, H), "k_proj": (kv_out, H), "v_proj": (kv_out, H),
                  "o_proj": (H, q_out), "gate_proj": (I, H), "up_proj": (I, H),
                  "down_proj": (H, I)}

        def shape_of(name):
            if name.startswith("model.layers."):
                return shapes[name.split(".")[-2]]
            return (cfg.vocab_size, H)
        self.matrices, layers, self._vectors = [], [], []

        def vector(name, *shape):
            v = reader.floats(name, *shape)
            self._vectors.append(v)
            return v.ctypes.data

        def matrix(*names):
            m = backbone_matrix(reader, list(names), shape_of)
            self.matrices.append(m)
            return m.data.ctypes.data
        head = "lm_head.weight" if reader.has("lm_head.weight") else "model.embed_tokens.weight"
        lm_head = matrix(head)
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            layers.append((
                vector(p + "input_layernorm.weight", H),
                matrix(*(p + f"self_attn.{x}_proj.weight" for x in "qkv")),
                vector(p + "self_attn.q_norm.weight", D), vector(p + "self_attn.k_norm.weight", D),
                matrix(p + "self_attn.o_proj.weight"),
                vector(p + "post_attention_layernorm.weight", H),
                matrix(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                matrix(p + "mlp.down_proj.weight")))
        embed = vector("model.embed_tokens.weight", cfg.vocab_size, H)
        final_norm = vector("model.norm.weight", H)
        self.max_len = max_len or cfg.max_positions
        cos, sin = (aligned_copy(t) for t in rope_tables(cfg, max(self.max_len, 1)))
        self._vectors += [cos, sin]
        cache = (cfg.num_layers, slots, cfg.num_kv_heads, self.max_len, D)
        self.k_cache = aligned(cache, np.float32, zeros=True)
        self.v_cache = aligned(cache, np.float32, zeros=True)
        self.slots = slots
        self.native = _C.Qwen3StepCpu(
            H, cfg.num_heads, cfg.num_kv_heads, D, I, cfg.vocab_size, cos.shape[0],
            cfg.rms_norm_eps, [m.runs for m in self.matrices], embed, final_norm, lm_head,
            cos.ctypes.data, sin.ctypes.data, layers, self.k_cache.ctypes.data,
            self.v_cache.ctypes.data, slots, self.max_len)

    @property
    def matrix_bytes(self) -> int:
        return sum(m.data.nbytes for m in self.matrices)


def _decoder_matrix(reader: Reader, name: str, shape: tuple, head: bool) -> Matrix:
    """A decoder matrix as the torch loader gives its CPU kernels: blocks kept (bf16 for the
    tile unit's dots where ``model.decoder_dots`` says so), the head's blocks in fp16 without a
    tile unit, other quantized types in fp16, floats as stored."""
    raw, type_name = reader.blocks(name, *shape)
    n = shape[0] * shape[1]
    if type_name in FLOAT_TYPES:
        return Matrix(raw, [], FLOAT_TYPES[type_name][2])
    if type_name in BLOCK_TYPES:
        if quantized_decoder_on_tile_unit():
            return Matrix(dequantize(raw, type_name, n, "bfloat16").view(np.uint8), [],
                          "bfloat16_dots")
        if not head:
            return Matrix(raw, [], type_name)
    return Matrix(dequantize(raw, type_name, n, "float16").view(np.uint8), [], "float16")


def decoder_reader(path) -> Reader:
    """The tensors of a decoder file, a GGUF (any of ``gguf.decoder``'s layouts) or the
    published ``decoder.pth``, by the ``decoder.pth`` names."""
    if Path(path).suffix.lower() != ".gguf":
        return StateDictReader(path)
    gf = GGUFFile(path)
    names = decoder_names(gf)
    embed = names.get("decoder.embed.weight")
    shapes = {}
    if embed is not None and len(gf.tensors[embed].shape) == 2:  # llama.cpp's squeeze
        shapes["decoder.embed.weight"] = gf.tensors[embed].shape + (1,)
    return GGUFReader(gf, names, shapes)


class LeanDecoderWeights:
    """A decoder's weights (``reader``'s tensors, by the ``decoder.pth`` names) and its native
    pass (``_C.VocosLayersCpu``), for backbone states of ``hidden_size``."""

    def __init__(self, reader: Reader, hidden_size: int, eps: float = 1e-6):
        names = list(reader.names())
        if not reader.has("decoder.embed.weight") or len(
                reader.shape("decoder.embed.weight")) != 3:
            raise ModelFileError(reader.path, "tensor 'decoder.embed.weight' [D, C, k] is "
                                              "missing or not 3-D")
        embed = reader.shape("decoder.embed.weight")
        D, k = embed[0], embed[2]
        if embed[1] != hidden_size:
            raise ModelFileError(reader.path, f"this decoder takes hidden states of size "
                                              f"{embed[1]} but the backbone gives {hidden_size}: "
                                              "they are not one model")
        n_blocks = len({n.split(".")[2] for n in names if n.startswith("decoder.convnext.")})
        if not reader.has("head.out.weight"):
            raise ModelFileError(reader.path, "tensor 'head.out.weight' is missing")
        head_rows = reader.shape("head.out.weight")[0]
        self.n_fft = head_rows - 2
        keep = []

        def vec(name, *shape):
            v = reader.floats(name, *shape)
            keep.append(v)
            return v.ctypes.data

        def mat(name, *shape, head=False):
            m = _decoder_matrix(reader, name, shape, head)
            keep.append(m.data)
            return m.data.ctypes.data, m.name
        blocks = []
        for i in range(n_blocks):
            p = f"decoder.convnext.{i}."
            dw = reader.floats(p + "dwconv.weight", D, 1, 3)
            keep.append(dw)
            w1, w1_type = mat(p + "pwconv1.weight", 3 * D, D)
            w2, w2_type = mat(p + "pwconv2.weight", D, 3 * D)
            blocks.append((dw.shape[-1], dw.ctypes.data, vec(p + "dwconv.bias", D),
                           vec(p + "norm.weight", D), vec(p + "norm.bias", D), w1,
                           vec(p + "pwconv1.bias", 3 * D), w2, vec(p + "pwconv2.bias", D),
                           vec(p + "gamma", D), w1_type, w2_type))
        head, head_type = mat("head.out.weight", head_rows, D, head=True)
        self.window = (reader.floats("head.istft.window", self.n_fft)
                       if reader.has("head.istft.window") else hann_window(self.n_fft))
        self.radii = [k // 2] + [b[0] // 2 for b in blocks]
        self.input_channels, self.head_rows = embed[1], head_rows
        self._keep = keep
        self.native = _C.VocosLayersCpu(
            embed[1], D, k, vec("decoder.embed.weight", D, embed[1], k), "float32",
            vec("decoder.embed.bias", D), vec("decoder.norm.weight", D),
            vec("decoder.norm.bias", D), blocks, vec("decoder.final_layer_norm.weight", D),
            vec("decoder.final_layer_norm.bias", D), head, head_type, head_rows,
            vec("head.out.bias", head_rows), eps)


def hann_window(n: int) -> np.ndarray:
    """The periodic Hann window [n] fp32 (torch.hann_window's default)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
