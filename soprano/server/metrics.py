"""The server's Prometheus metrics, served as text by ``GET /metrics``.

Each app gets its own ``CollectorRegistry`` (not prometheus_client's global one) so several apps
can live in one process, as tests do. Counters and histograms are updated where things happen
(sessions, answered errors, first frames, finished jobs); scheduler gauges (jobs in flight,
queue depth, free KV-cache slots) and open sessions are read at scrape time, so they can never drift
from the truth. The process collector adds resident memory and CPU seconds (on Linux).
Out of scope: per-session labels (their number is unbounded).
"""
from typing import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Pre-created so every kind is exported (at 0) before it first happens.
ERROR_KINDS = ("invalid_json", "binary", "bad_message", "bad_field", "oversized", "busy",
               "synthesis", "loading", "not_reading", "full", "unauthorized", "rate_limited")
# Seconds; the target for one session on a 2-core CPU is 150 ms, so resolution sits there.
TTFA_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
# Audio seconds per synthesis wall second; below 1 a listener hears gaps.
RTF_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)


class _SchedulerCollector(Collector):
    """Reads ``Synthesizer.stats()`` once per scrape; all zero while the model loads."""

    def __init__(self, stats: Callable[[], dict | None]):
        self.stats = stats

    def collect(self):
        s = self.stats() or {"running": 0, "waiting": 0, "slots_free": 0}
        yield GaugeMetricFamily("soprano_jobs_inflight",
                                "synthesis jobs holding a place in the decode batch",
                                value=s["running"])
        yield GaugeMetricFamily("soprano_jobs_queued",
                                "synthesis jobs waiting for a place in the decode batch",
                                value=s["waiting"])
        yield GaugeMetricFamily("soprano_kv_lanes_free",
                                "places in the decode batch (KV-cache slots) not held by a job",
                                value=s["slots_free"])


class ServerMetrics:
    def __init__(self, stats: Callable[[], dict | None], open_sessions: Callable[[], int]):
        self.registry = r = CollectorRegistry()
        Gauge("soprano_sessions_open", "open /v1/stream WebSocket sessions",
              registry=r).set_function(open_sessions)
        self.sessions_opened = Counter("soprano_sessions_opened",
                                       "/v1/stream WebSocket sessions opened", registry=r)
        self.requests = Counter("soprano_requests", "HTTP requests (WebSocket upgrades included) "
                                "by route", ["endpoint"], registry=r)
        self.errors = Counter("soprano_errors", "error messages answered to clients, by kind",
                              ["kind"], registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.ttfa = Histogram("soprano_time_to_first_audio_seconds",
                              "from a text chunk's submission to synthesis (for a flush on an "
                              "idle session: from the flush) to its first audio frame written",
                              buckets=TTFA_BUCKETS, registry=r)
        self.rtf = Histogram("soprano_real_time_factor",
                             "audio seconds per synthesis wall second of each finished job "
                             "(x real time: above 1 is faster than playback)",
                             buckets=RTF_BUCKETS, registry=r)
        r.register(_SchedulerCollector(stats))
        ProcessCollector(registry=r)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
