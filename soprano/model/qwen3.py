"""Qwen3 causal-LM backbone of Soprano, op by op through an ``OpTable``.

Two entry points over a KV cache (any object with ``k`` and ``v`` tensors shaped
[layers, slots, KVH, L, D]): ``prefill`` (one prompt into one cache slot) and ``step`` (one
token for each of B sequences, each in its own slot, at its own position). Both return the last
layer's output after the final RMSNorm (the decoder's input) and the LM logits. This is also
the reference of the fused whole-step kernels (``OpTable.fused_step``), which get the same
weights as a plain ``Qwen3Weights`` struct. Weights are fused at load (q|k|v and gate|up) so a
step reads them in as few matmuls as the math allows. Out of scope: loading files
(``loader.py``), the cache's allocation, sampling, the generation loop (``soprano.runtime``).
"""
import torch
import torch.nn.functional as F

from ..ops import OpTable
from ..ops.weights import Qwen3Weights
from . import rope
from .config import BackboneConfig


def rope_tables(cfg: BackboneConfig, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_len, D] in fp32, half-split layout (``model.rope``'s, on ``device``)."""
    return tuple(torch.from_numpy(t).to(device) for t in rope.rope_tables(cfg, max_len))


class Qwen3Backbone:
    def __init__(self, cfg: BackboneConfig, weights: Qwen3Weights, ops: OpTable):
        self.cfg = cfg
        self.weights = weights
        self.ops = ops
        self.dtype = weights.embed.dtype
        self.device = weights.embed.device

    def _mlp(self, x: torch.Tensor, lw) -> torch.Tensor:
        h = self.ops.rms_norm(x, lw.ffn_norm, self.cfg.rms_norm_eps)
        gate, up = self.ops.linear(h, lw.w_gate_up).chunk(2, dim=-1)
        return x + self.ops.linear(F.silu(gate) * up, lw.w_down)

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.ops.rms_norm(x, self.weights.final_norm, self.cfg.rms_norm_eps)
        return hidden, self.ops.linear(hidden, self.weights.lm_head)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache, slot: int):
        """ids [T] (long) written at positions 0..T-1 of ``slot``; returns (hidden [H],
        logits [V]) at the last position."""
        c, w, ops = self.cfg, self.weights, self.ops
        T = ids.shape[0]
        x = F.embedding(ids, w.embed)[None]
        positions = torch.arange(T, device=ids.device)
        slots = torch.full((T,), slot, dtype=torch.long, device=ids.device)
        cu_seqlens = torch.tensor([0, T], dtype=torch.long, device=ids.device)
        for i, lw in enumerate(w.layers):
            h = ops.rms_norm(x, lw.attn_norm, c.rms_norm_eps)
            qkv = ops.linear(h, lw.wqkv)[0]
            q = ops.qk_norm_rope(qkv, lw.q_norm, lw.k_norm, w.cos, w.sin, positions, slots,
                                 cache.k[i], cache.v[i], c.rms_norm_eps)
            attn = ops.attention_prefill(q, cache.k[i], cache.v[i], cu_seqlens, slots[:1], T)
            x = x + ops.linear(attn.reshape(1, T, -1), lw.wo)
            x = self._mlp(x, lw)
        hidden, logits = self._head(x[0, -1])
        return hidden, logits

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache,
             span: int | None = None):
        """One token per row: tokens, positions, slots [B] (long, on the model's device).

        Row b writes its k and v at ``positions[b]`` of slot ``slots[b]`` and attends to that
        slot's positions 0..positions[b]. ``span``: a bound on positions + 1 known to the caller,
        or None to read the whole cache (fixed shapes for a CUDA graph). Returns (hidden [B, H],
        logits [B, V]).
        """
        c, w, ops = self.cfg, self.weights, self.ops
        B = tokens.shape[0]
        lengths = positions + 1
        x = F.embedding(tokens, w.embed)[:, None]
        for i, lw in enumerate(w.layers):
            h = ops.rms_norm(x, lw.attn_norm, c.rms_norm_eps)
            qkv = ops.linear(h, lw.wqkv)[:, 0]
            q = ops.qk_norm_rope(qkv, lw.q_norm, lw.k_norm, w.cos, w.sin, positions, slots,
                                 cache.k[i], cache.v[i], c.rms_norm_eps)
            attn = ops.attention_decode(q, cache.k[i], cache.v[i], slots, lengths, span)
            x = x + ops.linear(attn.reshape(B, 1, -1), lw.wo)
            x = self._mlp(x, lw)
        return self._head(x[:, 0])
