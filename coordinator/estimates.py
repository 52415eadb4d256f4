"""What a requester is told about the future: can anyone serve this, and how long will it take.

Speeds are measured: each node's megapixelsteps per second per model, from its own finished jobs
(`record_speed`, called when a result is stored). Waits come from the real queue: `simulate` plays
pop's rule forward (the node that is free first takes the best waiting job it can serve, in
pop's order of tier and rank, which includes ageing) over the online nodes at their measured
speeds, starting from the jobs they hold now. A request's wait is when its last image is
predicted to finish. `Forecaster` reruns the simulation at most once per `forecast_seconds`, so
a check costs a dictionary lookup, not a pass over the queue.
"""

import asyncio
import bisect
import heapq
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from statistics import median

from coordinator.capabilities import CAPABILITIES, model_allows, on_model
from coordinator.events import can_serve
from coordinator.storage.records import JobRecord, QueueEntry, Worker, WorkerCaps

# Until a node has a measured speed (and no node has one for the model), assume a mid-range GPU.
DEFAULT_SPEED_MPS = 1.0
# Each new result weighs as much as the last five together (decayed sums: old ones fade by 0.8 each).
SPEED_DECAY = 0.8
# After a node's first two results for a model, a single result more than 4× faster or slower than its
# speed so far counts as 4×: a stall (a network hiccup, a swap) must not halve an ETA for minutes.
OUTLIER_FACTOR = 4.0
# The simulation plays the first FORECAST_ROWS queue rows; jobs further down are estimated from the
# work ahead of them and the network's speed (`Forecast.fallback`).
FORECAST_ROWS = 4000
# How far down the waiting jobs a free node looks for one it can serve before it counts as idle.
SCAN_DEPTH = 256


# --- measured speeds ---------------------------------------------------------------
def job_work_started(worker: Worker, assigned_at: float | None, now: float) -> float:
    """When the node began this job's work: at its assignment, or, for a node holding several jobs (a
    batch, or a queue), when it delivered the previous one (issue 11 staggers their deadlines; the
    node still makes them one after another). The idle time before a pop never counts."""
    start = assigned_at if assigned_at is not None else now
    return min(max(start, worker.last_result_at), now)


def record_speed(worker: Worker, model: str, megapixelsteps: float, assigned_at: float | None, now: float) -> None:
    """Add one finished job to the node's measured speed for `model`.

    The first result for a model pays for loading it, so the second replaces it rather than blending
    with it; from then on, decayed sums (work over time, so many small jobs and a few large ones
    weigh by their work) with single results bounded to 4× the speed so far on one-thread nodes
    (a node running threads in parallel legitimately delivers two results in one instant).
    """
    seconds = max(now - job_work_started(worker, assigned_at, now), 1e-3)
    worker.last_result_at = now
    if megapixelsteps <= 0:
        return
    work, total, results = worker.speeds.get(model, [0.0, 0.0, 0])
    if results >= 2 and worker.threads <= 1 and total > 0:
        speed = work / total
        seconds = min(max(seconds, megapixelsteps / (speed * OUTLIER_FACTOR)), megapixelsteps * OUTLIER_FACTOR / speed)
    if results <= 1:
        work, total = megapixelsteps, seconds
    else:
        work, total = work * SPEED_DECAY + megapixelsteps, total * SPEED_DECAY + seconds
    worker.speeds[model] = [round(work, 6), round(total, 6), int(results) + 1]


def quicker_than_measured(
    worker: Worker, model: str, megapixelsteps: float, assigned_at: float | None, now: float, fraction: float
) -> bool:
    """Whether a result came back in under `fraction` of the time the node's measured speed on `model` needs
    for its work: the free signal that sends a cheaper image (fewer steps, noise, a copy) to a spot check
    (coordinator/verification.py). Read before the result joins the speed, and only once a result past the
    first (which pays for loading the model) has been measured; a node running threads in parallel is timed
    from the job's assignment, an upper bound on its work time, since its previous delivery says nothing of
    this job."""
    work, total, results = worker.speeds.get(model, [0.0, 0.0, 0])
    if results < 2 or work <= 0 or total <= 0 or megapixelsteps <= 0:
        return False
    started = job_work_started(worker, assigned_at, now) if worker.threads <= 1 else (assigned_at or now)
    return now - started < fraction * megapixelsteps * total / work


def measured_speed(worker: Worker, model: str | None = None) -> float | None:
    """The node's megapixelsteps per second for `model` (None: over all its models), if measured."""
    rows = [worker.speeds[model]] if model in worker.speeds else [] if model else list(worker.speeds.values())
    work, seconds = sum(row[0] for row in rows), sum(row[1] for row in rows)
    return work / seconds if seconds > 0 else None


def speed_for(worker: Worker, model: str, network: dict[str, float]) -> float:
    """The speed to plan with: measured for the model, else the node's own over its models, else the
    median of the nodes measured on the model, else the default."""
    return measured_speed(worker, model) or measured_speed(worker) or network.get(model) or DEFAULT_SPEED_MPS


