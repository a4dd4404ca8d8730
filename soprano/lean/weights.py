"""A GGUF model's weights read into numpy and handed to the native step and decoder pass.

The torch engine's loader (``soprano.gguf.load``) builds torch tensors through the backend
table; this one builds the same bytes without torch, for ``soprano.lean``: vectors in fp32,
each backbone matrix kept in its blocks in the CPU kernels' x8 layout (or as stored: 16-bit,
or 8 rows do not divide it), each decoder matrix in its blocks (bf16 where the tile unit
multiplies them, as ``OpTable.decoder_matrix`` decides). Tensors are read with plain file
reads, one at a time, so the peak is the weights plus one tensor. Names, shapes and metadata
come from ``soprano.gguf`` (``backbone_parts``, ``decoder_names``), which read no tensor data.
"""
import os
from dataclasses import dataclass

import numpy as np

from .. import _C
from ..errors import ModelFileError
from ..gguf import interleave
from ..gguf.check import backbone_parts
from ..gguf.decoder import decoder_names
from ..gguf.file import GGUFFile
from ..model.config import BackboneConfig

# GGUF float types: (ggml type id, the numpy dtype holding them, the native kernels' name)
FLOAT_TYPES = {"F32": (0, np.float32, "float32"), "F16": (1, np.float16, "float16"),
               "BF16": (30, np.uint16, "bfloat16")}
BLOCK_TYPES, X8_LAYOUTS = interleave.BLOCK_TYPES, interleave.X8_LAYOUTS


@dataclass(eq=False)
class Matrix:
    """A [N, K] matmul weight as bytes ``data`` uint8 [N, row bytes] (flat where parts' rows
    differ in width), stacked by rows from
    parts of one or more types: ``runs`` (ggml type id or x8 layout id, rows) in row order;
    ``name``: the type name the decoder's kernels take (one run only)."""
    data: np.ndarray
    runs: list[tuple[int, int]]
    name: str = ""


class TensorReader:
    """Tensors of one GGUF file by our names (``names``: ours -> the file's)."""

    def __init__(self, gf, names: dict[str, str], shapes: dict | None = None):
        self.gf, self.names, self.shapes = gf, names, shapes or {}

    def has(self, name: str) -> bool:
        return name in self.names

    def _tensor(self, name: str, shape: tuple):
        if name not in self.names:
            raise ModelFileError(self.gf.path, f"tensor for '{name}' is missing")
        t = self.gf.tensor(self.names[name], self.shapes.get(name, shape))
        raw = np.empty(t.data.nbytes, np.uint8)
        self.gf.read_into(t, memoryview(raw))
        return t, raw

    def floats(self, name: str, *shape) -> np.ndarray:
        """The tensor in fp32, whatever its stored type; quantized values decoded by the native
        kernel (the reference's bits, as the torch loader's)."""
        t, raw = self._tensor(name, shape)
        if t.type_name == "F32":
            return raw.view(np.float32).reshape(shape)
        if t.type_name == "F16":
            return raw.view(np.float16).astype(np.float32).reshape(shape)
        if t.type_name == "BF16":
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return dequantize(raw, t.type_name, t.numel, "float32").reshape(shape)

    def blocks(self, name: str, *shape) -> tuple[np.ndarray, str]:
        """(the stored bytes [N, row bytes], the stored type name)."""
        t, raw = self._tensor(name, shape)
        return raw.reshape(shape[0], -1), t.type_name


def dequantize(raw: np.ndarray, type_name: str, n: int, dtype: str) -> np.ndarray:
    """``n`` values of quantized GGUF type ``type_name`` in ``raw`` -> [n] in ``dtype``
    (float32, float16, or bfloat16 as uint16), by ``_C.dequantize_cpu``."""
    import gguf
    out = np.empty(n, {"float32": np.float32, "float16": np.float16,
                       "bfloat16": np.uint16}[dtype])
    raw = np.ascontiguousarray(raw)
    qtype = gguf.GGMLQuantizationType[type_name].value
    _C.dequantize_cpu(raw.ctypes.data, raw.nbytes, qtype, n, out.ctypes.data, dtype)
    return out


def backbone_matrix(reader: TensorReader, names: list[str], shape_of) -> Matrix:
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
        data = np.concatenate([p[0] for p in parts])
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
            return Matrix(np.concatenate(data), [(runs[0][0], sum(n for _, n in runs))])
        return Matrix(np.concatenate([d.reshape(-1) for d in data]), runs)  # rows of 2 widths
    halves = [raw.view(np.float16) if t == "F16" else
              dequantize(raw.reshape(-1), t, N * K, "float16")
              for raw, t, N, K in parts]
    data = np.concatenate([h.reshape(N, K) for h, (_, _, N, K) in zip(halves, parts)])
    return Matrix(data.view(np.uint8), [(1, data.shape[0])], "float16")


