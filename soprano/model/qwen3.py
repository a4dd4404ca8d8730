"""Qwen3 causal-LM backbone of Soprano, written against ``soprano.ops`` with a static KV cache.

Two entry points: ``prefill`` (one prompt into one cache slot) and ``decode`` (one token for
each of the first B slots, fixed shapes so it can be captured in a CUDA graph). Both return the
last layer's output after the final RMSNorm (the decoder's input) and the LM logits.
Weights are fused at load (q|k|v and gate|up) so each step reads them in as few matmuls as the
math allows. Out of scope: loading files (``loader.py``), sampling, the generation loop.
"""
import math
import mmap
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from .config import BackboneConfig


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor   # [H]
    wqkv: torch.Tensor        # [(NH + 2 KVH) * D, H]
    q_norm: torch.Tensor      # [D]
    k_norm: torch.Tensor      # [D]
    wo: torch.Tensor          # [H, NH * D]
    ffn_norm: torch.Tensor    # [H]
    w_gate_up: torch.Tensor   # [2 I, H]
    w_down: torch.Tensor      # [H, I]


def _zeros(shape, dtype, device) -> torch.Tensor:
    """Zeros; on CPU in an anonymous mapping without huge pages, so the OS maps 4 KB pages of
    zeros only where they are first written: a cache of 16 slots x 1024 positions (285 MB in
    fp32) costs resident memory only for the positions sentences actually reach."""
    if torch.device(device).type != "cpu" or dtype != torch.float32:
        return torch.zeros(shape, dtype=dtype, device=device)
    memory = mmap.mmap(-1, math.prod(shape) * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # a 2 MB page spans 4 slots' worth of one layer
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.from_numpy(np.frombuffer(memory, np.float32).reshape(shape))


class KVCache:
    """Keys and values for every layer, allocated once: [layers, slots, KVH, max_len, D]."""

    def __init__(self, cfg: BackboneConfig, slots: int, max_len: int, dtype, device):
        shape = (cfg.num_layers, slots, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k = _zeros(shape, dtype, device)
        self.v = _zeros(shape, dtype, device)
        self.slots = slots
        self.max_len = max_len
        self.fused_step = None  # set on first decode: ops.fused_decode_step or False


def rope_tables(cfg: BackboneConfig, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_len, D] in fp32, half-split layout (angles repeated for both halves)."""
    exponent = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).float()
    inv_freq = 1.0 / (cfg.rope_theta ** (exponent / cfg.head_dim))
    angles = torch.arange(max_len, device=device).float()[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


class Qwen3Backbone:
    def __init__(self, cfg: BackboneConfig, embed: torch.Tensor, layers: list[LayerWeights],
                 final_norm: torch.Tensor, lm_head: torch.Tensor):
        self.cfg = cfg
        self.embed = embed
        self.layers = layers
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.dtype = embed.dtype
        self.device = embed.device
        self.cos, self.sin = rope_tables(cfg, cfg.max_positions, self.device)

    def new_cache(self, slots: int, max_len: int | None = None) -> KVCache:
        return KVCache(self.cfg, slots, max_len or self.cfg.max_positions, self.dtype, self.device)

    def _split_qkv(self, qkv: torch.Tensor):
        """[B, T, (NH+2KVH)D] -> q [B, NH, T, D], k and v [B, KVH, T, D]."""
        c = self.cfg
        B, T, _ = qkv.shape
        q, k, v = qkv.split([c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim,
                             c.num_kv_heads * c.head_dim], dim=-1)
        q = q.view(B, T, c.num_heads, c.head_dim).transpose(1, 2)
        k = k.view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = v.view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        return q, k, v

    def _mlp(self, x: torch.Tensor, lw: LayerWeights) -> torch.Tensor:
        h = ops.rms_norm(x, lw.ffn_norm, self.cfg.rms_norm_eps)
        gate, up = ops.linear(h, lw.w_gate_up).chunk(2, dim=-1)
        return x + ops.linear(F.silu(gate) * up, lw.w_down)

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = ops.rms_norm(x, self.final_norm, self.cfg.rms_norm_eps)
        return hidden, ops.linear(hidden, self.lm_head)

    def fused_step(self, cache: KVCache):
        """``ops.fused_decode_step`` for this backbone over ``cache`` (made once), or None."""
        if cache.fused_step is None:
            cache.fused_step = ops.fused_decode_step(self, cache) or False
        return cache.fused_step or None

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache: KVCache, slot: int):
        """ids [T] (long) written at positions 0..T-1 of ``slot``.

        Returns (hidden [H], logits [V]) at the last position. Runs as one fused native call
        where ``ops`` has one.
        """
        fused = self.fused_step(cache)
        if fused:
            T = ids.shape[0]
            hidden, logits = fused(ids, torch.arange(T), torch.full((T,), slot), last_only=True)
            return hidden[0], logits[0]
        return self.prefill_ops(ids, cache, slot)

    @torch.inference_mode()
    def prefill_ops(self, ids: torch.Tensor, cache: KVCache, slot: int):
        """``prefill`` op by op through ``soprano.ops``: the fused prefill's reference."""
        c = self.cfg
        T = ids.shape[0]
        x = F.embedding(ids, self.embed)[None]
        cos, sin = self.cos[:T], self.sin[:T]
        for i, lw in enumerate(self.layers):
            h = ops.rms_norm(x, lw.attn_norm, c.rms_norm_eps)
            q, k, v = self._split_qkv(ops.linear(h, lw.wqkv))
            q = ops.qk_norm_rope(q, lw.q_norm, cos, sin, c.rms_norm_eps)
            k = ops.qk_norm_rope(k, lw.k_norm, cos, sin, c.rms_norm_eps)
            cache.k[i, slot, :, :T] = k[0]
            cache.v[i, slot, :, :T] = v[0]
            attn = ops.attention(q, k, v, causal=True)
            x = x + ops.linear(attn.transpose(1, 2).reshape(1, T, -1), lw.wo)
            x = self._mlp(x, lw)
        hidden, logits = self._head(x[0, -1])
        return hidden, logits

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, kv_len: int,
               mask: torch.Tensor | None):
        """One step for slots 0..B-1: tokens [B] at positions [B] (long, on the model's device).

        Row b attends to its slot's positions 0..positions[b]: ``kv_len`` (their maximum + 1)
        and ``mask`` (bool [B, 1, 1, kv_len], True = attend; None when every row attends to
        exactly ``kv_len`` positions) say so to the op-by-op path. Returns (hidden [B, H],
        logits [B, V]). Runs as one fused native call where ``ops`` has one.
        """
        fused = self.fused_step(cache)
        if fused:
            return fused(tokens, positions, torch.arange(tokens.shape[0]))
        return self.decode_ops(tokens, positions, cache, kv_len, mask)

    @torch.inference_mode()
    def decode_ops(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                   kv_len: int, mask: torch.Tensor | None):
        """``decode`` op by op through ``soprano.ops``: the reference of the fused step, and
        the path on GPUs (where the step is captured as a CUDA graph instead)."""
        c = self.cfg
        B = tokens.shape[0]
        rows = torch.arange(B, device=tokens.device)
        x = F.embedding(tokens, self.embed)[:, None]
        cos = self.cos[positions][:, None, None]
        sin = self.sin[positions][:, None, None]
        for i, lw in enumerate(self.layers):
            h = ops.rms_norm(x, lw.attn_norm, c.rms_norm_eps)
            q, k, v = self._split_qkv(ops.linear(h, lw.wqkv))
            q = ops.qk_norm_rope(q, lw.q_norm, cos, sin, c.rms_norm_eps)
            k = ops.qk_norm_rope(k, lw.k_norm, cos, sin, c.rms_norm_eps)
            cache.k[i, rows, :, positions] = k[:, :, 0]
            cache.v[i, rows, :, positions] = v[:, :, 0]
            attn = ops.attention(q, cache.k[i, :B, :, :kv_len], cache.v[i, :B, :, :kv_len],
                                 mask=mask)
            x = x + ops.linear(attn.transpose(1, 2).reshape(B, 1, -1), lw.wo)
            x = self._mlp(x, lw)
        return self._head(x[:, 0])
