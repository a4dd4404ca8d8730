"""The engine: one continuous batch of sequences over one KV cache, advanced by ``step()``.

nano-vllm's shape. A ``Sequence`` (one sentence's prompt, its own sampling parameters and
generator) owns a cache slot from ``add`` (its prefill) until it finishes or is ``remove``d;
sequences join and leave between steps. ``step`` feeds every active sequence its last chosen
token in one runner call, then chooses each one's next token, so a step hands out a hidden state
as soon as it is computed (the prefill's with the first step). A sequence may be set inactive
(its listener is slow): it keeps its slot and position and skips steps until active again.
``pipeline.drive`` (under ``SopranoTTS.infer*``) and the server are loops over ``step``.

Rows are computed each on its own, so a sequence gets the tokens and hidden states it gets
alone: bit for bit below 8 rows on the fused CPU step, and beyond up to float rounding (from 8
rows attention stops splitting a row's keys across threads, and the matmuls switch to the
packed kernel, which sums in another order: from 8 rows for float matrices, 16 for Q8_0/Q4_0,
32 for K-quants). A sampled sequence draws
only from its own generator, so its output does not depend on who else is in the batch.
Each step emitted is (sequence, token, hidden state that chose it): the first hidden state is
the prompt's last (``[START]``) position's, and the EOS step ends the sequence and carries no
audio (as upstream feeds its decoder).
Out of scope: text, audio, which sequence runs when (the caller decides).
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.qwen3 import Qwen3Backbone
from .kv_cache import KVCache
from .runners import make_runner
from .sampling import SamplingParams, next_tokens

@dataclass(eq=False)
class Sequence:
    """One sentence in the engine. ``owner``: whatever the caller ties it to."""
    prompt: list[int]
    max_new_tokens: int = 512
    params: SamplingParams = field(default_factory=SamplingParams)
    generator: torch.Generator | None = None
    owner: object = None
    active: bool = True
    # the engine's bookkeeping
    slot: int = -1
    position: int = 0           # where its next token goes in its slot
    generated: int = 0
    limit: int = 0
    feed: int | None = None     # chosen, not yet fed: the next step feeds it first


@dataclass
class Emitted:
    """A token chosen for ``seq`` and the hidden state [H] that chose it; ``finished`` (EOS or
    its token limit): the sequence has left the engine."""
    seq: Sequence
    token: int
    hidden: torch.Tensor
    finished: bool


@dataclass
class Generated:
    """One sequence's whole output: token ids (no EOS), hidden states [N, H] fp32, reason."""
    token_ids: list[int]
    hidden: np.ndarray
    finish_reason: str  # "stop" (EOS), "length", or "cut" (a streamed hallucination)


