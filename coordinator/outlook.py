"""The coordinator's outlook: wait times, model ETAs and service levels, from the real queue, the online
nodes' measured speeds (coordinator/estimates.py holds the rules) and the results delivered lately."""

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from coordinator.capabilities import row_demands
from coordinator.estimates import (
    FORECAST_ROWS,
    Forecast,
    Forecaster,
    build_forecast,
    capacity,
    network_speeds,
    unservable_reason,
)
from coordinator.overtaking import Arrival, Overtaking
from coordinator.preferences import UNSAFE_REFUSED, takes_address
from coordinator.queueing import AGEING_PER_SECOND, request_entry
from coordinator.roster import Roster, demand_key
from coordinator.services import Services
from coordinator.storage.records import QueueEntry, RequestRecord, Worker
from protocol.accounts import ModelStatus

# Service levels are measured over the results of the last 30 minutes (at most 2000 per model).
SERVICE_WINDOW_SECONDS = 30 * 60
SERVICE_SAMPLES = 2000
FIRST_IMAGES_REMEMBERED = 20_000
HELD_JOBS_READ = 20_000
ARRIVALS_KEPT = 5000
# A node waiting for work pops at least every 30 s; its stored `last_seen` is written every 45 s and read by
# other processes within 30 s more (roster.py): 75 s at most.
PLANNING_SEEN_SECONDS = 90.0
# A request's checks reuse the speed of the nodes able to serve it for `forecast_seconds`, as they reuse
# the forecast: summing it reads every one of them (1,000 a model at 10,000 online), and checks come
# several times a second.
CAPACITIES_KEPT = 4096
NETWORK_SPEEDS_SECONDS = 30.0
# The index of recent arrivals (`Overtaking`) is built again once this many arrived since, which it looks at
# one by one, or once it is this old (monotonic seconds: arrivals leave the window). Building it over 5,000
# arrivals takes ~1.5 ms; a check looks at the 256 added since in ~0.08 ms, and at the index in ~2 µs.
OVERTAKING_ADDED_MAX = 256
OVERTAKING_SECONDS = 1.0


@dataclass
class Outlook:
    """What a requester is told about one request."""

    wait_time: int
    possible: bool
    reason: str | None


def entries_from_rows(rows: list[dict[str, Any]], lists: dict[str, list[str]]) -> list[QueueEntry]:
    """Queue rows (one per model a job may run on, in pop's order) as one entry per job, in that order."""
    entries: dict[str, QueueEntry] = {}
    any_model: set[str] = set()
    for row in rows:
        entry = entries.get(row["job_id"])
        if entry is None:
            entry = entries[row["job_id"]] = QueueEntry(
                job_id=row["job_id"],
                request_id=row["request_id"],
                models=[],
                tier=int(row["tier"]),
                rank=float(row["rank"]),
                **row_demands(row),
                workers=lists.get(row["request_id"], []),
                worker_blacklist=bool(row["worker_blacklist"]),
            )
        if row["model"]:
            entry.models.append(row["model"])
        else:
            any_model.add(row["job_id"])
    for job_id in any_model:  # a row for "any model" lifts the model restriction
        entries[job_id].models = []
    return list(entries.values())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class ServiceLevels:
    """Time to first image and time to done of recent requests, per model (in this process's memory)."""

    def __init__(self) -> None:
        self._samples: dict[str, dict[str, deque[tuple[float, float]]]] = {}
        self._first_seen: OrderedDict[str, None] = OrderedDict()

    def record(self, request: RequestRecord, model: str, now: float) -> None:
        """A result of `request` was stored on `model`; its first, and (state done) its last."""
        kinds = self._samples.setdefault(
            model, {"first": deque(maxlen=SERVICE_SAMPLES), "done": deque(maxlen=SERVICE_SAMPLES)}
        )
        if request.id not in self._first_seen:
            self._first_seen[request.id] = None
            if len(self._first_seen) > FIRST_IMAGES_REMEMBERED:
                self._first_seen.popitem(last=False)
            kinds["first"].append((now, now - request.created))
        if request.state == "done":
            kinds["done"].append((now, now - request.created))

    def summary(self, model: str, now: float) -> dict[str, float | None]:
        """p50 and p95 of both, in seconds, over the window; None without a sample."""
        answer: dict[str, float | None] = {}
        for kind, label in (("first", "time_to_first_image"), ("done", "time_to_done")):
            samples = self._samples.get(model, {}).get(kind, ())
            values = [value for at, value in samples if now - at <= SERVICE_WINDOW_SECONDS]
            for share, suffix in ((0.5, "p50"), (0.95, "p95")):
                answer[f"{label}_{suffix}"] = round(percentile(values, share), 1) if values else None
        return answer


