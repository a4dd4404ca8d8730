"""The Qwen3 backbone as llama.cpp's converter lays it out in a GGUF, both ways.

Names and metadata keys match ``convert_hf_to_gguf.py``'s ``qwen3`` architecture (llama.cpp's
``gguf-py`` ``constants.py``: ``MODEL_ARCH.QWEN3``), which permutes nothing for Qwen3 (NEOX
RoPE), so a tensor is the safetensors tensor under another name. ``backbone_config`` reads the
hyper-parameters back as a ``BackboneConfig``; ``backbone_metadata`` is what a writer records.
"""
import re

import numpy as np

from ..errors import ModelFileError
from ..model.config import BackboneConfig

ARCH = "qwen3"
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of a safetensors backbone tensor (None: not a backbone tensor)."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    m = _LAYER_NAME.fullmatch(hf_name)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}"
    return None


def tensor_names(gf) -> dict[str, str]:
    """Our name -> the file's, for every backbone tensor GGUF ``gf`` holds."""
    out = {}
    for layer in range(gf.get(f"{ARCH}.block_count", int)):
        for ours, theirs in _LAYER.items():
            out[f"model.layers.{layer}.{ours}"] = f"blk.{layer}.{theirs}"
    out.update(_GLOBAL)
    return {ours: theirs for ours, theirs in out.items()
            if theirs in gf.tensors or ours != "lm_head.weight"}


def backbone_config(gf) -> BackboneConfig:
    """The hyper-parameters of backbone GGUF ``gf`` (a ``GGUFFile``)."""
    arch = gf.get("general.architecture", str)
    if arch != ARCH:
        raise ModelFileError(gf.path, f"a GGUF of architecture '{arch}', expected '{ARCH}' "
                                      "(Soprano's backbone)")

    def key(name, kind=int, default=...):
        value = gf.get(f"{ARCH}.{name}", kind, default)
        # GGUF stores these as float32: 1e-6 comes back as 9.9999999747e-07. The float32's
        # shortest decimal form is the value config.json held, so the two paths compute alike.
        return float(str(np.float32(value))) if kind is float and value is not None else value

    hidden, heads = key("embedding_length"), key("attention.head_count")
    tokens = gf.get("tokenizer.ggml.tokens", list, default=None)
    vocab = key("vocab_size", default=None) or (len(tokens) if tokens else None)
    if vocab is None:
        vocab = gf.tensor("token_embd.weight").shape[0]
    for name, value in (("embedding_length", hidden), ("attention.head_count", heads)):
        if value <= 0:
            raise ModelFileError(gf.path, f"metadata key '{ARCH}.{name}' is {value}")
    return BackboneConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=key("block_count"),
        num_heads=heads,
        num_kv_heads=key("attention.head_count_kv", default=heads),
        head_dim=key("attention.key_length", default=hidden // heads),
        intermediate_size=key("feed_forward_length"),
        rms_norm_eps=key("attention.layer_norm_rms_epsilon", float),
        rope_theta=key("rope.freq_base", float, default=10000.0),
        max_positions=key("context_length", default=1024),
        eos_token_id=gf.get("tokenizer.ggml.eos_token_id", int, default=3),
    )


def add_backbone_metadata(writer, cfg: BackboneConfig) -> None:
    """Record ``cfg`` under llama.cpp's ``qwen3.*`` keys on a ``gguf.GGUFWriter``."""
    writer.add_context_length(cfg.max_positions)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
