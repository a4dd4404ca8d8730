"""Soak benchmark: many sessions on one server for a long time, every byte of audio accounted.

Starts ``soprano-tts serve`` on loopback (a random-weight checkpoint from ``soprano.testing``,
real shapes unless ``--preset tiny``; an API key, so the authenticated path is what is soaked)
with ``--tts-inflight`` jobs synthesizing at once, connects ``--sessions`` WebSocket sessions
and keeps them all open for ``--duration`` seconds. Each session, after a random think time
(``--think``, staggered), does one seeded random round:

- speak (most rounds): maybe a valid ``config`` first, then one ``text`` and a ``flush``; the
  ``done`` must come, and the audio must be what in-process ``infer`` gives for the same chunks
  (the text cut by the server's chunker under the session's config): same length, samples
  within ``--tolerance`` LSB;
- stop: ``text`` + ``flush``, then ``stop`` once audio starts (or after a moment), then a
  marker message of an unknown type; before the marker's ``error`` comes one ``done`` (the
  stop's), or two when the flush had finished first;
- bad: an invalid ``config`` or message, answered by exactly one ``error`` (provoked);
- reconnect: close the session and open a new one (sockets and sessions must be freed).

Meanwhile ``--speech-clients`` loops POST ``/v1/audio/speech`` (pcm), half read as a stream,
half whole, each body checked against ``infer`` like the sessions' audio. Accounted: flushes
answered, audio wrong in length or in samples, ``chunk_id`` gaps and repeats per session,
errors by kind (provoked ones apart), time to first audio after each flush (p50/p95/p99 per
``--bucket`` seconds), and the server's RSS and open file descriptors every second, with their
least-squares slopes after ``--warmup`` seconds. The server must drain and exit 0 on SIGTERM.

    python bench/soak.py [--sessions 200] [--duration 600] [--tts-inflight 16]
                         [--preset real|tiny] [--max-new-tokens 32] [--json PATH]

Clients share the server's machine (loopback), so on a small CPU they take some of its time.
Out of scope: remote clients, a model that speaks (random weights: token counts are fixed by
``--max-new-tokens``, so audio lengths are exact).
"""
import argparse
import asyncio
import collections
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from liveserver import ChunkIds, Server, open_fds, rss_bytes
from soprano.server.chunker import Chunker
from soprano.server.protocol import StreamConfig, decode_frame
from timing import cpu_name

API_KEY = "soak-key"
# Sentences of 40+ characters: whatever min_chars the mix sets, they are cut at their ends.
TEXTS = [
    "The quick brown fox jumps over the lazy dog today.",
    "Streaming speech arrives in small pieces, one after another.",
    "A session may speak, stop, and speak again without closing. It stays usable after that.",
    "Every flush is answered by done once its audio has been sent to the client.",
    "Numbers like twenty one and forty two are read out in full words here.",
    "The server keeps many sessions open while only a few of them synthesize.",
    "Soak tests run for a long time to find the leaks that short tests miss. Memory must "
    "stay flat.",
    "What the listener hears must be exactly what was asked for, in order, with nothing lost.",
    "Hello there, this is the streaming server speaking to you right now.",
    "Barge in whenever you like: the stop message cancels what is still queued.",
    "Open file descriptors should come back when a client goes away for good.",
    "Short answers keep the first audio quick, and long ones keep the listener busy.",
]
# What the mix configures (min_words stays the server's --min-words); each is valid.
CONFIGS = [
    {"min_chars": 24, "max_chars": 160, "max_delay_ms": 220, "speed": 1.0},
    {"min_chars": 12, "max_chars": 300, "max_delay_ms": 100, "speed": 1.0},
    {"min_chars": 40, "max_chars": 200, "max_delay_ms": 1000, "speed": 1.0},
    {"min_chars": 24, "max_chars": 160, "max_delay_ms": 220, "speed": 1.25},
]
# Messages answered by one error each (the kind /metrics counts them under).
BAD = [({"type": "config", "speed": 9}, "bad_field"),
       ({"type": "config", "min_chars": 0}, "bad_field"),
       ({"type": "config", "voice_path": "../x"}, "bad_field"),
       ({"type": "text", "text": ""}, "bad_field"),
       ({"type": "dance"}, "bad_message")]
ROUNDS = {"speak": 0.7, "stop": 0.12, "bad": 0.12, "reconnect": 0.06}