class Engine:
    """``max_batch`` sequences at once (the KV cache's slots); the step runner (fused CPU step,
    CUDA graphs or eager) is chosen here, once."""

    def __init__(self, backbone: Qwen3Backbone, max_batch: int = 8, cuda_graphs: bool = True):
        self.backbone = backbone
        self.max_batch = max_batch
        self.eos = backbone.cfg.eos_token_id
        self.device = backbone.device
        self.cache = KVCache(backbone.cfg, max_batch, backbone.dtype, self.device)
        self.runner = make_runner(backbone, self.cache, cuda_graphs)
        cfg = backbone.cfg
        self.owners: list[Sequence | None] = [None] * max_batch
        self.hidden = torch.zeros(max_batch, cfg.hidden_size, dtype=backbone.dtype,
                                  device=self.device)
        self.logits = torch.zeros(max_batch, cfg.vocab_size, dtype=backbone.dtype,
                                  device=self.device)
        self.seen = torch.zeros(max_batch, cfg.vocab_size, dtype=torch.bool, device=self.device)
        # Each slot as an index of one, made once: a decode step's greedy choice of one sequence
        # then builds no tensor (tens of microseconds a step on a slow CPU).
        self._slot_index = [torch.tensor([s], device=self.device) for s in range(max_batch)]

    @property
    def free_slots(self) -> int:
        return self.owners.count(None)

    def members(self) -> list[Sequence]:
        return [s for s in self.owners if s is not None]

    def generator(self, seed: int | None) -> torch.Generator | None:
        """A generator on the engine's device seeded with ``seed`` (None: torch's global one)."""
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(int(seed) % 2**63)

    @torch.inference_mode()
    def add(self, seq: Sequence) -> None:
        """Prefill ``seq.prompt`` into a free slot; its first token comes with the next step."""
        if not seq.prompt:
            raise ValueError("a sequence needs a non-empty prompt")
        if len(seq.prompt) >= self.cache.max_len:
            raise ValueError(f"a prompt of {len(seq.prompt)} tokens does not fit the cache "
                             f"({self.cache.max_len} positions)")
        slot = self.owners.index(None)  # ValueError when full: callers check free_slots
        ids = torch.tensor(seq.prompt, dtype=torch.long)
        self.hidden[slot], self.logits[slot] = self.runner.prefill(ids, slot)
        self.seen[slot] = False
        self.seen[slot, ids.to(self.device)] = True
        seq.slot, seq.position, seq.generated, seq.feed = slot, len(seq.prompt), 0, None
        seq.limit = min(seq.max_new_tokens, self.cache.max_len - len(seq.prompt))
        self.owners[slot] = seq

    def remove(self, seq: Sequence) -> None:
        """Free ``seq``'s slot (a cancelled sentence; finished ones leave by themselves)."""
        if 0 <= seq.slot < len(self.owners) and self.owners[seq.slot] is seq:
            self.owners[seq.slot] = None
        seq.slot = -1

    @torch.inference_mode()
    def step(self) -> list[Emitted]:
        """Feed the active members their chosen tokens in one runner call, then choose the
        next token of every active member."""
        feeding = [s for s in self.owners if s is not None and s.active and s.feed is not None]
        if feeding:
            self._feed(feeding)
        rows = [s for s in self.owners if s is not None and s.active]
        if not rows:
            return []
        emitted = []
        for seq, token in zip(rows, self._choose(rows)):
            seq.generated += 1
            finished = token == self.eos or seq.generated >= seq.limit
            emitted.append(Emitted(seq, token, self.hidden[seq.slot].clone(), finished))
            self.seen[seq.slot, token] = True
            if finished:
                self.remove(seq)
            else:
                seq.feed = token
        return emitted

    def _feed(self, rows: list[Sequence]) -> None:
        tokens = torch.tensor([s.feed for s in rows])
        positions = torch.tensor([s.position for s in rows])
        slots = torch.tensor([s.slot for s in rows])
        self.runner.step_into(tokens, positions, slots, self.hidden, self.logits)
        for s in rows:
            s.position += 1
            s.feed = None

    def _choose(self, rows: list[Sequence]) -> list[int]:
        """Next tokens of ``rows``: rows that share sampling parameters and draw from no
        generator of their own (greedy rows never draw) are sampled together."""
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(rows):
            own = s.generator if s.generator is not None and not s.params.greedy else None
            groups.setdefault((s.params, id(own) if own is not None else None), []).append(i)
        chosen = [0] * len(rows)
        for (params, _), members in groups.items():
            slots = (self._slot_index[rows[members[0]].slot] if len(members) == 1 else
                     torch.tensor([rows[i].slot for i in members], device=self.device))
            if params.greedy:  # one pass over the chosen slots' rows (no gathers)
                tokens = self.backbone.ops.greedy_tokens(self.logits, self.seen, slots,
                                                         params.repetition_penalty)
            else:
                tokens = next_tokens(self.logits[slots], self.seen[slots], params,
                                     rows[members[0]].generator)
            for i, t in zip(members, tokens.tolist()):
                chosen[i] = t
        return chosen


def stack_hidden(states: list[torch.Tensor], hidden_size: int) -> np.ndarray:
    """Hidden states [H] each (any device and dtype) -> one float32 array [N, H]."""
    if not states:
        return np.zeros((0, hidden_size), np.float32)
    return torch.stack(states).float().cpu().numpy()
