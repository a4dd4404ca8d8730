"""Load benchmark for ``/v1/stream``: N concurrent WebSocket sessions against a local server.

For each N in ``--sessions`` it starts a fresh ``soprano-tts serve`` on a free loopback port
(a random-weight real-shape checkpoint from ``soprano.testing`` unless ``--model-path``), runs
one unmeasured warm-up session, then N sessions at once; each sends ``--rounds`` times a
10-word sentence + ``flush`` and waits for ``done``. Reported per N: time to first audio after
the flush (client side, p50/p95/p99), aggregate x real time (audio seconds of all sessions per
wall second), errors (error messages, failed or timed-out sessions), lost frames (gaps in a
session's ``chunk_id``s) and the server's peak RSS (from /proc, sampled). Every level is bounded by
``--timeout`` and the server is stopped with SIGTERM after it, so the run ends by itself.

Clients share the server's machine, as on loopback they must: on a 2-core CPU they take a
little of the CPU the server would have. Out of scope: the HTTP speech endpoint, ramp-up
patterns, remote clients.

    python bench/load.py [--sessions 1,8,32] [--rounds 5] [--max-new-tokens 48]
                         [--workers 2] [--tts-inflight 16] [--model-path DIR] [--api-key KEY]
"""
import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from liveserver import ChunkIds, Server
from soprano.server.protocol import decode_frame
from timing import cpu_name

TEXT = "The quick brown fox jumps over the lazy dog today."   # 10 words


@dataclass
class SessionResult:
    ttfa: list = field(default_factory=list)     # seconds, one per round
    samples: int = 0
    sample_rate: int = 32000
    errors: list = field(default_factory=list)
    lost_frames: int = 0


async def run_session(server: Server, rounds: int, timeout: float) -> SessionResult:
    result = SessionResult()
    ids = ChunkIds()
    try:
        ws = await server.connect()
        assert json.loads(await ws.read_message())["type"] == "ready"
        for _ in range(rounds):
            await ws.write_message(json.dumps({"type": "text", "text": TEXT}))
            flushed = time.perf_counter()
            await ws.write_message(json.dumps({"type": "flush"}))
            first = None
            while True:
                m = await asyncio.wait_for(ws.read_message(), timeout)
                if m is None:
                    raise ConnectionError("server closed the session")
                if isinstance(m, str):
                    msg = json.loads(m)
                    if msg["type"] == "done":
                        break
                    result.errors.append(msg.get("message", m))
                    continue
                if first is None:
                    first = time.perf_counter() - flushed
                header, pcm = decode_frame(m)
                ids.see(header["chunk_id"])
                result.samples += len(pcm) // 2
                result.sample_rate = header["sample_rate"]
            if first is None:
                result.errors.append("a round ended without audio")
            else:
                result.ttfa.append(first)
        ws.close()
        result.lost_frames = ids.gaps + ids.repeats
    except Exception as e:  # whatever ends a session early is an error to count, not to raise
        result.errors.append(f"{type(e).__name__}: {e}")
    return result


async def run_level(server: Server, n: int, rounds: int, timeout: float):
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(run_session(server, rounds, timeout)) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:  # the level's bound: unfinished sessions count as errors
        t.cancel()
    results = [t.result() for t in done]
    results += [SessionResult(errors=["level timed out"]) for _ in pending]
    return results, time.perf_counter() - started


def measure(model: str, n: int, args, log_path: str) -> dict:
    # RSS sampled often: the peak is what is reported
    server = Server(model, ["--max-new-tokens", args.max_new_tokens, "--workers", args.workers,
                            "--tts-inflight", args.tts_inflight], log_path, args.api_key,
                    sample_every=0.02)
    try:
        server.wait_healthy()
        asyncio.run(run_session(server, 1, args.timeout))  # warm-up, not measured
        results, wall = asyncio.run(run_level(server, n, args.rounds, args.timeout))
    finally:
        code = server.stop()
    ttfa = np.array([t for r in results for t in r.ttfa]) * 1000
    audio_s = sum(r.samples / r.sample_rate for r in results)
    errors = [e for r in results for e in r.errors]
    if code != 0:
        errors.append(f"server exited with {code}")
        print(server.log_tail(), file=sys.stderr)
    for e in sorted(set(errors)):
        print(f"  N={n} error: {e}", file=sys.stderr)
    p50, p95, p99 = np.percentile(ttfa, [50, 95, 99]) if ttfa.size else (float("nan"),) * 3
    return {"n": n, "ttfa_count": int(ttfa.size), "p50": p50, "p95": p95, "p99": p99,
            "xrt": audio_s / wall, "audio_s": audio_s, "wall_s": wall, "errors": len(errors),
            "lost": sum(r.lost_frames for r in results), "rss_mb": server.peak_rss / 2**20}


def table(rows) -> str:
    lines = ["| sessions | TTFA samples | TTFA p50 ms | p95 ms | p99 ms | x real time "
             "(aggregate) | audio s | wall s | errors | lost frames | server peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['ttfa_count']} | {r['p50']:.0f} | {r['p95']:.0f} | "
                     f"{r['p99']:.0f} | {r['xrt']:.2f} | {r['audio_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {r['errors']} | {r['lost']} | {r['rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default="1,8,32",
                   help="comma-separated session counts, one level each (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5,
                   help="sentence + flush rounds per session (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=48,
                   help="tokens per sentence; random weights rarely emit EOS "
                        "(default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="server --workers")
    p.add_argument("--tts-inflight", type=int, default=16, help="server --tts-inflight")
    p.add_argument("--api-key", help="start the server with this API key and send it "
                   "(the authenticated path; default: no key)")
    p.add_argument("--model-path", help="checkpoint directory (default: a generated "
                   "real-shape random-weight one)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds each level may take at most (default: %(default)s)")
    args = p.parse_args()
    levels = [int(n) for n in args.sessions.split(",")]
    if not all(1 <= n <= 256 for n in levels) or not 1 <= args.rounds <= 100:
        p.error("sessions must be in 1..256 and rounds in 1..100")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_path
        if model is None:
            from soprano.testing import write_checkpoint
            model = write_checkpoint(f"{tmp}/real", "real")
        rows = []
        for n in levels:
            rows.append(measure(model, n, args, f"{tmp}/server-{n}.log"))
            print(f"N={n}: TTFA p50 {rows[-1]['p50']:.0f} ms, {rows[-1]['errors']} errors",
                  file=sys.stderr)
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} x {cpu_name()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end: `python {' '.join(sys.argv)}`\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
