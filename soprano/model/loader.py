"""Load a Soprano model into our model classes (``resolve`` finds it: a directory or hub id).

Published layout: ``config.json``, ``model.safetensors`` (Qwen3 backbone), ``tokenizer.json``,
``decoder.pth`` (Vocos state dict, fp16 or fp32). Every tensor is checked against the shape the
config (or, for the decoder, the embed weight) implies, and any problem is reported with the
file and tensor at fault. Nothing is unpickled beyond ``torch.load(weights_only=True)``.
Out of scope: GGUF files (``soprano.gguf.load``).
"""
from pathlib import Path

import torch

from ..errors import ModelFileError
from .config import BackboneConfig
from .files import load_tokenizer
from ..ops import OpTable
from ..ops.quantized import QuantMatrix, cat_rows
from ..ops.weights import Qwen3LayerWeights, Qwen3Weights
from .qwen3 import Qwen3Backbone, rope_tables
from .safetensors_file import SafetensorsFile
from .vocos import ConvNeXtWeights, VocosDecoder, VocosWeights


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ModelFileError(path, "file is missing")
    return path


def _take(tensors: dict, path: Path, name: str, shape: tuple) -> torch.Tensor:
    if name not in tensors:
        raise ModelFileError(path, f"tensor '{name}' is missing")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape):
        raise ModelFileError(path, f"tensor '{name}' has shape {tuple(t.shape)}, "
                                   f"expected {tuple(shape)}")
    if not t.is_floating_point():
        raise ModelFileError(path, f"tensor '{name}' has non-float dtype {t.dtype}")
    return t


def read_safetensors(path: Path) -> SafetensorsFile:
    """``path``'s tensors by name, each read when looked up (see safetensors_file)."""
    return SafetensorsFile(_require(path))


def matmul_dtype(stored: torch.dtype, ops: OpTable) -> torch.dtype:
    """Keep matmul weights in their stored dtype where a kernel multiplies them natively (a
    decode step streams every weight, so 16-bit weights nearly halve it); else convert to the
    activations' dtype."""
    return stored if ops.native_weight_dtype(stored) else ops.dtype


class StateDictSource:
    """Tensors of a safetensors file or a ``decoder.pth`` state dict, by their own names: the
    source the builders below read, as ``soprano.gguf.weights.GGUFSource`` is for GGUF."""

    def __init__(self, tensors: dict, path: Path, ops: OpTable):
        self.tensors, self.path, self.ops = tensors, path, ops

    def names(self):
        return self.tensors.keys()

    def shape(self, name: str) -> tuple | None:
        if isinstance(self.tensors, SafetensorsFile):  # from its header, without reading it
            return self.tensors.shape(name)
        t = self.tensors.get(name)
        return tuple(t.shape) if t is not None else None

    def vector(self, name: str, *shape, dtype=None) -> torch.Tensor:
        """A tensor used as is (norms, biases, embeddings), in ``dtype`` or the ops' dtype."""
        return _take(self.tensors, self.path, name, shape).to(device=self.ops.device,
                                                              dtype=dtype or self.ops.dtype)

    def matrix(self, name: str, *shape) -> torch.Tensor:
        """A matmul weight, kept in its stored dtype where the ops multiply that natively."""
        t = _take(self.tensors, self.path, name, shape)
        return t.to(device=self.ops.device, dtype=matmul_dtype(t.dtype, self.ops))


def load_backbone(model_dir: Path, ops: OpTable) -> Qwen3Backbone:
    cfg = BackboneConfig.from_json(_require(model_dir / "config.json"))
    path = model_dir / "model.safetensors"
    return build_backbone(cfg, StateDictSource(read_safetensors(path), path, ops), ops)


def build_backbone(cfg: BackboneConfig, src, ops: OpTable) -> Qwen3Backbone:
    """The backbone from ``src``'s tensors, named as in the published safetensors."""
    H, D, I = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q_out, kv_out = cfg.num_heads * D, cfg.num_kv_heads * D
    take, take_matrix = src.vector, src.matrix
    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        layers.append(Qwen3LayerWeights(
            attn_norm=take(p + "input_layernorm.weight", H),
            wqkv=cat_rows([take_matrix(p + "self_attn.q_proj.weight", q_out, H),
                           take_matrix(p + "self_attn.k_proj.weight", kv_out, H),
                           take_matrix(p + "self_attn.v_proj.weight", kv_out, H)], ops),
            q_norm=take(p + "self_attn.q_norm.weight", D),
            k_norm=take(p + "self_attn.k_norm.weight", D),
            wo=take_matrix(p + "self_attn.o_proj.weight", H, q_out),
            ffn_norm=take(p + "post_attention_layernorm.weight", H),
            w_gate_up=cat_rows([take_matrix(p + "mlp.gate_proj.weight", I, H),
                                take_matrix(p + "mlp.up_proj.weight", I, H)], ops),
            w_down=take_matrix(p + "mlp.down_proj.weight", H, I),
        ))
    embed = take("model.embed_tokens.weight", cfg.vocab_size, H)
    lm_head = take_matrix("lm_head.weight" if src.shape("lm_head.weight") is not None
                          else "model.embed_tokens.weight", cfg.vocab_size, H)
    cos, sin = rope_tables(cfg, cfg.max_positions, ops.device)
    weights = Qwen3Weights(hidden=H, heads=cfg.num_heads, kv_heads=cfg.num_kv_heads, head_dim=D,
                           intermediate=I, vocab=cfg.vocab_size, eps=cfg.rms_norm_eps,
                           embed=embed, final_norm=take("model.norm.weight", H),
                           lm_head=lm_head, cos=cos, sin=sin, layers=layers)
    return Qwen3Backbone(cfg, weights, ops)


