"""Prometheus metrics (`GET /metrics`), from the prometheus-client library.

Two kinds:

- **Events this process saw** (requests, latencies, pops, dispatches, faults, statements, webhooks,
  streams): counters and histograms in the library's default registry, moved where the event
  happens. Several processes behind one PostgreSQL each report their own; Prometheus sums them.
- **State of the network** (jobs by state, the queue per model, nodes online, kudos): read from the
  database at scrape time, so every process reports the same figures, which survive restarts. Kudos
  minted and spent are counters over the append-only ledger, read incrementally from the last
  entry this process has already counted.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from coordinator.storage.records import JOB_STATES
from protocol.ledger import from_hundredths

# Buckets for HTTP answers and pops: a pop or a check may be held up to 30 s (long-poll).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A job waits in the queue from seconds to hours.
DISPATCH_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
# Statements are microseconds (SQLite) to milliseconds (PostgreSQL over a network).
STATEMENT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0)
# How many ledger entries one scrape reads at most: a first scrape of a long ledger catches up over
# several scrapes instead of holding the database for seconds.
LEDGER_ENTRIES_PER_SCRAPE = 50_000
LEDGER_BATCH = 5_000

HTTP_REQUESTS = Counter(
    "horde_http_requests", "HTTP requests answered, by route, method and status.", ["endpoint", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "horde_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
POP_LATENCY = Histogram(
    "horde_pop_duration_seconds",
    "Time a node's pop took to answer (includes its long-poll wait).",
    buckets=LATENCY_BUCKETS,
)
DISPATCH_LATENCY = Histogram(
    "horde_dispatch_latency_seconds",
    "Time from a request's arrival to one of its jobs being handed to a node.",
    buckets=DISPATCH_BUCKETS,
)
JOB_FAULTS = Counter("horde_job_faults", "Jobs that failed on a node (reported fault or missed time limit).", ["cause"])
STATEMENT_LATENCY = Histogram(
    "horde_db_statement_duration_seconds",
    "Time of one database statement.",
    ["operation"],
    buckets=STATEMENT_BUCKETS,
)
STREAMS_OPEN = Gauge("horde_streams_open", "Progress streams (server-sent events) open now.")
LONG_POLLS_PARKED = Gauge("horde_long_polls_parked", "Long-polls waiting now, by kind (pop, check).", ["kind"])
WEBHOOK_DELIVERIES = Counter(
    "horde_webhook_deliveries", "Webhook POSTs, by outcome (delivered, retried, abandoned, refused).", ["outcome"]
)
DB_ROUND_TRIPS = Counter(
    "horde_db_round_trips",
    "Round trips to the PostgreSQL server, by the route whose handling made them "
    "('background': upkeep and other chores).",
    ["endpoint"],
)
# The route being answered, for the metrics of work done on its behalf deeper down (storage).
ENDPOINT: ContextVar[str] = ContextVar("endpoint", default="background")


# One child per statement kind, looked up once: a pop runs several statements, each timed.
_EXECUTE, _EXECUTEMANY, _FETCHONE, _FETCHALL = (
    STATEMENT_LATENCY.labels(kind) for kind in ("execute", "executemany", "fetchone", "fetchall")
)


class TimedDriver:
    """A storage driver whose statements are timed (wraps either engine's driver)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    async def execute(self, sql: str, args: Sequence[Any] = (), *, by_itself: bool = False) -> int:
        with _EXECUTE.time():
            return await self._driver.execute(sql, args, by_itself=by_itself)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with _EXECUTEMANY.time():
            await self._driver.executemany(sql, rows)

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with _FETCHONE.time():
            return await self._driver.fetchone(sql, args)

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with _FETCHALL.time():
            return await self._driver.fetchall(sql, args)


def route_name(request: web.Request) -> str:
    """The route's template (`/api/v2/generate/check/{id}`), never the path itself, so the number of
    label values stays that of the routes whatever clients send."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: counts every answer, including the `{message, rc}` ones."""
    started = time.perf_counter()
    status = 500
    endpoint = route_name(request)
    token = ENDPOINT.set(endpoint)
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        ENDPOINT.reset(token)
        elapsed = time.perf_counter() - started
        HTTP_REQUESTS.labels(endpoint, request.method, str(status)).inc()
        HTTP_LATENCY.labels(endpoint).observe(elapsed)
        if endpoint == "/api/v2/generate/pop":
            POP_LATENCY.observe(elapsed)


@dataclass
class NetworkState:
    """The figures read from the database for one scrape."""

    jobs: dict[str, int] = field(default_factory=dict)
    queue: list[tuple[str, int, float]] = field(default_factory=list)  # model, jobs, megapixelsteps
    nodes_online: int = 0
    kudos_held: float = 0.0


@dataclass
class LedgerTotals:
    """Kudos minted (entered from no account) and spent on images, over the ledger up to `seq`."""

    seq: int = 0
    minted: float = 0.0
    spent: float = 0.0


class NetworkCollector(Collector):
    def __init__(self) -> None:
        self.state = NetworkState()
        self.ledger = LedgerTotals()

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("horde_jobs", "Jobs by state.", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], self.state.jobs.get(state, 0))
        depth = GaugeMetricFamily("horde_queue_jobs", "Waiting jobs per model ('' = any model).", labels=["model"])
        work = GaugeMetricFamily("horde_queue_megapixelsteps", "Queued megapixelsteps per model.", labels=["model"])
        for model, count, megapixelsteps in self.state.queue:
            depth.add_metric([model], count)
            work.add_metric([model], megapixelsteps)
        yield from (jobs, depth, work)
        yield GaugeMetricFamily(
            "horde_nodes_online", "Nodes seen recently and not in maintenance.", value=self.state.nodes_online
        )
        yield GaugeMetricFamily("horde_kudos_held", "Kudos held by all accounts.", value=self.state.kudos_held)
        yield CounterMetricFamily(
            "horde_kudos_minted", "Kudos created (rewards, uptime, grants).", value=self.ledger.minted
        )
        yield CounterMetricFamily("horde_kudos_spent", "Kudos requesters paid for images.", value=self.ledger.spent)


