"""The static KV cache: keys and values of every layer for a fixed number of slots, allocated once.

Shape [layers, slots + 1, KVH, max_len, D] each. A sequence owns one slot from its prefill to
its end; the extra last slot belongs to nobody: padding rows of a CUDA-graph batch bucket write
there, so a bucket never touches a live sequence's keys. On a CPU the memory is an anonymous
mapping without huge pages, so the OS maps 4 KB pages of zeros only where they are first
written: 16 slots x 1024 positions (285 MB in fp32) cost resident memory only for the positions
sentences actually reach, and the spare slot costs nothing.
"""
import math
import mmap

import numpy as np
import torch

from ..model.config import BackboneConfig


def _zeros(shape, dtype, device) -> torch.Tensor:
    if torch.device(device).type != "cpu" or dtype != torch.float32:
        return torch.zeros(shape, dtype=dtype, device=device)
    memory = mmap.mmap(-1, math.prod(shape) * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # a 2 MB page spans 4 slots' worth of one layer
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.from_numpy(np.frombuffer(memory, np.float32).reshape(shape))


class KVCache:
    def __init__(self, cfg: BackboneConfig, slots: int, dtype, device,
                 max_len: int | None = None):
        if slots < 1:
            raise ValueError(f"a KV cache needs at least one slot, got {slots}")
        self.slots = slots
        self.max_len = max_len or cfg.max_positions
        self.spare_slot = slots
        shape = (cfg.num_layers, slots + 1, cfg.num_kv_heads, self.max_len, cfg.head_dim)
        self.k = _zeros(shape, dtype, device)
        self.v = _zeros(shape, dtype, device)
