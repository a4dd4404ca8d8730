"""The end-to-end speed of this machine, per weight type, beside upstream and llama.cpp.

``soprano-tts bench`` (options: ``soprano/cli/bench.py``; ``bench/e2e.py`` runs it) generates a
real-shape checkpoint (random weights: speed does not depend on them), converts it to each GGUF
type asked for, and runs every engine in a worker process of its own (one model each, so peak
RSS is the engine's), sending the workers one request per run in turn so that machine noise hits
them alike:

- ours, one row per weight type, and on a CPU one of the torch-free engine for each
  (``soprano.lean``, "lean": its peak RSS is the model's, not torch's): load time, time to first
  audio of a streamed sentence, x real time and ms per token of ``infer``, and apart: the LM
  (prefill, decode step with sampling, and both per token) and the decoder's ms per token;
- upstream soprano-tts 0.2.0 (when importable from ``--upstream-dir``): load time, x real time;
- llama.cpp (when llama-cpp-python is installed): its decode step over the same backbone GGUF
  after a 42-token prompt, comparable with our step (it samples nothing: ours includes a greedy
  choice of the next token).

Generation length is fixed (``--tokens``). A step streams every matrix, so beside each step time
is its ratio to the bandwidth floor: the time the engine's threads take to read a buffer of the
matrices' bytes, measured between the runs (the ratio to upstream moves with the day's memory
speed, this one does not). The buffer is the matrices' size because a cache that holds most of a
quantized model serves its step faster than memory; a one-thread numpy copy, the floor until
2026-12-02, read a third of what a 2-thread step did on an Intel Xeon and was no floor there. The
copy's rate is still reported.
Workers run this file as a script (upstream's import name is also ``soprano``, so they must not
import ours first).
"""
import sys

if __name__ == "__main__":  # a worker: this folder is no package root, and holds a gguf/
    del sys.path[0]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank today."
SAMPLE_RATE = 32000


