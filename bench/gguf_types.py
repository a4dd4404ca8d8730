"""GGUF weight types side by side: convert time and file size, load time and resident memory,
and fidelity (teacher-forced hidden-state and audio SNR against the fp32 model).

Each type is converted from one real-shape checkpoint held in fp32 (random weights, generated
unless ``--checkpoint`` is given), then loaded ``--runs`` times in a fresh process (load time:
``SopranoTTS(...)`` alone, after imports; RSS: the process's resident set after loading and
one short synthesis, which touches every weight (a safetensors load maps its file and reads
lazily), and its peak). The safetensors checkpoint is the first row. Fidelity: the fp32
model's greedy tokens for one sentence are fed to each type's model, and its hidden states and
the decoded audio are compared with the fp32 model's (random weights make greedy paths diverge
on tiny differences).

(Not ``bench/gguf.py``: run as a script, it would shadow the ``gguf`` package.)

    python bench/gguf_types.py [--checkpoint DIR] [--types f32 f16 ...] [--runs 3] [--markdown]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from soprano import SopranoTTS
from soprano.cli.convert import OUTTYPES
from soprano.gguf.writer import convert
from soprano.runtime.sentences import prompt_ids
from soprano.testing import snr_db, teacher_forced, write_checkpoint

TEXT = "Hello world, this is a test of the quantized model."
# VmHWM, not getrusage's ru_maxrss: Linux keeps that across execve, so a child would report
# this (large) parent's peak.
LOAD = """
import json, sys, time
from soprano import SopranoTTS
start = time.perf_counter()
tts = SopranoTTS(sys.argv[1], device="cpu", max_batch=1)
seconds = time.perf_counter() - start
tts.infer("Hello there.", max_new_tokens=8)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
kb = lambda key: int(status[key].split()[0]) * 1024
print(json.dumps({"seconds": seconds, "rss": kb("VmRSS"), "peak": kb("VmHWM")}))
"""


def load_stats(path, runs: int) -> dict:
    results = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True,
                             text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    secs = [r["seconds"] for r in results]
    return {"load_min": min(secs), "load_median": statistics.median(secs),
            "rss": statistics.median(r["rss"] for r in results),
            "peak": statistics.median(r["peak"] for r in results)}


def fidelity(reference: SopranoTTS, path) -> tuple[float, float]:
    tts = SopranoTTS(path, device="cpu", max_batch=1)
    tokens = reference.generate([TEXT], max_new_tokens=60)[0][0].generated.token_ids
    prompt = prompt_ids(reference.tokenizer, TEXT)
    ref_hidden, _ = teacher_forced(reference.backbone, prompt, tokens)
    hidden, _ = teacher_forced(tts.backbone, prompt, tokens)
    return (snr_db(ref_hidden, hidden),
            snr_db(reference.decode_hidden(ref_hidden), tts.decode_hidden(hidden)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a real-shape fp32 checkpoint (default: generate one)")
    p.add_argument("--types", nargs="+", default=list(OUTTYPES), choices=OUTTYPES)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    ckpt = Path(args.checkpoint or write_checkpoint(work / "fp32", "real",
                                                    backbone_dtype=torch.float32,
                                                    decoder_dtype=torch.float32))
    reference = SopranoTTS(ckpt, device="cpu", max_batch=1)
    size = sum(f.stat().st_size for f in ckpt.iterdir() if f.suffix in (".safetensors", ".pth"))
    rows = [dict(type="safetensors fp32", size=size, convert=0.0, snr_hidden=float("inf"),
                 snr_audio=float("inf"), **load_stats(ckpt, args.runs))]
    for outtype in args.types:
        start = time.perf_counter()
        out = convert(ckpt, work / outtype / f"soprano-{outtype}.gguf", outtype)
        took = time.perf_counter() - start
        hidden, audio = fidelity(reference, out.backbone)
        rows.append(dict(type=outtype, size=out.backbone.stat().st_size
                         + out.decoder.stat().st_size, convert=took, snr_hidden=hidden,
                         snr_audio=audio, **load_stats(out.backbone, args.runs)))
        print(f"{outtype}: done", file=sys.stderr, flush=True)
    header = ("type", "files MB", "convert s", "load s min/med", "RSS MB", "peak RSS MB",
              "hidden SNR dB", "audio SNR dB")
    lines = [[r["type"], f"{r['size'] / 1e6:.0f}", f"{r['convert']:.1f}",
              f"{r['load_min']:.2f} / {r['load_median']:.2f}", f"{r['rss'] / 1e6:.0f}",
              f"{r['peak'] / 1e6:.0f}", f"{r['snr_hidden']:.1f}", f"{r['snr_audio']:.1f}"]
             for r in rows]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(header)]
        for line in [header, *lines]:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


if __name__ == "__main__":
    main()
