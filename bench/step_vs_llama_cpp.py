"""Our decode step against llama.cpp's on the same GGUF, interleaved in one process.

``soprano-tts bench`` compares whole engines in separate processes; this isolates the step:
rounds of 64 steps after a 42-token prompt alternate between our native step (the runner alone),
our engine's step (the runner plus the greedy choice and bookkeeping: generate's time less its
prefill) and llama-cpp-python's ``eval`` of one token. Min / median ms over the rounds.

    python bench/step_vs_llama_cpp.py MODEL.gguf [--rounds 6] [--threads N]
"""
import argparse
import statistics
import time

import torch
from llama_cpp import Llama

from soprano import SopranoTTS
from soprano.runtime.threads import requested_threads

TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank today."
PROMPT = list(range(10, 52))
STEPS = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    threads = requested_threads(args.threads)
    llm = Llama(model_path=args.model, n_ctx=512, n_threads=threads, n_batch=64, verbose=False)
    tts = SopranoTTS(args.model, device="cpu", max_batch=1, threads=threads)
    runner = tts.engine.runner
    times = {"native step": [], "engine step": [], "llama.cpp eval": []}
    for _ in range(args.rounds):
        runner.prefill(torch.tensor(PROMPT), 0)
        start = time.perf_counter()
        for i in range(STEPS):
            runner.step(torch.tensor([7 + i]), torch.tensor([len(PROMPT) + i]), torch.tensor([0]))
        times["native step"].append((time.perf_counter() - start) / STEPS)
        llm.reset()
        llm.eval(PROMPT)
        start = time.perf_counter()
        for i in range(STEPS):
            llm.eval([7 + i])
        times["llama.cpp eval"].append((time.perf_counter() - start) / STEPS)
        start = time.perf_counter()
        tts.generate([TEXT], max_new_tokens=1)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        tts.generate([TEXT], max_new_tokens=STEPS + 1)
        times["engine step"].append((time.perf_counter() - start - prefill) / STEPS)
    print(f"{args.model}, {threads} threads, {args.rounds} rounds of {STEPS} steps (ms)")
    for name, t in times.items():
        print(f"  {name:<15} min {min(t) * 1e3:6.2f}  median {statistics.median(t) * 1e3:6.2f}")


if __name__ == "__main__":
    main()