class Expected:
    """int16 audio ``infer`` gives for each text at each speed, computed before the server runs
    (the bench process must not compete with it for the CPU during the run)."""

    def __init__(self, model: str, max_new_tokens: int):
        from soprano import SopranoTTS
        from soprano.audio import to_int16
        tts = SopranoTTS(model, device="cpu")
        self.pcm = {}
        speeds = sorted({c["speed"] for c in CONFIGS})
        pieces = sorted({p for t in TEXTS for c in CONFIGS for p in chunks(t, c)} | set(TEXTS))
        for speed in speeds:
            audio = tts.infer_batch(pieces, max_new_tokens=max_new_tokens, speed=speed)
            for text, a in zip(pieces, audio):
                self.pcm[text, speed] = to_int16(a)

    def flush(self, text: str, config: dict) -> np.ndarray:
        return np.concatenate([self.pcm[c, config["speed"]] for c in chunks(text, config)])


def chunks(text: str, config: dict, min_words: int = StreamConfig.min_words) -> list[str]:
    """The jobs the server makes of ``text`` sent in one message and flushed at once (the delay
    timer, if it fires first, takes the same remainder the flush would)."""
    c = Chunker(config["min_chars"], min_words, config["max_chars"])
    return [p for p in [*c.push(text), c.take_all()] if p]


@dataclass
class Tally:
    """Everything counted, over all sessions and requests."""
    flushes: int = 0
    answered: int = 0            # flushes (and stops) whose done came
    audio_checked: int = 0
    wrong_length: int = 0
    mismatched: int = 0          # right length, a sample off by more than the tolerance
    max_diff: int = 0            # LSB, over all checked audio
    gaps: int = 0                # chunk_ids skipped
    repeats: int = 0             # chunk_ids repeated or going backwards
    stops: int = 0
    stop_dones_wrong: int = 0    # a stop answered by other than one or two dones
    reconnects: int = 0
    speech: collections.Counter = field(default_factory=collections.Counter)
    provoked: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)  # unexpected
    ttfa: list = field(default_factory=list)  # (seconds since the start, seconds)

    def check_audio(self, got: np.ndarray, want: np.ndarray, tolerance: int) -> None:
        self.audio_checked += 1
        if got.shape != want.shape:
            self.wrong_length += 1
            return
        diff = int(np.abs(got.astype(np.int32) - want.astype(np.int32)).max(initial=0))
        self.max_diff = max(self.max_diff, diff)
        self.mismatched += diff > tolerance


def error_kind(message: str) -> str:
    for needle, kind in (("server busy", "busy"), ("rate limited", "rate_limited"),
                         ("synthesis failed", "synthesis"), ("not reading", "not_reading")):
        if needle in message:
            return kind
    return "other: " + message[:60]


class SessionGone(Exception):
    """The server closed the session or did not answer in time (counted as an error)."""


