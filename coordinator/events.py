"""In-process wake-ups for long-polls: a node waiting for a job, a requester waiting for
a request to change. Engines that span processes (PostgreSQL) feed the same hub from
their notifications, so a job queued on one process wakes a node waiting on another.
"""

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.storage.records import QueueEntry, WorkerCaps


def can_serve(caps: WorkerCaps, entry: QueueEntry) -> bool:
    """The cheap checks a wake-up uses; the pop query makes the final decision."""
    return (
        (not entry.models or any(model in caps.models for model in entry.models))
        and entry.pixels <= caps.max_pixels
        and (caps.nsfw or not entry.nsfw)
        and (caps.img2img or not entry.img2img)
        and (caps.painting or not entry.painting)
        and (caps.lora or not entry.lora)
        and (caps.trusted or not entry.trusted_only)
    )


@dataclass(eq=False)
class _JobWaiter:
    caps: WorkerCaps
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class EventHub:
    def __init__(self) -> None:
        self._job_waiters: list[_JobWaiter] = []
        self._request_waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def jobs_queued(self, entries: list[QueueEntry]) -> None:
        """Wake one idle node per new job among those that can serve it, oldest waiter first."""
        for entry in entries:
            waiter = next(
                (w for w in self._job_waiters if not w.woken.is_set() and can_serve(w.caps, entry)), None
            )
            if waiter is not None:
                waiter.woken.set()

    def wake_all_nodes(self) -> None:
        for waiter in self._job_waiters:
            waiter.woken.set()

    def request_changed(self, request_id: str) -> None:
        for event in self._request_waiters.get(request_id, ()):
            event.set()

    async def wait_for_job(self, caps: WorkerCaps, timeout: float) -> bool:
        waiter = _JobWaiter(caps)
        self._job_waiters.append(waiter)
        try:
            return await _wait(waiter.woken, timeout)
        finally:
            self._job_waiters.remove(waiter)

    async def wait_for_request(self, request_id: str, timeout: float) -> bool:
        event = asyncio.Event()
        self._request_waiters[request_id].add(event)
        try:
            return await _wait(event, timeout)
        finally:
            waiters = self._request_waiters[request_id]
            waiters.discard(event)
            if not waiters:
                del self._request_waiters[request_id]

    @property
    def idle_nodes(self) -> int:
        return len(self._job_waiters)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()


Clock = Callable[[], float]
