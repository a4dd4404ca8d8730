"""End-to-end benchmark: ``soprano-tts bench`` (``soprano/bench.py``), kept under this name for
the commands in RESULTS.md. Each weight type's row, upstream soprano-tts 0.2.0 and llama.cpp's
decode of the same GGUF, in one run; every option of the command applies.

    python bench/e2e.py [--types bf16 q8_0 q4_k] [--tokens 128] [--runs 5] [--markdown]
"""
import sys

from soprano.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