class Soak:
    def __init__(self, server: Server, args, expected: Expected):
        self.server, self.args, self.expected = server, args, expected
        self.tally = Tally()
        self.started = time.monotonic()
        self.deadline = self.started + args.duration
        self.markers = 0

    async def _read(self, ws):
        m = await asyncio.wait_for(ws.read_message(), self.args.read_timeout)
        if m is None:
            raise SessionGone(f"closed by the server ({ws.close_code})")
        return m

    async def _open(self):
        ws = await self.server.connect()
        if json.loads(await self._read(ws))["type"] != "ready":
            raise SessionGone("no ready message")
        return ws

    def _close(self, ws, ids: ChunkIds) -> None:
        ws.close()
        self.tally.gaps += ids.gaps
        self.tally.repeats += ids.repeats

    async def session(self, rng: random.Random) -> None:
        config = dict(CONFIGS[0])
        ws = ids = None
        first = True
        while time.monotonic() < self.deadline:
            try:
                if ws is None:
                    ws, ids = await self._open(), ChunkIds()
                    # within --first-message-timeout: the defaults again, so nothing changes
                    await ws.write_message(json.dumps({"type": "config", **config}))
                think = self.args.think * (rng.uniform(0, 1) if first else rng.uniform(0.5, 1.5))
                first = False
                await asyncio.sleep(min(think, max(0.0, self.deadline - time.monotonic())))
                if time.monotonic() >= self.deadline:
                    break
                kind = rng.choices(list(ROUNDS), weights=list(ROUNDS.values()))[0]
                if kind == "reconnect":
                    self._close(ws, ids)
                    ws = None
                    self.tally.reconnects += 1
                elif kind == "bad":
                    await self._bad(ws, rng)
                else:
                    if rng.random() < 0.3:
                        config = dict(rng.choice(CONFIGS))
                        await ws.write_message(json.dumps({"type": "config", **config}))
                    await self._speak(ws, ids, rng, config, stop=kind == "stop")
            except (SessionGone, asyncio.TimeoutError, ConnectionError, HTTPClientError,
                    OSError) as e:
                self.tally.errors[f"session: {type(e).__name__}: {e}"[:80]] += 1
                if ws is not None:
                    self._close(ws, ids)
                ws = None
        if ws is not None:
            self._close(ws, ids)

    async def _bad(self, ws, rng) -> None:
        msg, kind = rng.choice(BAD)
        await ws.write_message(json.dumps(msg))
        reply = json.loads(await self._read(ws))
        if reply["type"] == "error":
            self.tally.provoked[kind] += 1
        else:
            self.tally.errors[f"no error for {json.dumps(msg)}"] += 1

    async def _speak(self, ws, ids: ChunkIds, rng, config: dict, stop: bool) -> None:
        text = rng.choice(TEXTS)
        await ws.write_message(json.dumps({"type": "text", "text": text}))
        flushed = time.monotonic()
        await ws.write_message(json.dumps({"type": "flush"}))
        self.tally.flushes += 1
        pcm, ttfa, errors, dones = [], None, [], 0
        stop_at = flushed + rng.uniform(0.0, 1.0) if stop else None
        marker = None
        while True:
            timeout = None if stop_at is None else max(0.0, stop_at - time.monotonic())
            try:
                m = await asyncio.wait_for(self._read(ws), timeout)
            except asyncio.TimeoutError:
                if stop_at is None:
                    raise
                m = None
            if stop_at is not None and (m is None or ttfa is not None or m == '{"type": "done"}'):
                # barge in: now, once audio started, or just after the flush's done
                await ws.write_message(json.dumps({"type": "stop"}))
                self.markers += 1
                marker = f"sync-{self.markers}"
                await ws.write_message(json.dumps({"type": marker}))
                stop_at = None
                self.tally.stops += 1
            if m is None:
                continue
            if isinstance(m, bytes):
                header, data = decode_frame(m)
                ids.see(header["chunk_id"])
                if ttfa is None:
                    ttfa = time.monotonic() - flushed
                pcm.append(np.frombuffer(data, "<i2"))
                continue
            msg = json.loads(m)
            if msg["type"] == "done":
                dones += 1
                if marker is None:
                    break
            elif marker is not None and f'"{marker}"' in msg.get("message", ""):
                break
            else:
                errors.append(msg.get("message", m))
        if ttfa is not None:
            self.tally.ttfa.append((flushed - self.started, ttfa))
        for e in errors:
            self.tally.errors[error_kind(e)] += 1
        if marker is None:
            self.tally.answered += 1
            if not errors:
                got = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
                self.tally.check_audio(got, self.expected.flush(text, config),
                                       self.args.tolerance)
        else:
            self.tally.provoked["bad_message"] += 1  # the marker's error
            self.tally.answered += dones >= 1
            self.tally.stop_dones_wrong += dones not in (1, 2)

    async def speech_client(self, rng: random.Random) -> None:
        http = AsyncHTTPClient(force_instance=True)
        while time.monotonic() < self.deadline:
            await asyncio.sleep(self.args.speech_think * rng.uniform(0.5, 1.5))
            if time.monotonic() >= self.deadline:
                break
            text, streamed = rng.choice(TEXTS), rng.random() < 0.5
            pieces = []
            body = json.dumps({"model": "tts-1", "input": text, "voice": "alloy",
                               "response_format": "pcm"})
            request = HTTPRequest(
                f"http://127.0.0.1:{self.server.port}/v1/audio/speech", method="POST",
                body=body, request_timeout=self.args.read_timeout,
                headers={"Content-Type": "application/json", **self.server.auth_headers()},
                streaming_callback=pieces.append if streamed else None)
            try:
                response = await http.fetch(request)
            except HTTPClientError as e:
                self.tally.errors[f"speech: HTTP {e.code}"] += 1
                continue
            except (OSError, asyncio.TimeoutError) as e:
                self.tally.errors[f"speech: {type(e).__name__}"] += 1
                continue
            data = b"".join(pieces) if streamed else response.body
            self.tally.speech["streamed" if streamed else "whole"] += 1
            before = self.tally.wrong_length + self.tally.mismatched
            self.tally.check_audio(np.frombuffer(data, "<i2"), self.expected.pcm[text, 1.0],
                                   self.args.tolerance)
            self.tally.speech["wrong"] += self.tally.wrong_length + self.tally.mismatched - before
        http.close()

    async def run(self) -> None:
        rng = random.Random(self.args.seed)
        tasks = [asyncio.ensure_future(self.session(random.Random(rng.random())))
                 for _ in range(self.args.sessions)]
        tasks += [asyncio.ensure_future(self.speech_client(random.Random(rng.random())))
                  for _ in range(self.args.speech_clients)]
        grace = self.args.read_timeout + 30
        done, pending = await asyncio.wait(tasks, timeout=self.args.duration + grace)
        for t in pending:
            t.cancel()
            self.tally.errors["unfinished at the end"] += 1
        for t in done:
            if t.exception() is not None:
                self.tally.errors[f"crashed: {t.exception()!r}"[:80]] += 1


