"""Plain weight structs handed to kernels: tensors and sizes, no model objects.

A fused kernel (the CPU step today, GPU graphs later) needs every weight of the backbone. It gets
them as these dataclasses, which the model builds once at load, so no kernel reads a model's
attributes and the model can change without touching the kernels. A matrix is a float tensor
or a ``soprano.ops.quantized.QuantMatrix`` (GGUF blocks kept as stored).
"""
from dataclasses import dataclass

import torch


@dataclass
class Qwen3LayerWeights:
    attn_norm: torch.Tensor   # [H]
    wqkv: torch.Tensor        # [(NH + 2 KVH) * D, H]: q, k and v fused, read in one matmul
    q_norm: torch.Tensor      # [D]
    k_norm: torch.Tensor      # [D]
    wo: torch.Tensor          # [H, NH * D]
    ffn_norm: torch.Tensor    # [H]
    w_gate_up: torch.Tensor   # [2 I, H]: gate and up fused
    w_down: torch.Tensor      # [H, I]


@dataclass
class Qwen3Weights:
    """Every tensor of a Qwen3 backbone plus the sizes a kernel cannot read off them."""
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    embed: torch.Tensor       # [V, H]
    final_norm: torch.Tensor  # [H]
    lm_head: torch.Tensor     # [V, H]
    cos: torch.Tensor         # [max_positions, D] fp32, half-split rotary layout
    sin: torch.Tensor
    layers: list[Qwen3LayerWeights]

    @property
    def matrix_bytes(self) -> int:
        """Bytes of every matrix: what a decode step reads."""
        return sum(m.nbytes for m in self.matrices)

    @property
    def matrices(self) -> list:
        return [self.lm_head] + [t for lw in self.layers
                                 for t in (lw.wqkv, lw.wo, lw.w_gate_up, lw.w_down)]

    @property
    def vectors(self) -> list[torch.Tensor]:
        return [self.embed, self.final_norm, self.cos, self.sin] + [
            t for lw in self.layers for t in (lw.attn_norm, lw.q_norm, lw.k_norm, lw.ffn_norm)]
