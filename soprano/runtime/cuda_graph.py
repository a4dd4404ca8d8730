"""The decode step captured in CUDA graphs, one per batch-size bucket.

Eager decode on a GPU is launch-bound: ~17 layers x ~15 small kernels per token. A graph replays
the whole step with one launch. Shapes are fixed per bucket: attention spans the whole cache
(lengths come from the positions in device memory, so one graph serves every length), the batch
is padded to the bucket with rows that write into the cache's spare slot, which no sequence
owns, and inputs/outputs live in static buffers. Buckets are captured largest first on one
memory pool, as nano-vllm does. Sampling stays outside the graph.
"""
import torch

from ..model.qwen3 import Qwen3Backbone
from .kv_cache import KVCache
from .runners import Runner

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Graph:
    def __init__(self, backbone: Qwen3Backbone, cache: KVCache, batch: int, pool):
        dev = backbone.device
        self.tokens = torch.zeros(batch, dtype=torch.long, device=dev)
        self.positions = torch.zeros(batch, dtype=torch.long, device=dev)
        self.slots = torch.full((batch,), cache.spare_slot, dtype=torch.long, device=dev)
        self.batch, self.spare = batch, cache.spare_slot

        def step():
            return backbone.step(self.tokens, self.positions, self.slots, cache)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside capture: lazy inits must not be captured
                step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.hidden, self.logits = step()

    def replay(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor):
        n = tokens.shape[0]
        self.tokens[:n].copy_(tokens)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(slots)
        if n < self.batch:
            self.tokens[n:].zero_()
            self.positions[n:].zero_()
            self.slots[n:].fill_(self.spare)
        self.graph.replay()
        return self.hidden[:n], self.logits[:n]


class CudaGraphRunner(Runner):
    """``step`` replays the smallest bucket that holds the batch; output views are valid until
    the next call. ``prefill`` runs eagerly (one per sentence, its shape varies)."""
    name = "cuda-graph"

    def __init__(self, backbone: Qwen3Backbone, cache: KVCache):
        self.backbone, self.cache = backbone, cache
        self.buckets = [b for b in BUCKETS if b < cache.slots] + [cache.slots]
        pool = torch.cuda.graph_pool_handle()
        self.graphs = {b: _Graph(backbone, cache, b, pool) for b in reversed(self.buckets)}

    def prefill(self, ids: torch.Tensor, slot: int):
        return self.backbone.prefill(ids.to(self.backbone.device), self.cache, slot)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor):
        n = tokens.shape[0]
        bucket = next(b for b in self.buckets if b >= n)
        dev = self.backbone.device
        return self.graphs[bucket].replay(tokens.to(dev, non_blocking=True),
                                          positions.to(dev, non_blocking=True),
                                          slots.to(dev, non_blocking=True))