def slope_per_minute(samples, column: int, after: float, scale: float = 1.0) -> float:
    """Least-squares slope of one column of ``samples`` after ``after`` seconds, per minute."""
    rows = np.array([(t, s[column]) for t, *s in samples if t >= after], np.float64)
    if len(rows) < 2:
        return float("nan")
    return float(np.polyfit(rows[:, 0] / 60, rows[:, 1] / scale, 1)[0])


def ttfa_buckets(ttfa, bucket: float) -> list[dict]:
    by = collections.defaultdict(list)
    for t, s in ttfa:
        by[int(t // bucket)].append(s * 1000)
    rows = []
    for b in sorted(by):
        p50, p95, p99 = np.percentile(by[b], [50, 95, 99])
        rows.append({"from_s": b * bucket, "to_s": (b + 1) * bucket, "flushes": len(by[b]),
                     "p50_ms": p50, "p95_ms": p95, "p99_ms": p99})
    return rows


def server_errors(metrics: str) -> dict:
    prefix = 'soprano_errors_total{kind="'
    out = {}
    for line in metrics.splitlines():
        if line.startswith(prefix):
            kind, _, value = line[len(prefix):].partition('"} ')
            if float(value):
                out[kind] = int(float(value))
    return out


def report(args, tally: Tally, samples: list, idle: tuple, code: int, metrics: str) -> dict:
    """``samples``: (seconds, RSS, fds) while the traffic ran; ``idle``: (RSS, fds) before the
    first session and after the last one closed."""
    warm = [s for s in samples if s[0] >= args.warmup] or samples
    out = {
        "sessions": args.sessions, "duration_s": args.duration, "tts_inflight": args.tts_inflight,
        "preset": args.preset, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        # vars, not asdict: asdict rebuilds a Counter from (key, value) pairs, counting them
        **{k: dict(v) if isinstance(v, dict) else v for k, v in vars(tally).items()
           if k != "ttfa"},
        "ttfa_count": len(tally.ttfa),
        "ttfa": ttfa_buckets(tally.ttfa, args.bucket),
        "ttfa_all": ttfa_buckets([(0, s) for _, s in tally.ttfa], float("inf")),
        "server_errors": server_errors(metrics),
        "rss_mb_before": idle[0][0] / 2**20, "rss_mb_after": idle[1][0] / 2**20,
        "rss_mb_warm": warm[0][1] / 2**20, "rss_mb_end": samples[-1][1] / 2**20,
        "rss_mb_peak": max(s[1] for s in samples) / 2**20,
        "rss_slope_mb_per_min": slope_per_minute(samples, 0, args.warmup, 2**20),
        "fds_before": idle[0][1], "fds_after": idle[1][1],
        "fds_warm": warm[0][2], "fds_end": samples[-1][2], "fds_max": max(s[2] for s in warm),
        "fds_slope_per_min": slope_per_minute(samples, 1, args.warmup),
        "server_exit": code,
    }
    return out


def summary(r: dict) -> str:
    lines = [
        f"flushes {r['flushes']}, answered by done {r['answered']}; audio checked (flushes and "
        f"speech) {r['audio_checked']}: {r['wrong_length']} wrong length, {r['mismatched']} "
        f"mismatched "
        f"(max diff {r['max_diff']} LSB)",
        f"chunk ids: {r['gaps']} skipped, {r['repeats']} repeated; stops {r['stops']} "
        f"({r['stop_dones_wrong']} answered wrongly); reconnects {r['reconnects']}",
        f"speech requests: {dict(r['speech'])}",
        f"errors provoked: {dict(r['provoked'])}; unexpected: {dict(r['errors'])}; "
        f"server /metrics errors: {r['server_errors']}",
        f"server RSS {r['rss_mb_before']:.0f} MB idle before, {r['rss_mb_warm']:.0f} -> "
        f"{r['rss_mb_end']:.0f} MB from warm-up to the end (peak {r['rss_mb_peak']:.0f}), slope "
        f"{r['rss_slope_mb_per_min']:+.2f} MB/min, {r['rss_mb_after']:.0f} MB idle after",
        f"server fds {r['fds_before']} idle before, {r['fds_warm']} -> {r['fds_end']} from "
        f"warm-up to the end (max {r['fds_max']}), slope {r['fds_slope_per_min']:+.2f}/min, "
        f"{r['fds_after']} idle after; exit {r['server_exit']}",
        "",
        "| from s | to s | flushes with audio | TTFA p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for b in r["ttfa"] + [{**row, "from_s": "all", "to_s": ""} for row in r["ttfa_all"]]:
        lines.append(f"| {b['from_s']} | {b['to_s']} | {b['flushes']} | {b['p50_ms']:.0f} | "
                     f"{b['p95_ms']:.0f} | {b['p99_ms']:.0f} |")
    return "\n".join(lines)


def idle_state(server: Server) -> tuple[int, int]:
    """RSS and open fds of the server with no client (a second for closed sockets to go)."""
    time.sleep(1.0)
    return rss_bytes(server.proc.pid), open_fds(server.proc.pid)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=200, help="sessions open at once")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of mixed traffic")
    p.add_argument("--tts-inflight", type=int, default=16, help="server --tts-inflight")
    p.add_argument("--workers", type=int, default=2, help="server --workers")
    p.add_argument("--preset", choices=["real", "tiny"], default="real",
                   help="random-weight checkpoint shapes (soprano-tts testmodel --preset)")
    p.add_argument("--model-path", help="a checkpoint directory instead of a generated one")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="tokens per sentence (random weights run to it)")
    p.add_argument("--think", type=float,
                   help="mean seconds between a session's rounds (default: 0.6 x sessions, "
                        "about one flush a second in all)")
    p.add_argument("--speech-clients", type=int, default=2,
                   help="concurrent /v1/audio/speech loops")
    p.add_argument("--speech-think", type=float, default=5.0,
                   help="mean seconds between a speech loop's requests")
    p.add_argument("--tolerance", type=int, default=2,
                   help="LSB a sample may differ from infer's (batching's float rounding)")
    p.add_argument("--bucket", type=float, default=60.0, help="seconds per TTFA row")
    p.add_argument("--warmup", type=float, default=120.0,
                   help="seconds left out of the RSS and fd slopes")
    p.add_argument("--read-timeout", type=float, default=300.0,
                   help="seconds a session waits for the server before counting an error")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if args.think is None:
        args.think = 0.6 * args.sessions
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_path
        if model is None:
            from soprano.testing import write_checkpoint
            model = str(write_checkpoint(f"{tmp}/model", args.preset))
        print("computing the expected audio in-process...", file=sys.stderr)
        expected = Expected(model, args.max_new_tokens)
        server = Server(model, ["--max-new-tokens", args.max_new_tokens, "--workers",
                                args.workers, "--tts-inflight", args.tts_inflight,
                                "--max-sessions", args.sessions + 16],
                        f"{tmp}/server.log", API_KEY)
        try:
            server.wait_healthy()
            before = idle_state(server)
            server.started = time.monotonic()  # slopes and warm-up count from here
            server.samples.clear()
            soak = Soak(server, args, expected)
            print(f"soaking: {args.sessions} sessions for {args.duration:g} s...", file=sys.stderr)
            asyncio.run(soak.run())
            samples = [s for s in server.samples if s[0] <= args.duration]
            after = idle_state(server)
            metrics = server.metrics()
        finally:
            code = server.stop()
        if code != 0:
            print(server.log_tail(), file=sys.stderr)
    r = report(args, soak.tally, samples, (before, after), code, metrics)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} x {cpu_name()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end: `python {' '.join(sys.argv)}`\n")
    print(summary(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
