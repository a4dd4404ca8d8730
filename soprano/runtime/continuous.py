"""Continuous batching: sentences join and leave a running batch between decode steps.

A decode step on a CPU costs the weight bytes over memory bandwidth whatever the batch (and on a
GPU it is launch-bound), so one step for every running sentence costs about what a step for one
does. Each sentence owns a KV-cache slot of the engine's cache from ``join`` (its prefill) to
``leave``; ``step`` feeds every active sentence its last chosen token in one decode call, then
samples the next token of each (so a step hands out a hidden state as soon as it is computed:
the prefill's with the first step, before any decode). A sentence may be set inactive (its listener is slow): it keeps its slot and
position and skips steps until it is active again. Rows are computed each on its own, so a
sentence gets the tokens and hidden states it gets alone: bit for bit below 8 rows, and from 8
rows on up to float rounding (the matmuls switch to the packed kernel, which sums in another
order). Out of scope: text, audio, which sentence runs when (the server's
scheduler decides).
"""
from dataclasses import dataclass

import torch

from .engine import Engine
from .sampling import SamplingParams, next_tokens


@dataclass(eq=False)
class Sequence:
    """One sentence in the batch. ``position``: where its next token goes in its slot;
    ``owner``: whatever the caller ties it to."""
    prompt: list[int]
    max_new_tokens: int
    active: bool = True
    owner: object = None
    slot: int = -1
    position: int = 0
    generated: int = 0
    limit: int = 0
    feed: int | None = None  # chosen, not yet decoded: the next step feeds it first


@dataclass
class Emitted:
    """A token chosen for ``seq`` and the hidden state [H] that chose it (MODEL.md: the first
    is the ``[START]`` position's); ``finished`` (EOS or length): the sequence has left."""
    seq: Sequence
    token: int
    hidden: torch.Tensor
    finished: bool


class ContinuousBatch:
    def __init__(self, engine: Engine, params: SamplingParams,
                 generator: torch.Generator | None = None):
        self.engine, self.params, self.generator = engine, params, generator
        bb = engine.backbone
        slots, dev = engine.cache.slots, engine.device
        self.owners: list[Sequence | None] = [None] * slots
        self.hidden = torch.zeros(slots, bb.cfg.hidden_size, dtype=bb.dtype, device=dev)
        self.logits = torch.zeros(slots, bb.cfg.vocab_size, dtype=bb.dtype, device=dev)
        self.seen = torch.zeros(slots, bb.cfg.vocab_size, dtype=torch.bool, device=dev)
        self.fused = bb.fused_step(engine.cache)

    @property
    def free_slots(self) -> int:
        return self.owners.count(None)

    def members(self) -> list[Sequence]:
        return [s for s in self.owners if s is not None]

    @torch.inference_mode()
    def join(self, seq: Sequence) -> None:
        """Prefill ``seq.prompt`` into a free slot; its first token comes with the next step."""
        if not seq.prompt:
            raise ValueError("a sequence needs a non-empty prompt")
        slot = self.owners.index(None)  # ValueError when full: callers check free_slots
        ids = torch.tensor(seq.prompt, dtype=torch.long, device=self.engine.device)
        self.hidden[slot], self.logits[slot] = self.engine.backbone.prefill(
            ids, self.engine.cache, slot)
        self.seen[slot] = False
        self.seen[slot, ids] = True
        seq.slot, seq.position, seq.generated, seq.feed = slot, len(seq.prompt), 0, None
        seq.limit = min(seq.max_new_tokens, self.engine.cache.max_len - len(seq.prompt))
        self.owners[slot] = seq

    def leave(self, seq: Sequence) -> None:
        """Free ``seq``'s slot (a cancelled sentence; finished ones leave by themselves)."""
        if 0 <= seq.slot < len(self.owners) and self.owners[seq.slot] is seq:
            self.owners[seq.slot] = None
        seq.slot = -1

    @torch.inference_mode()
    def step(self) -> list[Emitted]:
        """Decode the active members' chosen tokens in one call, then choose the next token of
        every active member."""
        feeding = [(s, s.feed) for s in self.owners
                   if s is not None and s.active and s.feed is not None]
        if feeding:
            self._decode(feeding)
        rows = [s for s in self.owners if s is not None and s.active]
        if not rows:
            return []
        slots = torch.tensor([s.slot for s in rows], device=self.engine.device)
        chosen = next_tokens(self.logits[slots], self.seen[slots], self.params,
                             self.generator).tolist()
        emitted = []
        for seq, token in zip(rows, chosen):
            seq.generated += 1
            finished = token == self.engine.eos or seq.generated >= seq.limit
            emitted.append(Emitted(seq, token, self.hidden[seq.slot].clone(), finished))
            self.seen[seq.slot, token] = True
            if finished:
                self.leave(seq)
            else:
                seq.feed = token
        return emitted

    def _decode(self, rows: list[tuple[Sequence, int]]) -> None:
        dev = self.engine.device
        if self.fused:
            tokens = torch.tensor([t for _, t in rows])
            positions = torch.tensor([s.position for s, _ in rows])
            slots = torch.tensor([s.slot for s, _ in rows])
            hidden, logits = self.fused(tokens, positions, slots)
            self.hidden[slots], self.logits[slots] = hidden, logits
        else:
            # The op-by-op and CUDA-graph steps take slots 0..B-1: slots without a row this
            # step get a dummy token at the position they will write next (or 0 when free),
            # which their own next step overwrites; their outputs are dropped.
            width = max(i for i, s in enumerate(self.owners) if s is not None) + 1
            tokens = torch.zeros(width, dtype=torch.long)
            positions = torch.tensor([s.position if s is not None else 0
                                      for s in self.owners[:width]])
            for seq, token in rows:
                tokens[seq.slot] = token
            tokens, positions = tokens.to(dev), positions.to(dev)
            hidden, logits = self.engine.decode(tokens, positions,
                                                int(positions.max()) + 1, width)
            slots = torch.tensor([s.slot for s, _ in rows], device=dev)
            self.hidden[slots], self.logits[slots] = hidden[slots], logits[slots]
        for seq, _ in rows:
            seq.position += 1
            seq.feed = None