def rope_tables(cfg: BackboneConfig, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [rows, D] fp32 in the half-split layout, each the float64 value rounded once
    (torch's fp32 pow and cos, the torch engine's tables, differ from these in the last bit
    of ~10% of entries)."""
    exponent = np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim
    angles = np.arange(rows, dtype=np.float64)[:, None] / cfg.rope_theta ** exponent[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class LeanBackbone:
    """A GGUF backbone's weights and its native step (``_C.Qwen3StepCpu``) over a KV cache of
    ``slots`` slots and ``max_len`` positions."""

    def __init__(self, path, slots: int = 1, max_len: int | None = None):
        gf = GGUFFile(path)  # its own copy, not open_gguf's shared one: its metadata is dropped
        self.cfg, self.tokenizer, names = backbone_parts(gf)
        gf.drop_metadata()
        cfg = self.cfg
        H, D, I = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        q_out, kv_out = cfg.num_heads * D, cfg.num_kv_heads * D
        shapes = {"q_proj": (q_out, H), "k_proj": (kv_out, H), "v_proj": (kv_out, H),
                  "o_proj": (H, q_out), "gate_proj": (I, H), "up_proj": (I, H),
                  "down_proj": (H, I)}
        reader = TensorReader(gf, names)

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
        cos, sin = rope_tables(cfg, max(self.max_len, 1))
        self._vectors += [cos, sin]
        cache = (cfg.num_layers, slots, cfg.num_kv_heads, self.max_len, D)
        self.k_cache, self.v_cache = np.zeros(cache, np.float32), np.zeros(cache, np.float32)
        self.slots = slots
        self.native = _C.Qwen3StepCpu(
            H, cfg.num_heads, cfg.num_kv_heads, D, I, cfg.vocab_size, cos.shape[0],
            cfg.rms_norm_eps, [m.runs for m in self.matrices], embed, final_norm, lm_head,
            cos.ctypes.data, sin.ctypes.data, layers, self.k_cache.ctypes.data,
            self.v_cache.ctypes.data, slots, self.max_len)

    @property
    def matrix_bytes(self) -> int:
        return sum(m.data.nbytes for m in self.matrices)


def _decoder_matrix(reader: TensorReader, name: str, shape: tuple, head: bool) -> Matrix:
    """A decoder matrix as the torch loader gives its CPU kernels: blocks kept (bf16 for the
    tile unit's dots where the CPU has one, unless SOPRANO_DECODER_BF16=0), the head's blocks
    in fp16 without a tile unit, other quantized types in fp16, floats as stored."""
    raw, type_name = reader.blocks(name, *shape)
    n = shape[0] * shape[1]
    if type_name in FLOAT_TYPES:
        return Matrix(raw, [], FLOAT_TYPES[type_name][2])
    if type_name in BLOCK_TYPES:
        if _C.bf16_dots_available() and os.environ.get("SOPRANO_DECODER_BF16") != "0":
            return Matrix(dequantize(raw, type_name, n, "bfloat16").view(np.uint8), [],
                          "bfloat16_dots")
        if not head:
            return Matrix(raw, [], type_name)
    return Matrix(dequantize(raw, type_name, n, "float16").view(np.uint8), [], "float16")


class LeanDecoderWeights:
    """A decoder GGUF's weights and its native pass (``_C.VocosLayersCpu``), for backbone
    states of ``hidden_size``."""

    def __init__(self, path, hidden_size: int, eps: float = 1e-6):
        gf = GGUFFile(path)
        names = decoder_names(gf)
        embed = gf.tensors[names["decoder.embed.weight"]].shape
        D = embed[0]
        k = embed[2] if len(embed) == 3 else 1
        shapes = {"decoder.embed.weight": (D, embed[1], k)}
        if embed[1] != hidden_size:
            raise ModelFileError(gf.path, f"this decoder takes hidden states of size {embed[1]} "
                                          f"but the backbone gives {hidden_size}: they are not "
                                          "one model")
        reader = TensorReader(gf, names, shapes)
        n_blocks = len({n.split(".")[2] for n in names if n.startswith("decoder.convnext.")})
        head_rows = gf.tensors[names["head.out.weight"]].shape[0]
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
