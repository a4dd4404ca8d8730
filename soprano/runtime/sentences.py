"""What every engine does to a sentence besides stepping: its prompt ids, its seed, its
sampling parameters (checked), and upstream's hallucination check. Arrays only (numpy or torch),
no torch import, so the torch pipeline (``runtime.pipeline``) and the torch-free engine
(``soprano.lean``) share them.

Retries follow upstream: a sentence whose hidden states hold a run of more than 16
near-identical consecutive states (sum |h_i - h_i+1| < 300) is generated again, up to
``retries`` times, and the last attempt is kept. The check is a prefix property (upstream's scan
returns at the first such run), so it runs as the states arrive and a flagged attempt is dropped
at once instead of running to its end. Audio that has gone out cannot be regenerated: a streamed
sentence flagged after its first chunk is cut there instead, which stops the loop it is stuck in.
"""
from dataclasses import dataclass

from .. import text as textproc

MAX_PROMPT_TOKENS = 512
HALLUCINATION_DIFF = 300.0
HALLUCINATION_RUN = 16


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 0.95
    repetition_penalty: float = 1.2

    def __post_init__(self):
        if not (self.temperature >= 0.0 and self.temperature < float("inf")):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.repetition_penalty > 0.0 and self.repetition_penalty < float("inf")):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class HallucinationDetector:
    """Upstream's detector fed one fp32 state at a time (a numpy array or a torch tensor): the
    run counter grows when the L1 distance to the previous state is under 300 and decays by one
    otherwise; past 16 it flags."""

    def __init__(self):
        self.previous = None
        self.run = 0
        self.flagged = False

    def push(self, state) -> bool:
        if self.previous is not None and not self.flagged:
            if float(abs(state - self.previous).sum()) < HALLUCINATION_DIFF:
                self.run += 1
            elif self.run > 0:
                self.run -= 1
            self.flagged = self.run > HALLUCINATION_RUN
        self.previous = state
        return self.flagged


def prompt_ids(tokenizer, sentence: str) -> list[int]:
    """Token ids of a sentence's prompt, cut at 512 tokens as upstream's tokenizer call."""
    prompt = textproc.format_prompt(sentence)
    return tokenizer.encode(prompt, add_special_tokens=False).ids[:MAX_PROMPT_TOKENS]


def sentence_seed(seed: int | None, index: int) -> int | None:
    """The seed of a request's ``index``-th sentence: each sentence draws from its own
    generator, so its audio is the same whether it runs alone, batched or streamed."""
    return None if seed is None else (int(seed) * 1_000_003 + index) % 2**63
