"""The node's Prometheus metrics (`--metrics-port`), from the prometheus-client library: jobs by outcome,
images (their rate is images/s), step time, kudos and kudos/hour, RAM and VRAM, the spool's depth.

Served from the library's own HTTP thread, which reads the daemon's counters when scraped: plain numbers
written by the event loop, so a scrape never waits on it or on the inference thread.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from transport.process import resident_bytes

if TYPE_CHECKING:
    from node.daemon import NodeDaemon

STEP_SECONDS = Histogram(
    "horde_node_step_seconds",
    "Seconds per denoising step of a finished job (its time over its steps).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def vram_bytes() -> dict[str, float]:
    """Memory torch holds on each CUDA device; nothing when torch is not loaded or there is no GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": float(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count())}


class NodeCollector(Collector):
    def __init__(self, daemon: NodeDaemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        stats = self.daemon.stats
        jobs = CounterMetricFamily("horde_node_jobs", "Jobs by outcome.", labels=["outcome"])
        for outcome, count in (
            ("done", stats.jobs_done),
            ("faulted", stats.jobs_faulted),
            ("refused", stats.jobs_refused),
            ("submitted", stats.jobs_submitted),
        ):
            jobs.add_metric([outcome], count)
        yield jobs
        yield CounterMetricFamily("horde_node_images", "Images made (rate() is images/s).", value=stats.jobs_done)
        yield CounterMetricFamily("horde_node_kudos_earned", "Kudos earned since start.", value=stats.kudos_earned)
        per_hour = stats.kudos_per_hour(time.monotonic()) if stats.started_at else 0.0
        yield GaugeMetricFamily("horde_node_kudos_per_hour", "Kudos earned per hour since start.", value=per_hour)
        yield GaugeMetricFamily(
            "horde_node_spool_depth", "Results waiting to be delivered.", value=len(self.daemon.spool)
        )
        yield GaugeMetricFamily("horde_node_ram_bytes", "Resident memory of the node process.", value=resident_bytes())
        vram = GaugeMetricFamily("horde_node_vram_bytes", "GPU memory held by torch.", labels=["device"])
        for device, used in vram_bytes().items():
            vram.add_metric([device], used)
        yield vram


def serve_metrics(daemon: NodeDaemon, port: int, address: str = "127.0.0.1") -> None:
    """Start the metrics HTTP server (a daemon thread) for this node."""
    from prometheus_client import REGISTRY

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(daemon))
    registry.register(_Default(REGISTRY))
    start_http_server(port, addr=address, registry=registry)


class _Default(Collector):
    """The library's default registry (the step histogram, process metrics) beside the node's own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()
