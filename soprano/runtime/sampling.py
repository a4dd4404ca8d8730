"""Next-token choice with Hugging Face semantics, on a whole batch of logits at once.

Order as in ``transformers`` (upstream's backend): repetition penalty over every token already
in the prompt or generated (positive logits divided, negative multiplied), then temperature,
then top-p (nucleus) filtering, then a multinomial draw. Temperature <= 0 means greedy: argmax of
the penalized logits (upstream approximates it with temperature 0.001). The seen-token set is a
[B, V] bool mask so every step has fixed shapes.
"""
import torch

from ..ops.reference import apply_repetition_penalty
from .sentences import SamplingParams


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask to -inf the tokens outside the smallest set whose probability exceeds ``top_p``.

    HF's rule: sort ascending, drop tokens whose cumulative probability is <= 1 - top_p,
    always keeping the most likely one.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V], seen [B, V] bool -> token ids [B] (long)."""
    scores = apply_repetition_penalty(logits.float(), seen, params.repetition_penalty)
    if params.greedy:
        return scores.argmax(dim=-1)
    scores = top_p_filter(scores / params.temperature, params.top_p)
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
