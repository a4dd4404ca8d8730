"""Sampling against transformers' own logits processors (upstream's backend)."""
import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

from soprano.runtime.sampling import (SamplingParams, apply_repetition_penalty, next_tokens,
                                      top_p_filter)


def test_repetition_penalty_matches_transformers():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 97, generator=gen) * 5
    ids = torch.randint(0, 97, (3, 20), generator=gen)
    seen = torch.zeros(3, 97, dtype=torch.bool)
    seen.scatter_(1, ids, True)
    ref = RepetitionPenaltyLogitsProcessor(1.2)(ids, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.2), ref)


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.95, 0.999])
def test_top_p_matches_transformers(top_p):
    logits = torch.randn(4, 1025, generator=torch.Generator().manual_seed(1)) * 3
    ref = TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(top_p_filter(logits, top_p), ref)


def test_greedy_takes_argmax_after_penalty():
    logits = torch.tensor([[1.0, 1.1, -0.5]])
    seen = torch.tensor([[False, True, False]])
    assert next_tokens(logits, seen, SamplingParams(repetition_penalty=1.2)).tolist() == [0]
    assert next_tokens(logits, seen, SamplingParams(repetition_penalty=1.0)).tolist() == [1]


def test_sampling_follows_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3).contiguous()
    seen = torch.zeros(20000, 3, dtype=torch.bool)
    params = SamplingParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0)
    draws = next_tokens(logits, seen, params, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015)


@pytest.mark.parametrize("kwargs, match", [({"temperature": -1}, "temperature"),
                                           ({"top_p": 1.5}, "top_p"),
                                           ({"repetition_penalty": 0}, "repetition_penalty")])
def test_invalid_parameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)
