"""Step runners: the one way an engine runs the model, chosen once when the engine is built.

Every runner has one signature: ``step(tokens, positions, slots)`` (int64 [B] on the CPU) ->
(hidden [B, H], logits [B, V]) on the model's device, where row b feeds ``tokens[b]`` at
``positions[b]`` of cache slot ``slots[b]`` and attends to that slot's positions
0..positions[b]; and ``prefill(ids, slot)`` -> (hidden [H], logits [V]) of the prompt's last
position. Slots are explicit: rows need not be slots 0..B-1, and no slot is fed a dummy row.
``step_into(tokens, positions, slots, hidden, logits)`` is ``step`` with row b's outputs written
to row ``slots[b]`` of the caller's ``hidden`` [S, H] and ``logits`` [S, V] (the engine keeps
them by slot): the fused CPU step writes them there itself, the others copy.

- ``FusedCpuRunner``: the whole step (or prefill) as one native call (``OpTable.fused_step``).
- ``CudaGraphRunner`` (``cuda_graph.py``): the op-by-op step replayed from CUDA graphs.
- ``EagerRunner``: the op-by-op step (``Qwen3Backbone.step``) as it is; the reference.
"""
import torch

from ..model.qwen3 import Qwen3Backbone
from .kv_cache import KVCache


class Runner:
    """``step_into`` as ``step`` and a copy into the caller's rows (runners whose step cannot
    write there itself)."""

    def step_into(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                  hidden: torch.Tensor, logits: torch.Tensor) -> None:
        out_hidden, out_logits = self.step(tokens, positions, slots)
        index = slots.to(hidden.device)
        hidden[index], logits[index] = out_hidden, out_logits


class EagerRunner(Runner):
    name = "eager"

    def __init__(self, backbone: Qwen3Backbone, cache: KVCache):
        self.backbone, self.cache = backbone, cache

    def prefill(self, ids: torch.Tensor, slot: int):
        return self.backbone.prefill(ids.to(self.backbone.device), self.cache, slot)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor):
        dev = self.backbone.device
        span = int(positions.max()) + 1
        return self.backbone.step(tokens.to(dev), positions.to(dev), slots.to(dev), self.cache,
                                  span)


class FusedCpuRunner(Runner):
    name = "fused-cpu"

    def __init__(self, fused, cache: KVCache):
        self.fused, self.cache = fused, cache

    def prefill(self, ids: torch.Tensor, slot: int):
        T = ids.shape[0]
        hidden, logits = self.fused(ids, torch.arange(T), torch.full((T,), slot),
                                    last_only=True)
        return hidden[0], logits[0]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor):
        return self.fused(tokens, positions, slots)

    def step_into(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                  hidden: torch.Tensor, logits: torch.Tensor) -> None:
        self.fused.step_into(tokens, positions, slots, hidden, logits)


def make_runner(backbone: Qwen3Backbone, cache: KVCache, cuda_graphs: bool = True):
    """The fastest runner for this model and cache: a native fused step where the backend
    table has one, CUDA graphs on a GPU (unless ``cuda_graphs`` is off), else eager."""
    fused = backbone.ops.fused_step(backbone.weights, cache.k, cache.v)
    if fused is not None:
        return FusedCpuRunner(fused, cache)
    if cuda_graphs and backbone.device.type == "cuda":
        from .cuda_graph import CudaGraphRunner
        return CudaGraphRunner(backbone, cache)
    return EagerRunner(backbone, cache)