def read_decoder_pth(path: Path) -> dict:
    try:
        sd = torch.load(str(_require(path)), map_location="cpu", weights_only=True)
    except ModelFileError:
        raise
    except Exception as e:  # torch raises several types for truncated/unsafe pickles
        raise ModelFileError(path, f"not a readable decoder state dict ({e})") from e
    if not isinstance(sd, dict):
        raise ModelFileError(path, f"expected a state dict, found {type(sd).__name__}")
    return sd


def load_decoder(model_dir: Path, hidden_size: int, ops: OpTable) -> VocosDecoder:
    """The Vocos decoder of ``model_dir``'s ``decoder.pth``; ``ops`` is a float32 table on its
    device."""
    return load_decoder_pth(model_dir / "decoder.pth", hidden_size, ops)


def load_decoder_pth(path: Path, hidden_size: int, ops: OpTable) -> VocosDecoder:
    """The Vocos decoder of state-dict file ``path``."""
    return build_decoder(StateDictSource(read_decoder_pth(path), path, ops), hidden_size)


def build_decoder(src, hidden_size: int) -> VocosDecoder:
    """The decoder from ``src``'s tensors, named as in the published ``decoder.pth``; its
    dimensions (width, embed kernel, blocks, FFT size) come from the tensors' shapes."""
    ops, path = src.ops, src.path
    embed = src.shape("decoder.embed.weight")
    if embed is None or len(embed) != 3:
        raise ModelFileError(path, "tensor 'decoder.embed.weight' [D, C, k] is missing or not 3-D")
    D, k = embed[0], embed[2]
    if embed[1] != hidden_size:
        raise ModelFileError(path, f"this decoder takes hidden states of size {embed[1]} but "
                                   f"the backbone gives {hidden_size}: they are not one model")
    n_blocks = len({key.split(".")[2] for key in src.names()
                    if key.startswith("decoder.convnext.")})
    if n_blocks == 0:
        raise ModelFileError(path, "no 'decoder.convnext.N.*' tensors found")
    head = src.shape("head.out.weight")
    if head is None or len(head) != 2:
        raise ModelFileError(path, "tensor 'head.out.weight' [n_fft + 2, D] is missing or not 2-D")
    n_fft = head[0] - 2

    def take(name, *shape):
        return src.vector(name, *shape, dtype=torch.float32)

    def take_matrix(name, *shape):
        return ops.decoder_matrix(src.matrix(name, *shape))

    blocks = [ConvNeXtWeights(
        dw_weight=take(f"decoder.convnext.{i}.dwconv.weight", D, 1, 3),
        dw_bias=take(f"decoder.convnext.{i}.dwconv.bias", D),
        norm_weight=take(f"decoder.convnext.{i}.norm.weight", D),
        norm_bias=take(f"decoder.convnext.{i}.norm.bias", D),
        w1=take_matrix(f"decoder.convnext.{i}.pwconv1.weight", 3 * D, D),
        b1=take(f"decoder.convnext.{i}.pwconv1.bias", 3 * D),
        w2=take_matrix(f"decoder.convnext.{i}.pwconv2.weight", D, 3 * D),
        b2=take(f"decoder.convnext.{i}.pwconv2.bias", D),
        gamma=take(f"decoder.convnext.{i}.gamma", D),
    ) for i in range(n_blocks)]
    window = (take("head.istft.window", n_fft) if src.shape("head.istft.window") is not None
              else torch.hann_window(n_fft, device=ops.device))
    # The head stays in floats even where the blocks' matrices keep their GGUF blocks: its
    # table multiplies blocks with int8 activations, and rounding the input of log-magnitude and
    # phase is heard (~40 dB under the signal). It is 3% of the decoder's weights. bf16 dots
    # (where the blocks take them) round that input far less: 47 dB, 0.2 of a Q8_0 model's 33.
    head = take_matrix("head.out.weight", n_fft + 2, D)
    if isinstance(head, QuantMatrix):
        head = head.dequantized(torch.float16, ops)
    return VocosDecoder(VocosWeights(
        embed_weight=take("decoder.embed.weight", D, hidden_size, k),
        embed_bias=take("decoder.embed.bias", D),
        norm_weight=take("decoder.norm.weight", D),
        norm_bias=take("decoder.norm.bias", D),
        blocks=blocks,
        final_norm_weight=take("decoder.final_layer_norm.weight", D),
        final_norm_bias=take("decoder.final_layer_norm.bias", D),
        head_weight=head,
        head_bias=take("head.out.bias", n_fft + 2),
        window=window,
    ), ops)


def load_model(files, ops: OpTable, decoder_ops: OpTable):
    """(backbone, decoder, tokenizer) of ``files`` (a ``locate.ModelFiles``); ``decoder_ops``
    is the decoder's float32 table."""
    try:
        if files.is_gguf:
            from ..gguf.load import load_gguf_backbone
            backbone, tokenizer = load_gguf_backbone(files.backbone, ops)
        else:
            backbone = load_backbone(files.root, ops)
            tokenizer = load_tokenizer(files.root)
        hidden = backbone.cfg.hidden_size
        if files.decoder.suffix.lower() == ".gguf":
            from ..gguf.load import load_gguf_decoder
            decoder = load_gguf_decoder(files.decoder, hidden, decoder_ops)
        else:
            decoder = load_decoder_pth(files.decoder, hidden, decoder_ops)
    finally:
        from ..gguf.file import close_gguf_files
        close_gguf_files()
    return backbone, decoder, tokenizer
