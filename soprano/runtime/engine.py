"""The generation loop: prompts in, per-token hidden states out, for one or many sentences.

Sentences are independent: each gets a KV-cache slot, a prefill, then all active slots advance
together one decode step at a time. A step yields, for every row, the token just chosen and the
hidden state that chose it (MODEL.md: step 0 is the ``[START]`` position); the EOS step ends a
row and carries no audio. The cache is allocated once per engine; nothing is allocated per step
beyond the ops' outputs. Out of scope: text processing, audio decoding, request scheduling.
"""
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..model.qwen3 import Qwen3Backbone
from .sampling import SamplingParams, next_tokens

MAX_PROMPT_TOKENS = 512


@dataclass
class Generated:
    """One sentence's output: token ids (no EOS), hidden states [N, H] fp32, finish reason."""
    token_ids: list[int]
    hidden: np.ndarray
    finish_reason: str  # "stop" (EOS) or "length"


@dataclass
class Step:
    """One decode step for the rows still active: their indices, tokens and hidden states."""
    rows: list[int]
    tokens: list[int]
    hidden: torch.Tensor  # [len(rows), H]
    finished: list[bool]


class Engine:
    def __init__(self, backbone: Qwen3Backbone, tokenizer, max_batch: int = 8,
                 cuda_graphs: bool = True):
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.eos = backbone.cfg.eos_token_id
        self.cache = backbone.new_cache(max_batch)
        self.device = backbone.device
        self.graphed = None
        if cuda_graphs and self.device.type == "cuda":
            from .cuda_graph import GraphedDecode
            self.graphed = GraphedDecode(backbone, self.cache)

    def decode(self, tokens, positions, kv_len: int, batch: int):
        """One step for slots 0..batch-1 (tokens, positions [batch]) -> hidden, logits."""
        if self.graphed is not None:
            return self.graphed(tokens, positions)
        mask = None
        if batch > 1:
            mask = (torch.arange(kv_len, device=self.device)[None, :]
                    <= positions[:, None])[:, None, None, :]
        return self.backbone.decode(tokens, positions, self.cache, kv_len, mask)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a formatted prompt, cut at 512 tokens as upstream's tokenizer call."""
        return self.tokenizer.encode(prompt, add_special_tokens=False).ids[:MAX_PROMPT_TOKENS]

    @torch.inference_mode()
    def steps(self, prompts: list[list[int]], params: SamplingParams, max_new_tokens: int,
              generator: torch.Generator | None = None) -> Iterator[Step]:
        """Run up to ``max_batch`` prompts together, yielding a ``Step`` per decode step."""
        B = len(prompts)
        if not 0 < B <= self.max_batch:
            raise ValueError(f"batch of {B} prompts; this engine holds 1..{self.max_batch}")
        limit = self.cache.max_len
        longest = max(len(p) for p in prompts)
        max_new_tokens = min(max_new_tokens, limit - longest)
        bb = self.backbone
        hidden = torch.empty(B, bb.cfg.hidden_size, dtype=bb.dtype, device=self.device)
        logits = torch.empty(B, bb.cfg.vocab_size, dtype=bb.dtype, device=self.device)
        seen = torch.zeros(B, bb.cfg.vocab_size, dtype=torch.bool, device=self.device)
        for b, ids in enumerate(prompts):
            ids_t = torch.tensor(ids, dtype=torch.long, device=self.device)
            hidden[b], logits[b] = bb.prefill(ids_t, self.cache, slot=b)
            seen[b, ids_t] = True
        lengths = [len(p) for p in prompts]
        positions = torch.tensor(lengths, dtype=torch.long, device=self.device)
        active = list(range(B))
        rows_t = torch.arange(B, device=self.device)
        for step in range(max_new_tokens):
            chosen = next_tokens(logits, seen, params, generator)
            chosen_list = chosen.tolist()
            last = step == max_new_tokens - 1
            finished = [chosen_list[r] == self.eos or last for r in active]
            yield Step(rows=list(active), tokens=[chosen_list[r] for r in active],
                       hidden=hidden[active], finished=finished)
            active = [r for r, done in zip(active, finished) if not done]
            if not active:
                return
            seen[rows_t, chosen] = True
            kv_len = max(lengths[r] + step for r in active) + 1
            hidden, logits = self.decode(chosen, positions, kv_len, B)
            positions += 1

    def generate(self, prompts: list[list[int]], params: SamplingParams, max_new_tokens: int,
                 generator: torch.Generator | None = None) -> list[Generated]:
        """All sentences to completion, ``max_batch`` at a time."""
        out: list[Generated] = []
        for start in range(0, len(prompts), self.max_batch):
            group = prompts[start:start + self.max_batch]
            tokens = [[] for _ in group]
            hiddens = [[] for _ in group]
            reasons = ["length"] * len(group)
            for step in self.steps(group, params, max_new_tokens, generator):
                for i, r in enumerate(step.rows):
                    if step.tokens[i] == self.eos:
                        reasons[r] = "stop"
                        continue
                    tokens[r].append(step.tokens[i])
                    hiddens[r].append(step.hidden[i])
            for r in range(len(group)):
                h = (torch.stack(hiddens[r]).float().cpu().numpy() if hiddens[r]
                     else np.zeros((0, self.backbone.cfg.hidden_size), np.float32))
                out.append(Generated(tokens[r], h, reasons[r]))
        return out
