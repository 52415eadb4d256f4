"""In-process wake-ups for long-polls: a node waiting for a job, a requester waiting for
a request to change. Engines that span processes (PostgreSQL) feed the same hub from
their notifications, so a job queued on one process wakes a node waiting on another.

A waiter registers *before* it looks at the database, so a change that lands between its
look and its wait still wakes it.
"""

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from coordinator.capabilities import first_unmet
from coordinator.queueing import worker_list_allows
from coordinator.storage.records import QueueEntry, WorkerCaps


def can_serve(caps: WorkerCaps, entry: QueueEntry) -> bool:
    """The cheap checks a wake-up uses; the pop query makes the final decision. Only one node is woken
    per job, so every check the pop makes on the entry's columns must be here too, or the wake-up goes
    to a node that cannot take the job while one that can sleeps on."""
    return (
        (not entry.models or any(model in caps.models for model in entry.models))
        and first_unmet(caps, lambda column: getattr(entry, column)) is None
        and _named_allows(caps, entry)
        and caps.worker_id not in entry.excluded
    )


def _named_allows(caps: WorkerCaps, entry: QueueEntry) -> bool:
    return worker_list_allows(entry.workers, entry.worker_blacklist, caps.worker_id, caps.worker_name)


@dataclass(eq=False)
class JobWaiter:
    caps: WorkerCaps
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    idle: bool = False  # True while parked in wait(); such waiters are woken first

    async def wait(self, timeout: float) -> bool:
        if self.woken.is_set():
            return True
        self.idle = True
        try:
            return await wait_for(self.woken, timeout)
        finally:
            self.idle = False


class EventHub:
    def __init__(self) -> None:
        self.closing = False  # set at shutdown: every long-poll answers now, and new ones do not wait
        self._job_waiters: list[JobWaiter] = []
        self._request_waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.request_listeners: list[Callable[[str], None]] = []
        # Long-polls parked right now, by what they wait for ("pop:<node name>", "check:<request id>"):
        # a test waits on this (`until_parked`) instead of sleeping and hoping its long-poll got there.
        self._parked: Counter[str] = Counter()
        self._parked_news = asyncio.Event()

    def jobs_queued(self, entries: list[QueueEntry]) -> None:
        """Wake one node per new job among those that can serve it, idle and oldest first."""
        for entry in entries:
            self._wake_one(lambda waiter, entry=entry: can_serve(waiter.caps, entry))

    def pass_on(self, caps: WorkerCaps) -> None:
        """A woken waiter took other work: hand its wake-up to another node with a shared model."""
        self._wake_one(lambda waiter: bool(set(waiter.caps.models) & set(caps.models)) or not caps.models)

    def _wake_one(self, matches: Callable[[JobWaiter], bool]) -> None:
        candidates = [w for w in self._job_waiters if not w.woken.is_set() and matches(w)]
        chosen = next((w for w in candidates if w.idle), candidates[0] if candidates else None)
        if chosen is not None:
            chosen.woken.set()

    def wake_all_nodes(self) -> None:
        for waiter in self._job_waiters:
            waiter.woken.set()

    def close(self) -> None:
        self.closing = True
        self.wake_all_nodes()
        for events in self._request_waiters.values():
            for event in events:
                event.set()

    def request_changed(self, request_id: str) -> None:
        for listener in self.request_listeners:  # e.g. webhooks.py, told of every change
            listener(request_id)
        for event in self._request_waiters.get(request_id, ()):
            event.set()

    @contextlib.contextmanager
    def parked(self, what: str) -> Iterator[None]:
        """Count a long-poll as parked under `what` while inside."""
        self._parked[what] += 1
        self._parked_news.set()
        try:
            yield
        finally:
            self._parked[what] -= 1
            self._parked_news.set()

    async def until_parked(self, what: str, count: int = 1) -> None:
        """Return once `count` long-polls are parked under `what`."""
        while self._parked[what] < count:
            self._parked_news.clear()
            await self._parked_news.wait()

    @contextlib.contextmanager
    def job_waiter(self, caps: WorkerCaps) -> Iterator[JobWaiter]:
        waiter = JobWaiter(caps)
        self._job_waiters.append(waiter)
        try:
            yield waiter
        finally:
            self._job_waiters.remove(waiter)

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


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()