def network_speeds(workers: list[Worker]) -> dict[str, float]:
    """Per model, the median measured speed of the nodes that have one (a newcomer's stand-in)."""
    samples: dict[str, list[float]] = {}
    for worker in workers:
        for model in worker.speeds:
            if (speed := measured_speed(worker, model)) is not None:
                samples.setdefault(model, []).append(speed)
    return {model: median(values) for model, values in samples.items()}


def job_megapixelsteps(job: JobRecord) -> float:
    payload = (job.job_document or {}).get("payload", {})
    return payload.get("width", 0) * payload.get("height", 0) * payload.get("ddim_steps", 0) / 1e6


# --- who can serve a request ---------------------------------------------------------
def unservable_reason(entry: QueueEntry, online: list[WorkerCaps]) -> str:
    """Why no online node can serve `entry`: the first requirement that no node meets (the capability
    table's words), else the worker list, else the mix."""
    if not online:
        return "No node is online."
    if entry.models and not any(set(entry.models) & set(caps.models) for caps in online):
        return f"No online node serves {', '.join(entry.models)}."
    able = [on_model(caps, model) for caps in online for model in (entry.models or [""]) if model_allows(caps, model)]
    for capability in CAPABILITIES:
        if not any(capability.allows(caps, getattr(entry, capability.column)) for caps in able):
            return f"No online node {capability.words}."
    if entry.workers:
        return "No online node is allowed by the request's worker list."
    return "No online node meets all of the request's requirements together."


# --- the simulation --------------------------------------------------------------------
@dataclass
class SimNode:
    worker: Worker
    caps: WorkerCaps
    network: dict[str, float]

    def model_for(self, entry: QueueEntry) -> str:
        """The model the node would run the job on, as pop picks it."""
        chosen = next((model for model in entry.models if model in self.caps.models), None)
        return chosen or (self.caps.models[0] if self.caps.models else "")

    speeds: dict[str, float] = field(default_factory=dict)  # per model, looked up once per forecast

    def seconds(self, work: float, model: str) -> float:
        if model not in self.speeds:
            self.speeds[model] = speed_for(self.worker, model, self.network)
        return work / self.speeds[model]


@dataclass
class WaitingJob:
    entry: QueueEntry
    key: tuple[int, float]  # pop's order: (tier, rank), highest first

    @property
    def work(self) -> float:
        return self.entry.pixels * self.entry.steps / 1e6


class SimNodes:
    """The simulation's nodes, each made a SimNode when the simulation first reaches it."""

    def __init__(self, workers: list[Worker], caps: list[WorkerCaps], network: dict[str, float]) -> None:
        self.workers, self.caps, self.network = workers, caps, network
        self._made: dict[int, SimNode] = {}

    def __getitem__(self, index: int) -> SimNode:
        node = self._made.get(index)
        if node is None:
            node = self._made[index] = SimNode(self.workers[index], self.caps[index], self.network)
        return node


def node_free_at(node: SimNode, held: list[JobRecord], now: float) -> tuple[float, dict[str, float]]:
    """When the node finishes the jobs it holds, and each one's predicted finish: it works through them
    in the order it got them, from when it began (`job_work_started`), at its measured speed."""
    clock = job_work_started(node.worker, min((job.assigned_at or now) for job in held), now) if held else now
    finishes: dict[str, float] = {}
    for job in sorted(held, key=lambda job: (job.assigned_at or now, job.index)):
        clock += node.seconds(job_megapixelsteps(job), job.model or "") / max(node.worker.threads, 1)
        finishes[job.request_id] = max(finishes.get(job.request_id, now), clock)
    return max(clock, now), finishes


