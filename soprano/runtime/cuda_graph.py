"""The decode step captured in CUDA graphs, one per batch-size bucket.

Eager decode on a GPU is launch-bound: ~17 layers x ~15 small kernels per token. A graph replays
the whole step with one launch. Shapes are fixed per bucket: attention always spans the full
cache with a position mask, the batch is padded to the bucket (padding rows write into cache
slots no sequence owns), and inputs/outputs live in static buffers. Buckets are captured
largest first on one memory pool, as nano-vllm does. Sampling stays outside the graph.
"""
import torch

from ..model.qwen3 import KVCache, Qwen3Backbone

BUCKETS = (1, 2, 4, 8, 16, 32)


class _Graph:
    def __init__(self, backbone: Qwen3Backbone, cache: KVCache, batch: int, pool):
        dev = backbone.device
        L = cache.max_len
        self.tokens = torch.zeros(batch, dtype=torch.long, device=dev)
        self.positions = torch.zeros(batch, dtype=torch.long, device=dev)
        self.key_index = torch.arange(L, device=dev)
        self.batch = batch

        def step():
            mask = (self.key_index[None, :] <= self.positions[:, None])[:, None, None, :]
            return backbone.decode(self.tokens, self.positions, cache, L, mask)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside capture: lazy inits must not be captured
                step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.hidden, self.logits = step()

    def replay(self, tokens: torch.Tensor, positions: torch.Tensor):
        n = tokens.shape[0]
        self.tokens[:n].copy_(tokens)
        self.positions[:n].copy_(positions)
        if n < self.batch:
            # padding rows attend to position 0 of their own (unowned) slots
            self.tokens[n:].zero_()
            self.positions[n:].zero_()
        self.graph.replay()
        return self.hidden[:n], self.logits[:n]


class GraphedDecode:
    """``decode(tokens [B], positions [B]) -> (hidden [B, H], logits [B, V])`` for slots 0..B-1,
    B <= the cache's slot count. Output views are valid until the next call."""

    def __init__(self, backbone: Qwen3Backbone, cache: KVCache):
        self.buckets = [b for b in BUCKETS if b <= cache.slots] or [cache.slots]
        if self.buckets[-1] < cache.slots:
            self.buckets.append(cache.slots)
        pool = torch.cuda.graph_pool_handle()
        self.graphs = {b: _Graph(backbone, cache, b, pool) for b in reversed(self.buckets)}

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor):
        n = tokens.shape[0]
        bucket = next(b for b in self.buckets if b >= n)
        return self.graphs[bucket].replay(tokens, positions)
