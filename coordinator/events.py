"""In-process wake-ups for long-polls: a node waiting for a job, a requester waiting for
a request to change. Engines that span processes (PostgreSQL) feed the same hub from
their notifications, so a job queued on one process wakes a node waiting on another.

A waiter registers *before* it looks at the database, so a change that lands between its
look and its wait still wakes it.

A new job is *offered* to one parked node that can serve it (`can_serve`, from the capability
table), found through an index of parked nodes by model: the cost is the nodes serving that
model, never all parked nodes. The woken node reports back (`settle`): the offer ends when it
took the job or found nothing it could serve (someone else took it); otherwise (it may not take
this one: a failure here, its word blacklist, a price not reserved) the offer moves to the next
node, so one job wakes nodes one at a time until it is claimed. The announcement to other
processes carries each job's demands (`jobs_messages`), so they offer it the same way.
"""

import asyncio
import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

from coordinator.capabilities import first_unmet
from coordinator.metrics import LONG_POLLS_PARKED
from coordinator.queueing import worker_list_allows
from coordinator.storage.records import QueueEntry, RequestRecord, WorkerCaps
from coordinator.storage.sql import Tx

# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; leave room for the envelope.
MAX_MESSAGE_BYTES = 7000


def can_serve(caps: WorkerCaps, entry: QueueEntry) -> bool:
    """The cheap checks a wake-up uses; the pop query makes the final decision. Only one node is woken
    per job, so every check the pop makes on the entry's columns must be here too, or the wake-up goes
    to a node that cannot take the job while one that can sleeps on."""
    models = [model for model in entry.models if model in caps.models] if entry.models else [""]
    return (
        any(first_unmet(caps, lambda column: getattr(entry, column), model) is None for model in models)
        and _named_allows(caps, entry)
        and caps.worker_id not in entry.excluded
    )


def _named_allows(caps: WorkerCaps, entry: QueueEntry) -> bool:
    return worker_list_allows(entry.workers, entry.worker_blacklist, caps.worker_id, caps.worker_name)


@dataclass(eq=False)
class Offer:
    """A job looking for a parked node; `tried`: the nodes it was offered to."""

    entry: QueueEntry
    tried: set["JobWaiter"] = field(default_factory=set)


@dataclass(eq=False)
class JobWaiter:
    caps: WorkerCaps
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    idle: bool = False  # True while parked in wait(); such waiters are woken first
    offer: Offer | None = None  # the job it was woken for, until it reports back

    async def wait(self, timeout: float) -> bool:
        if self.woken.is_set():
            return True
        self.idle = True
        try:
            return await wait_for(self.woken, timeout)
        finally:
            self.idle = False

    def take(self) -> Offer | None:
        """Before a look at the queue: what it was woken for (a wake-up from now on is a new one)."""
        self.woken.clear()
        offer, self.offer = self.offer, None
        return offer