class Metrics:
    """One coordinator's metrics endpoint: the process's events plus its network's state."""

    def __init__(self) -> None:
        self.collector = NetworkCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        # One refresh at a time: two scrapes reading the ledger from the same entry would count it twice.
        self._refreshing = asyncio.Lock()

    async def refresh(self, broker: Any) -> None:
        async with self._refreshing:
            await self._refresh(broker)

    async def _refresh(self, broker: Any) -> None:
        services = broker.services
        async with services.database.reader() as tx:
            jobs = await tx.jobs_by_state()
            queue = [
                (row["model"], int(row["jobs"]), float(row["pixelsteps"] or 0) / 1e6)
                for row in await tx.queue_by_model()
            ]
            held = from_hundredths(sum((await tx.cached_hundredths()).values()))
        await self._read_ledger(services.database)
        online = len(await broker.roster.online())
        self.collector.state = NetworkState(jobs=jobs, queue=queue, nodes_online=online, kudos_held=held)

    async def _read_ledger(self, database: Any) -> None:
        totals = self.collector.ledger
        async for entries in self._new_entries(database, totals.seq):
            for entry in entries:
                if entry.source is None and entry.amount > 0:
                    totals.minted = round(totals.minted + entry.amount, 2)
                if entry.kind == "spend":
                    totals.spent = round(totals.spent + entry.amount, 2)
                totals.seq = entry.seq

    @staticmethod
    async def _new_entries(database: Any, after: int) -> AsyncIterator[list[Any]]:
        read = 0
        while read < LEDGER_ENTRIES_PER_SCRAPE:
            async with database.reader() as tx:
                entries = await tx.ledger_entries(after, LEDGER_BATCH)
            if not entries:
                return
            yield entries
            after, read = entries[-1].seq, read + len(entries)

    def exposition(self) -> bytes:
        return generate_latest(REGISTRY) + generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)
