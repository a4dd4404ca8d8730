"""Sampling against transformers' own logits processors (upstream's backend), and the
native greedy choice against its reference."""
import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

from soprano.ops import OpTable, backend_available, native, reference
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


needs_native = pytest.mark.skipif(not backend_available("cpu", "cpu")[0],
                                  reason="soprano._C is not built")


def _greedy_case(S, V, seed, scale=5.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(S, V, generator=gen) * scale
    seen = torch.rand(S, V, generator=gen) < 0.3
    return logits, seen, gen


@needs_native
@pytest.mark.parametrize("S,V,B", [(1, 8192, 1), (8, 8192, 8), (8, 8192, 3), (5, 33, 5)])
@pytest.mark.parametrize("penalty", [1.0, 1.2, 0.8])
def test_native_greedy_tokens_equal_the_reference(S, V, B, penalty):
    for trial in range(20):
        logits, seen, gen = _greedy_case(S, V, trial * 100 + S)
        # Coarse values make exact ties between a penalized and an unpenalized token common.
        logits = (logits * 4).round() / 4
        slots = torch.randperm(S, generator=gen)[:B]
        out = native.greedy_tokens_cpu(logits, seen, slots, penalty)
        assert torch.equal(out, reference.greedy_tokens(logits, seen, slots, penalty))


@needs_native
def test_native_greedy_tokens_take_the_first_maximum_or_nan():
    logits = torch.zeros(3, 10)
    seen = torch.zeros(3, 10, dtype=torch.bool)
    logits[0, 3] = logits[0, 7] = 1.0                  # tie: the first
    logits[1, 2], logits[1, 4], logits[1, 6] = 100.0, float("nan"), float("nan")
    logits[2] = float("-inf")                           # nothing finite: token 0
    slots = torch.tensor([2, 0, 1])
    out = native.greedy_tokens_cpu(logits, seen, slots, 1.2)
    assert out.tolist() == [0, 3, 4]
    assert torch.equal(out, reference.greedy_tokens(logits, seen, slots, 1.2))


@needs_native
def test_native_greedy_tokens_refuse_bad_input():
    logits, seen, _ = _greedy_case(2, 16, 0)
    with pytest.raises(ValueError, match="slot 2 is outside 0..1"):
        native.greedy_tokens_cpu(logits, seen, torch.tensor([0, 2]), 1.2)
    with pytest.raises(ValueError, match="seen \\[S, V\\] bool"):
        native.greedy_tokens_cpu(logits, seen.float(), torch.tensor([0]), 1.2)


@needs_native
def test_cpu_table_routes_greedy_tokens_to_the_native_op():
    assert OpTable("cpu", torch.float32).choices[("greedy_tokens", None)] == "cpu"


@needs_native
def test_native_greedy_tokens_divide_as_torch_does():
    # A positive seen logit x is divided by the penalty, not multiplied by its reciprocal: with
    # x where the two differ by an ulp, an unseen token at x / penalty ties with it (and being
    # first, wins) only under true division.
    penalty = 1.2
    xs = torch.linspace(1.0, 2.0, 4097)
    differ = xs * (1.0 / torch.tensor(penalty)) > xs / penalty
    x = xs[differ][0]
    logits = torch.tensor([[(x / penalty).item(), x.item()]])
    seen = torch.tensor([[False, True]])
    slots = torch.tensor([0])
    assert reference.greedy_tokens(logits, seen, slots, penalty).tolist() == [0]
    assert native.greedy_tokens_cpu(logits, seen, slots, penalty).tolist() == [0]