class EventHub:
    def __init__(self) -> None:
        self.closing = False  # set at shutdown: every long-poll answers now, and new ones do not wait
        self._job_waiters: dict[JobWaiter, None] = {}  # parked nodes, oldest first (an ordered set)
        self._by_model: dict[str, dict[JobWaiter, None]] = defaultdict(dict)
        self._offers: dict[str, Offer] = {}  # by job id: jobs offered and not yet claimed or given up
        self._request_waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.request_listeners: list[Callable[[str], None]] = []
        self.accepted_listeners: list[Callable[[RequestRecord], None]] = []  # told of each request accepted here
        self.wakeups = 0  # nodes woken for a job since start (tests and bench/scale.py count them)
        # Long-polls parked right now, by what they wait for ("pop:<node name>", "check:<request id>"):
        # a test waits on this (`until_parked`) instead of sleeping and hoping its long-poll got there.
        self._parked: Counter[str] = Counter()
        self._parked_news = asyncio.Event()

    # --- jobs for parked nodes ---------------------------------------------------------------------
    def jobs_queued(self, entries: Iterable[QueueEntry]) -> None:
        """Offer each new job to one parked node that can serve it, idle and oldest first."""
        for entry in entries:
            offer = Offer(entry)
            self._offers[entry.job_id] = offer
            self._offer(offer)

    def jobs_announced(self, message: str) -> None:
        """Another process queued jobs (`jobs_messages`); a message we cannot read wakes every node."""
        try:
            entries = read_jobs_message(message)
        except (ValueError, TypeError, KeyError):
            # Also what a reconnected LISTEN sends: announcements may have been missed, of requests too.
            self.wake_all_nodes()
            self.wake_all_requests()
            return
        self.jobs_queued(entries)

    def claimed(self, job_ids: Iterable[str]) -> None:
        """These jobs were claimed here: nobody else needs waking for them."""
        for job_id in job_ids:
            self._offers.pop(job_id, None)

    def settle(self, offer: Offer | None, gone: bool) -> None:
        """A woken node looked at the queue. `gone`: it found nothing it could serve, so the job it was
        woken for is taken (here or by another process) or cancelled. Else, if its job is still
        unclaimed, the node could not take it: offer it to the next one."""
        if offer is None or self._offers.get(offer.entry.job_id) is not offer:
            return
        if gone:
            del self._offers[offer.entry.job_id]
        else:
            self._offer(offer)

    def _offer(self, offer: Offer) -> None:
        chosen = self._choose(offer)
        if chosen is None:  # nobody parked can take it: a node that parks later looks at the queue first
            self._offers.pop(offer.entry.job_id, None)
            return
        offer.tried.add(chosen)
        chosen.offer = offer
        chosen.woken.set()
        self.wakeups += 1

    def _choose(self, offer: Offer) -> JobWaiter | None:
        fallback = None
        for waiter in self._candidates(offer.entry.models):
            if waiter.woken.is_set() or waiter in offer.tried or not can_serve(waiter.caps, offer.entry):
                continue
            if waiter.idle:
                return waiter
            fallback = fallback or waiter
        return fallback

    def _candidates(self, models: list[str]) -> Iterable[JobWaiter]:
        """The parked nodes serving one of `models` (all of them for a job for any model)."""
        if not models:
            return self._job_waiters
        if len(models) == 1:
            return self._by_model.get(models[0], {})
        return dict.fromkeys(waiter for model in models for waiter in self._by_model.get(model, {}))

    def wake_all_nodes(self) -> None:
        """For when jobs may have been missed (a lost LISTEN connection): every parked node looks again."""
        for waiter in self._job_waiters:
            waiter.woken.set()

    def wake_all_requests(self) -> None:
        """Every waiting check reloads its request (a long-poll reloads only when woken)."""
        for events in self._request_waiters.values():
            for event in events:
                event.set()

    def close(self) -> None:
        self.closing = True
        self.wake_all_nodes()
        self.wake_all_requests()

    @contextlib.contextmanager
    def job_waiter(self, caps: WorkerCaps) -> Iterator[JobWaiter]:
        waiter = JobWaiter(caps)
        self._job_waiters[waiter] = None
        for model in caps.models:
            self._by_model[model][waiter] = None
        try:
            yield waiter
        finally:
            del self._job_waiters[waiter]
            for model in caps.models:
                parked = self._by_model[model]
                parked.pop(waiter, None)
                if not parked:
                    del self._by_model[model]
            # It leaves (answered, timed out, hung up) before looking for what it was woken for.
            self.settle(waiter.take(), gone=False)

    # --- requests --------------------------------------------------------------------------------
    def request_accepted(self, request: RequestRecord) -> None:
        for listener in self.accepted_listeners:  # e.g. webhooks.py, which then knows whether it has one
            listener(request)

    def request_changed(self, request_id: str) -> None:
        for listener in self.request_listeners:  # e.g. webhooks.py, told of every change
            listener(request_id)
        for event in self._request_waiters.get(request_id, ()):
            event.set()

    @contextlib.contextmanager
    def parked(self, what: str) -> Iterator[None]:
        """Count a long-poll as parked under `what` while inside."""
        gauge = LONG_POLLS_PARKED.labels(what.split(":", 1)[0])
        self._parked[what] += 1
        gauge.inc()
        self._parked_news.set()
        try:
            yield
        finally:
            gauge.dec()
            self._parked[what] -= 1
            if not self._parked[what]:  # one key per node and per request checked: none kept past its wait
                del self._parked[what]
            self._parked_news.set()

    async def until_parked(self, what: str, count: int = 1) -> None:
        """Return once `count` long-polls are parked under `what`."""
        while self._parked[what] < count:
            self._parked_news.clear()
            await self._parked_news.wait()

    @contextlib.contextmanager
    def request_waiter(self, request_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._request_waiters[request_id].add(event)
        try:
            yield event
        finally:
            waiters = self._request_waiters[request_id]
            waiters.discard(event)
            if not waiters:
                del self._request_waiters[request_id]


# Announced with a request accepted without a webhook: the other processes then know it needs none, as this
# one does (`EventHub.request_accepted`); else each read the request at its first change to find out.
WITHOUT_WEBHOOK = "without-webhook"


def has_webhook(request: RequestRecord) -> bool:
    return bool(request.body.get("webhook"))


def announce_accepted(tx: Tx, request: RequestRecord) -> None:
    """Tell the other processes, when `tx` commits, what its new request's changes will need of them. Before
    its jobs' announcement, so a process woken for one of them has heard it (announcements keep their order)."""
    if not has_webhook(request):
        tx.announce(WITHOUT_WEBHOOK, request.id)


def announce_jobs(tx: Tx, entries: list[QueueEntry]) -> None:
    """Tell the other processes what `tx`'s new jobs demand, when it commits; they offer them to their parked
    nodes as `EventHub.jobs_queued` does to this process's, which the caller calls after the commit."""
    for message in jobs_messages(entries):
        tx.announce("jobs", message)


def jobs_messages(entries: list[QueueEntry]) -> list[str]:
    """The announcement of new jobs: their demands, once per group of jobs that demand the same (a
    request's images), each message under PostgreSQL's payload limit. Empty when there are none."""
    groups: dict[str, list[str]] = {}
    for entry in entries:
        demands = {key: value for key, value in asdict(entry).items() if key != "job_id"}
        groups.setdefault(json.dumps(demands, sort_keys=True), []).append(entry.job_id)
    messages: list[str] = []
    parts: list[str] = []
    size = 0
    for demand, job_ids in groups.items():
        for chunk in _chunks(job_ids, MAX_MESSAGE_BYTES - len(demand)):
            part = f'{{"demand": {demand}, "jobs": {json.dumps(chunk)}}}'
            if parts and size + len(part) > MAX_MESSAGE_BYTES:
                messages.append(f"[{', '.join(parts)}]")
                parts, size = [], 0
            parts.append(part)
            size += len(part) + 2
    if parts:
        messages.append(f"[{', '.join(parts)}]")
    return messages


def _chunks(job_ids: list[str], room: int) -> Iterator[list[str]]:
    """`job_ids` in lists whose JSON fits in `room` bytes (at least one id each)."""
    chunk: list[str] = []
    used = 64  # the part's own punctuation
    for job_id in job_ids:
        if chunk and used + len(job_id) + 4 > room:
            yield chunk
            chunk, used = [], 64
        chunk.append(job_id)
        used += len(job_id) + 4
    if chunk:
        yield chunk


def read_jobs_message(message: str) -> list[QueueEntry]:
    return [QueueEntry(job_id=job_id, **group["demand"]) for group in json.loads(message) for job_id in group["jobs"]]


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    # asyncio.timeout, not asyncio.wait_for: no task per waiter (thousands of nodes park at once).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