def _peak_rss_mb() -> float:
    """VmHWM: getrusage's ru_maxrss survives exec, so a worker would report its parent's."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _serve(setup) -> None:
    """A worker's loop: ``setup()`` -> (info, run), info holding ``load_s`` (the model's load,
    after imports); one JSON line for info, then one per request line on stdin."""
    info, run = setup()
    print(json.dumps({"ready": True, **info}), flush=True)
    for _ in sys.stdin:
        out = run()
        out["rss_mb"] = _peak_rss_mb()
        print(json.dumps(out), flush=True)


def _timed(tts, tokens: int, generate, matrix_bytes: int) -> tuple[dict, object]:
    """The runs of either of our engines (``generate(n)``: one sentence's (token ids, hidden
    states) for ``n`` tokens), after a warm-up (first-call allocations, CUDA graphs)."""
    tts.infer(TEXT, max_new_tokens=8)
    info = {"threads": tts.threads, "matrix_bytes": matrix_bytes}

    def run():
        start = time.perf_counter()
        stream = tts.infer_stream(TEXT, max_new_tokens=tokens)
        if next(stream, None) is None:
            raise RuntimeError("the model ended the sentence before its first token")
        first = time.perf_counter() - start
        stream.close()
        start = time.perf_counter()
        generate(1)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        token_ids, hidden = generate(tokens)
        lm = time.perf_counter() - start
        start = time.perf_counter()
        tts.decode_hidden(hidden)
        decoder = time.perf_counter() - start
        start = time.perf_counter()
        audio = tts.infer(TEXT, max_new_tokens=tokens)
        wall = time.perf_counter() - start
        n = len(token_ids)
        return {"first_audio_s": first, "wall": wall, "samples": len(audio), "tokens": n,
                "lm_ms": lm * 1e3 / n, "step_ms": (lm - prefill) * 1e3 / max(n - 1, 1),
                "prefill_ms": prefill * 1e3, "decoder_ms": decoder * 1e3 / n,
                "torch_loaded": "torch" in sys.modules}
    return info, run


def _ours(model: str, tokens: int, device: str, threads: int | None):
    from soprano import SopranoTTS
    start = time.perf_counter()
    tts = SopranoTTS(model, device=device, max_batch=1, threads=threads)
    load_s = time.perf_counter() - start
    # Every run generates exactly ``tokens`` (as upstream's generate is forced to): random
    # weights may choose EOS at any step, which would leave too few steps to time.
    tts.engine.eos = -1

    def generate(n):
        g = tts.generate([TEXT], max_new_tokens=n)[0][0].generated
        return g.token_ids, g.hidden
    info, run = _timed(tts, tokens, generate, tts.backbone.weights.matrix_bytes)
    return {"load_s": load_s, **info}, run


def _lean(model: str, tokens: int, device: str, threads: int | None):
    """The torch-free engine (``soprano.lean``), on the CPU."""
    from soprano.lean import LeanTTS
    start = time.perf_counter()
    tts = LeanTTS(model, threads=threads)
    load_s = time.perf_counter() - start
    tts.eos = -1  # as ours

    def generate(n):
        return tts.generate(TEXT, max_new_tokens=n)[0]
    info, run = _timed(tts, tokens, generate, tts.backbone.matrix_bytes)
    return {"load_s": load_s, **info}, run


def _upstream(model: str, tokens: int, device: str, threads: int | None):
    import torch
    if threads:
        torch.set_num_threads(threads)
    from transformers import GenerationMixin
    real_generate = GenerationMixin.generate

    def fixed_length(self, *a, **k):
        k["max_new_tokens"] = k["min_new_tokens"] = tokens
        return real_generate(self, *a, **k)

    GenerationMixin.generate = fixed_length
    from soprano.tts import SopranoTTS  # upstream's module (its import name is also soprano)
    start = time.perf_counter()
    tts = SopranoTTS(backend="transformers", device=device, model_path=model)
    info = {"load_s": time.perf_counter() - start, "threads": torch.get_num_threads()}
    tts.infer(TEXT)

    def run():
        start = time.perf_counter()
        audio = tts.infer(TEXT)
        wall = time.perf_counter() - start
        return {"wall": wall, "samples": int(audio.shape[-1]), "tokens": tokens}
    return info, run


def _llama_cpp(model: str, tokens: int, device: str, threads: int | None):
    from llama_cpp import Llama
    from soprano.runtime.threads import requested_threads
    n_threads = requested_threads(threads)
    start = time.perf_counter()
    llm = Llama(model_path=model, n_ctx=tokens + 64, n_threads=n_threads, n_batch=64,
                verbose=False)
    info = {"load_s": time.perf_counter() - start, "threads": n_threads}
    prompt = list(range(10, 52))

    def run():
        llm.reset()
        llm.eval(prompt)
        start = time.perf_counter()
        for i in range(tokens):
            llm.eval([7 + i % 100])
        return {"step_ms": (time.perf_counter() - start) * 1e3 / tokens, "tokens": tokens}
    return info, run


# the rows of our two engines: torch's (any model, any device) and the torch-free one (GGUF, CPU)
OURS = ("ours", "lean")
WORKERS = {"ours": _ours, "lean": _lean, "upstream": _upstream, "llama.cpp": _llama_cpp}


class Worker:
    """One engine in a child process (this file run as a script with ``--worker``)."""

    def __init__(self, label: str, kind: str, model: str, args, env=None):
        self.label, self.kind = label, kind
        cmd = [sys.executable, __file__, "--worker", kind, "--model", model,
               "--tokens", str(args.tokens), "--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        # A file, not a pipe: nobody reads a live worker's stderr, and a pipe that fills (its
        # libraries' warnings) would block the worker mid-run.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env,
                                     cwd=tempfile.gettempdir())
        self.info = self._reply()
        self.results = []

    def _reply(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                self.stderr.seek(0)
                err = self.stderr.read().strip().splitlines()
                raise RuntimeError(f"{self.label} worker failed: "
                                   f"{err[-1] if err else 'no output'}")
            if line.startswith("{"):
                return json.loads(line)

    def request(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.results.append(self._reply())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.stderr.close()


def copy_read_rate(repeats: int = 3, mib: int = 256) -> float:
    """Bytes per second a numpy copy of ``mib`` MiB reads (best of ``repeats``, after one that
    faults the destination's pages in): far beyond any cache, so it is what memory delivers to
    these cores now. ``bench/`` scripts use it too."""
    import numpy as np
    src = np.ones(mib << 18, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return src.nbytes / best


def read_rate(nbytes: int, threads: int, repeats: int = 3) -> float:
    """Bytes per second ``threads`` threads of the CPU kernels read a buffer of ``nbytes``, one
    contiguous share each with the weight streams' prefetch (best of ``repeats``, after a read
    that faults the pages in and fills whatever cache holds them), as a decode step reads its
    matrices: its floor on this machine now."""
    import numpy as np
    from ._C import num_threads, read_words, set_num_threads
    buf = np.ones(max(8, nbytes // 8 * 8), dtype=np.uint8)
    before = num_threads()
    set_num_threads(threads)
    try:
        read_words(buf.ctypes.data, buf.nbytes)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            read_words(buf.ctypes.data, buf.nbytes)
            best = min(best, time.perf_counter() - start)
    finally:
        set_num_threads(before)
    return buf.nbytes / best


def _prepare(args, log) -> dict[str, str]:
    """weight type -> model path: the checkpoint itself for its own (16-bit) type, a GGUF
    conversion of it for each other type asked for."""
    from .gguf.writer import convert
    from .testing import write_checkpoint
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="soprano-bench-"))
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "checkpoint"
    if not args.checkpoint and not (checkpoint / "config.json").is_file():
        log("generating a real-shape checkpoint (random weights)")
        write_checkpoint(checkpoint, "real")
    models = {}
    for t in args.types:
        if t == "bf16" and not args.gguf_bf16:
            models[t] = str(checkpoint)
            continue
        out = work / t / f"soprano-{t}.gguf"
        if not out.is_file():
            log(f"converting to {t}")
            convert(checkpoint, out, t)
        models[t] = str(out)
    return models, str(checkpoint)


def _stats(values) -> dict:
    values = list(values)
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(workers: list[Worker], rates: list[float],
              read_rates: dict[int, list[float]] | None = None) -> dict:
    """Per engine: each measure's min/median/max over the runs, and the ratios. ``rates``: the
    numpy copy's; ``read_rates``: matrix bytes -> the engine threads' read rates of a buffer
    that size, whose best gives the step's floor (its time is the step's min)."""
    rate = statistics.median(rates) if rates else None
    read_rates = read_rates or {}
    rows = {}
    for w in workers:
        r = w.results
        row = {"kind": w.kind, "load_s": w.info["load_s"], "threads": w.info.get("threads"),
               "peak_rss_mb": max(x["rss_mb"] for x in r),
               "matrix_bytes": w.info.get("matrix_bytes"),
               "torch_loaded": any(x.get("torch_loaded", False) for x in r)}
        if "wall" in r[0]:
            row["x_real_time"] = _stats(x["samples"] / SAMPLE_RATE / x["wall"] for x in r)
            row["ms_per_token"] = _stats(x["wall"] * 1e3 / x["tokens"] for x in r)
        for key in ("lm_ms", "step_ms", "prefill_ms", "decoder_ms"):
            if key in r[0]:
                row[key] = _stats(x[key] for x in r)
        if "first_audio_s" in r[0]:
            row["first_audio_ms"] = _stats(x["first_audio_s"] * 1e3 for x in r)
        rows[w.label] = row
    ours = {label.split()[-1]: row for label, row in rows.items() if row["kind"] == "ours"}
    for label, row in rows.items():
        if row["kind"] == "llama.cpp" and label.split()[-1] in ours:  # the same file's matrices
            row["matrix_bytes"] = ours[label.split()[-1]]["matrix_bytes"]
        read = read_rates.get(row["matrix_bytes"])
        if read and "step_ms" in row:
            row["floor_read_gb_s"] = max(read) / 1e9
            row["floor_ms"] = row["matrix_bytes"] / max(read) * 1e3
            row["step_over_floor"] = row["step_ms"]["min"] / row["floor_ms"]
    up = rows.get("upstream")
    for label, row in rows.items():
        if up and "x_real_time" in row and label != "upstream":
            row["vs_upstream"] = row["x_real_time"]["median"] / up["x_real_time"]["median"]
        llama = rows.get(f"llama.cpp {label.split()[-1]}")
        if llama and row["kind"] in OURS:
            row["step_vs_llama_cpp"] = llama["step_ms"]["median"] / row["step_ms"]["median"]
    return {"copy_read_gb_s": rate / 1e9 if rate else None, "rows": rows}


def _fmt(stat, digits=1) -> str:
    return f"{stat['min']:.{digits}f} / {stat['median']:.{digits}f}" if stat else "-"


def table(summary: dict, markdown: bool) -> str:
    head = ["engine", "load s", "first audio ms", "x real time", "vs upstream", "prefill ms",
            "step ms", "step / floor", "llama.cpp step ms", "step vs llama.cpp",
            "decoder ms/token", "peak RSS MB"]
    lines = []
    rows = summary["rows"]
    for label, r in rows.items():
        if r["kind"] == "llama.cpp":
            continue
        llama = rows.get(f"llama.cpp {label.split()[-1]}") if r["kind"] in OURS else None
        xrt = r.get("x_real_time")
        lines.append([
            label, f"{r['load_s']:.2f}", _fmt(r.get("first_audio_ms")),
            f"{xrt['max']:.2f} / {xrt['median']:.2f}" if xrt else "-",
            f"{r['vs_upstream']:.2f}x" if "vs_upstream" in r else "-",
            _fmt(r.get("prefill_ms")), _fmt(r.get("step_ms"), 2),
            f"{r['step_over_floor']:.2f}" if "step_over_floor" in r else "-",
            _fmt(llama["step_ms"], 2) if llama else "-",
            f"{r['step_vs_llama_cpp']:.2f}x" if "step_vs_llama_cpp" in r else "-",
            _fmt(r.get("decoder_ms"), 2), f"{r['peak_rss_mb']:.0f}"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(cells, widths))
                     for cells in [head] + lines)


def describe_machine(device: str, threads) -> str:
    from .ops.report import cpu_name
    if device == "cuda":
        import torch
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {threads} threads"


def run(args, log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> dict:
    models, checkpoint = _prepare(args, log)
    workers = []
    try:
        for t, path in models.items():
            log(f"loading ours {t}")
            workers.append(Worker(f"ours {t}", "ours", path, args))
            if args.lean and args.device == "cpu":
                log(f"loading lean {t}")
                workers.append(Worker(f"lean {t}", "lean", path, args))
        if args.upstream:
            upstream_dir = Path(args.upstream_dir or next(
                (d for d in (Path(".upstream"), Path(__file__).parents[1] / ".upstream")
                 if d.is_dir()), ".upstream")).resolve()
            if (upstream_dir / "soprano" / "tts.py").is_file():
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(upstream_dir), os.environ.get("PYTHONPATH")]))}
                log("loading upstream soprano-tts")
                workers.append(Worker("upstream", "upstream", checkpoint, args, env))
            else:
                log(f"no upstream soprano-tts in {upstream_dir} (pip install --no-deps "
                    f"--target {upstream_dir} soprano-tts==0.2.0): its row is left out")
        if args.llama_cpp:
            try:
                import llama_cpp  # noqa: F401
                for t, path in models.items():
                    if path.endswith(".gguf"):
                        log(f"loading llama.cpp {t}")
                        workers.append(Worker(f"llama.cpp {t}", "llama.cpp", path, args))
            except ImportError:
                log("llama-cpp-python is not installed: its column is left out")
        rates, read_rates = [], {}
        sizes = {w.info["matrix_bytes"] for w in workers
                 if w.kind in OURS and w.info.get("matrix_bytes")}
        threads = next((w.info.get("threads") for w in workers), None)
        for i in range(args.runs):
            for w in workers:
                if sys.stderr.isatty():
                    print(f"\rrun {i + 1}/{args.runs}: {w.label:<16}", end="", file=sys.stderr,
                          flush=True)
                w.request()
            if args.device == "cpu":
                rates.append(copy_read_rate())
                for size in sizes:
                    read_rates.setdefault(size, []).append(read_rate(size, threads or 1))
        if sys.stderr.isatty():
            print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()
    summary = summarize(workers, rates, read_rates)
    summary.update({"machine": describe_machine(args.device, threads), "device": args.device,
                    "checkpoint": args.checkpoint or "generated, real shapes",
                    "tokens": args.tokens, "runs": args.runs, "text": TEXT})
    return summary


def report(summary: dict, markdown: bool) -> str:
    rate = summary["copy_read_gb_s"]
    head = (f"{summary['machine']}; checkpoint {summary['checkpoint']}, "
            f"{summary['tokens']} tokens, "
            f"{summary['runs']} runs (min / median; x real time: best / median)"
            + (f"; a numpy copy reads {rate:.1f} GB/s" if rate else "")
            + "; step / floor: a decode step over the time its threads take to read a buffer "
            "of its matrix bytes"
            + "; step: one decode step with its sampling, prefill: the sentence's prompt")
    return head + "\n\n" + table(summary, markdown)


def _worker_main(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=list(WORKERS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.worker == "upstream":
        # ours may be installed in editable mode, found by a finder ahead of PYTHONPATH
        sys.meta_path = [f for f in sys.meta_path if "soprano" not in repr(f).lower()
                         and "scikit" not in type(f).__module__.lower()]
    _serve(lambda: WORKERS[a.worker](a.model, a.tokens, a.device, a.threads))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