class Outlooks:
    def __init__(self, services: Services, roster: Roster) -> None:
        self.services = services
        self.roster = roster
        self.forecaster = Forecaster(services.clock, services.config.forecast_seconds)
        self.service_levels = ServiceLevels()
        self.arrivals: deque[Arrival] = deque(maxlen=ARRIVALS_KEPT)
        self._overtaking: tuple[float, Overtaking] | None = None  # (when built, monotonic; the index)
        self._capacities: dict[tuple[Any, ...], tuple[float, float]] = {}  # key → (when summed, speed)
        self._network: tuple[float, dict[str, float]] = (float("-inf"), {})  # (when taken, speeds)

    async def forecast(self) -> Forecast:
        return await self.forecaster.current(self._build)

    async def _build(self) -> Forecast:
        online = await self.roster.online_caps()
        async with self.services.database.reader() as tx:
            rows = await tx.queue_head(FORECAST_ROWS)
            lists = await tx.worker_lists({row["request_id"] for row in rows if row["named"]})
            held = await tx.jobs_in_progress(HELD_JOBS_READ)
        now = self.services.clock()
        # Online counts a node for minutes after its last pop; plans count only those popping lately (a
        # node that left mid-queue stops making work long before it stops being listed), or holding jobs.
        holding = {job.worker_id for job in held}
        active = [(w, caps) for w, caps in online if w.last_seen >= now - PLANNING_SEEN_SECONDS or w.id in holding]
        workers = [worker for worker, _ in active]
        return build_forecast(
            workers,
            [caps for _, caps in active],
            entries_from_rows(rows, lists),
            held,
            complete=len(rows) < FORECAST_ROWS,
            now=now,
            network=self._network_speeds(workers),
        )

    def _network_speeds(self, workers: list[Worker]) -> dict[str, float]:
        """`network_speeds` of the online nodes, taken again at most every NETWORK_SPEEDS_SECONDS: a median
        over every one of them (10 ms at 10,000) for a stand-in that moves slowly."""
        now = self.services.clock()
        if not 0 <= now - self._network[0] < NETWORK_SPEEDS_SECONDS:
            self._network = (now, network_speeds(workers))
        return self._network[1]

    async def request(self, request: RequestRecord, waiting: int, unfinished: int) -> Outlook:
        """The wait for `request`'s unfinished images, or why no online node can serve them."""
        if not unfinished:
            return Outlook(0, True, None)
        entry = request_entry("", request)
        can = await self.roster.able(entry)
        # The address rule is the node's own pop word on the request, not a queue column (preferences.py).
        able = [worker for worker in can if takes_address(request, worker.allow_unsafe_ip)]
        if not able and waiting:
            online = [caps for _, caps in await self.roster.online_caps()]
            return Outlook(0, False, UNSAFE_REFUSED if can else unservable_reason(entry, online))
        forecast, now = await self.forecast(), self.services.clock()
        speed = self._capacity(entry, request, able)
        wait = forecast.wait(request.id, now)
        if wait is None:
            params = request.generation.params
            own = params.width * params.height * params.steps / 1e6 * unfinished
            wait = forecast.fallback(request.tier, request.rank, own, speed, now)
        if waiting:  # later requests that will pass it, while any of its images waits
            priority, base = request.rank + AGEING_PER_SECOND * request.created, wait
            overtaking = self._overtaking_index(now)
            for _ in range(3 if overtaking else 0):  # their share grows with the wait: a few rounds settle it
                wait = base + round(overtaking.work(priority, entry.models, wait, now) / max(speed, 1e-6))
        return Outlook(wait, True, None)

    def _overtaking_index(self, now: float) -> Overtaking:
        """The recent arrivals' index, built again when many arrived since or it is a second old."""
        if self._overtaking is not None:
            built, index = self._overtaking
            if len(index.added) < OVERTAKING_ADDED_MAX and time.monotonic() - built <= OVERTAKING_SECONDS:
                return index
        index = Overtaking(self.arrivals, now, AGEING_PER_SECOND)
        self._overtaking = (time.monotonic(), index)
        return index

    def _capacity(self, entry: QueueEntry, request: RequestRecord, able: list[Worker]) -> float:
        """Megapixelsteps per second of the nodes `able` to serve `entry`, summed at most every
        `forecast_seconds`."""
        key, now = (demand_key(entry), request.unsafe_ip), self.services.clock()
        summed = self._capacities.get(key)
        if summed is None or not 0 <= now - summed[0] < self.services.config.forecast_seconds:
            if len(self._capacities) >= CAPACITIES_KEPT:
                self._capacities.clear()
            speed = capacity(able, entry.models[0] if entry.models else None, network_speeds(able))
            summed = self._capacities[key] = (now, speed)
        return summed[1]

    def arrived(self, request: RequestRecord, images: int) -> None:
        """A request was queued (the rate of requests that may pass others, `Overtaking`)."""
        self.forecaster.invalidate()
        params = request.generation.params
        arrival = Arrival(
            at=request.created,
            priority=request.rank + AGEING_PER_SECOND * request.created,
            work=params.width * params.height * params.steps * images / 1e6,
            models=tuple(dict.fromkeys(request.generation.models)),
        )
        self.arrivals.append(arrival)
        if self._overtaking is not None:
            if len(self._overtaking[1].added) < OVERTAKING_ADDED_MAX:
                self._overtaking[1].add(arrival)
            else:
                self._overtaking = None  # built again when next asked, from `arrivals`

    async def model_statuses(self) -> list[ModelStatus]:
        """Per model: online nodes, their measured speed together, the queue that may run on it (a request
        for any model counts for every model), when that queue is predicted to be done, service levels."""
        online = await self.roster.online()
        async with self.services.database.reader() as tx:
            queued = {row["model"]: row for row in await tx.queue_by_model()}
        forecast, now = await self.forecast(), self.services.clock()
        network = network_speeds(online)
        anywhere = queued.get("", {"jobs": 0, "pixelsteps": 0})
        answer = []
        for name in sorted({model for worker in online for model in worker.models} | (set(queued) - {""})):
            serving = [worker for worker in online if name in worker.models]
            row = queued.get(name, {"jobs": 0, "pixelsteps": 0})
            drained = forecast.drained.get(name)
            answer.append(
                ModelStatus(
                    name=name,
                    count=len(serving),
                    performance=round(capacity(serving, name, network), 3),
                    queued=float((row["pixelsteps"] or 0) + (anywhere["pixelsteps"] or 0)),
                    jobs=int((row["jobs"] or 0) + (anywhere["jobs"] or 0)),
                    eta=max(0, round(drained - now)) if serving and drained is not None else 0,
                    **self.service_levels.summary(name, now),
                )
            )
        return answer

    async def network(self) -> tuple[float, int]:
        """The online nodes' measured speed together, and seconds until the queue is predicted empty."""
        online = await self.roster.online()
        forecast, now = await self.forecast(), self.services.clock()
        speed = capacity(online, None, network_speeds(online))
        return round(speed, 3), max(0, round(max(forecast.drained.values(), default=now) - now))