def simulate(
    nodes: SimNodes, held: dict[str, list[JobRecord]], waiting: list[WaitingJob], now: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Play pop forward: predicted finish per request (its last image) and per model (its queue drained).

    Each node is `threads` slots at 1/threads of its speed; the slot free first takes the first waiting
    job, in pop's order, its node can serve (looking SCAN_DEPTH jobs down), as pop does. Nodes holding
    nothing are free now and take their turns in order, ahead of every busy one, so they need no place in
    the heap until they have a job: with few jobs waiting, most of 10,000 online nodes are never looked at.
    """
    finish: dict[str, float] = {}
    slots: list[tuple[float, int, int]] = []  # (free at, order, node index), busy nodes only
    idle: list[int] = []
    for index, worker in enumerate(nodes.workers):
        jobs = held.get(worker.id)
        if not jobs:
            idle.append(index)
            continue
        free_at, held_finishes = node_free_at(nodes[index], jobs, now)
        for request_id, at in held_finishes.items():
            finish[request_id] = max(finish.get(request_id, now), at)
        slots += [(free_at, order, index) for order in slot_orders(index, worker)]
    heapq.heapify(slots)
    free_now = ((now, order, index) for index in idle for order in slot_orders(index, nodes.workers[index]))
    upcoming = next(free_now, None)
    drained: dict[str, float] = {}
    taken = [False] * len(waiting)
    first = 0
    while (slots or upcoming) and first < len(waiting):
        if upcoming is not None and (not slots or upcoming < slots[0]):
            (free_at, order, index), upcoming = upcoming, next(free_now, None)
        else:
            free_at, order, index = heapq.heappop(slots)
        node = nodes[index]
        position = next(
            (
                i
                for i in range(first, min(len(waiting), first + SCAN_DEPTH))
                if not taken[i] and can_serve(node.caps, waiting[i].entry)
            ),
            None,
        )
        if position is None:
            continue  # nothing near the head for this node: it idles as far as the forecast can tell
        job = waiting[position]
        taken[position] = True
        model = node.model_for(job.entry)
        done_at = free_at + node.seconds(job.work, model) * max(node.worker.threads, 1)
        finish[job.entry.request_id] = max(finish.get(job.entry.request_id, now), done_at)
        for name in job.entry.models or [model]:
            drained[name] = max(drained.get(name, now), done_at)
        while first < len(waiting) and taken[first]:
            first += 1
        heapq.heappush(slots, (done_at, order, index))
    return finish, drained


def slot_orders(index: int, worker: Worker) -> range:
    """The order of a node's slots among all nodes' (ties at the same time go to the lower)."""
    return range(index * 64, index * 64 + max(1, min(worker.threads, 64)))


# --- the forecast ------------------------------------------------------------------------
@dataclass
class Forecast:
    made_at: float
    finish: dict[str, float] = field(default_factory=dict)  # request id → its last image's predicted finish
    drained: dict[str, float] = field(default_factory=dict)  # model → when its queued jobs are done
    keys: list[tuple[int, float]] = field(default_factory=list)  # negated pop order, ascending
    work_ahead: list[float] = field(default_factory=list)  # cumulative megapixelsteps up to each key
    complete: bool = True  # every waiting job was simulated

    def fallback(self, tier: int, rank: float, own_work: float, speed: float, now: float) -> int:
        """A request the simulation did not reach (below its horizon, or queued since): the work ahead
        of it in pop's order, plus its own, over the speed of the nodes that can serve it."""
        ahead = bisect.bisect_left(self.keys, (-tier, -rank))
        work = self.work_ahead[ahead - 1] if ahead else 0.0
        return round((work + own_work) / max(speed, 1e-6) + max(self.made_at - now, 0.0))

    def wait(self, request_id: str, now: float) -> int | None:
        at = self.finish.get(request_id)
        return None if at is None else max(0, round(at - now))


def build_forecast(
    workers: list[Worker],
    caps: list[WorkerCaps],
    entries: list[QueueEntry],
    held: list[JobRecord],
    complete: bool,
    now: float,
    network: dict[str, float],
) -> Forecast:
    """`network`: `network_speeds` of the online nodes (a newcomer's stand-in)."""
    nodes = SimNodes(workers, caps, network)
    by_node: dict[str, list[JobRecord]] = {}
    for job in held:
        by_node.setdefault(job.worker_id or "", []).append(job)
    waiting = [WaitingJob(entry, (entry.tier, entry.rank)) for entry in entries]
    finish, drained = simulate(nodes, by_node, waiting, now)
    online = {worker.id for worker in workers} if held else set()
    for job in held:  # a job held by a node gone offline: back in the queue at its deadline, at the earliest
        if job.worker_id not in online:
            finish[job.request_id] = max(finish.get(job.request_id, now), job.deadline or now)
    keys, work_ahead, total = [], [], 0.0
    for queued in waiting:
        total += queued.work
        keys.append((-queued.key[0], -queued.key[1]))
        work_ahead.append(total)
    return Forecast(made_at=now, finish=finish, drained=drained, keys=keys, work_ahead=work_ahead, complete=complete)


class Forecaster:
    """The latest forecast, rebuilt when older than `max_age` seconds (one rebuild at a time); sooner once
    the queue changed here (`invalidate`: a new request should see itself in it), but never more than a
    tenth of the time spent rebuilding."""

    def __init__(self, clock: Callable[[], float], max_age: float) -> None:
        self.clock = clock
        self.max_age = max_age
        self._forecast: Forecast | None = None
        self._built = float("-inf")  # monotonic, so a test's frozen clock still refreshes
        self._cost = 0.0
        self._dirty = False
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._dirty = True

    def _stale(self) -> bool:
        age = time.monotonic() - self._built
        return self._forecast is None or age > self.max_age or (self._dirty and age > max(0.1, 10 * self._cost))

    async def current(self, load: Callable[[], Awaitable[Forecast]]) -> Forecast:
        if not self._stale():
            assert self._forecast is not None
            return self._forecast
        async with self._lock:
            if self._stale():
                started, self._dirty = time.monotonic(), False
                self._forecast = await load()
                self._built, self._cost = started, time.monotonic() - started
        assert self._forecast is not None
        return self._forecast


def capacity(workers: list[Worker], model: str | None, network: dict[str, float]) -> float:
    """Megapixelsteps per second the nodes can make of `model` (None: each at its own first model)."""
    return sum(speed_for(worker, model or (worker.models[0] if worker.models else ""), network) for worker in workers)
