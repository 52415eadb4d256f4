"""Live progress: the steps nodes report, and the event stream of one request (protocol/progress.py).

Step reports live in this process's memory only: they are worth seconds, and a lost one is replaced
by the next. What the stream says about the request itself (its check, its images) is read from the
database on every change, so it is what `check` and `status` would answer at that moment.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from coordinator.auth import Caller, require_account
from coordinator.errors import HordeError, not_found
from coordinator.metrics import STREAMS_OPEN
from coordinator.requesting import RequestDesk
from coordinator.services import Services
from protocol.errors import RC
from protocol.generation import RequestCheck
from protocol.progress import ProgressReport, StepProgress

log = logging.getLogger("horde.coordinator.stream")
PROGRESS_CHANNEL = "progress"
# A node may report a job's step at most this often; sooner reports are dropped (the node's own
# console reports every 5 s, and so does its progress call).
MIN_REPORT_INTERVAL = 1.0
# Reports of jobs nobody streamed (or that ended without an image) are dropped after this long.
STALE_REPORT_SECONDS = 600.0
# A stream sends a comment this often while nothing changes, so proxies keep the connection open.
KEEPALIVE_SECONDS = 15.0
# A stream closes after this long (a client reconnects and gets the state at once).
MAX_STREAM_SECONDS = 3600.0


@dataclass
class StepReport:
    request_id: str
    progress: StepProgress
    at: float


class ProgressBoard:
    """The latest step of each job being made, and the streams waiting for one of a request's."""

    def __init__(self) -> None:
        self._reports: dict[str, StepReport] = {}
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._pruned = time.monotonic()

    def report(self, request_id: str, progress: StepProgress) -> bool:
        now = time.monotonic()
        previous = self._reports.get(progress.job)
        if previous is not None and now - previous.at < MIN_REPORT_INTERVAL:
            return False
        self._reports[progress.job] = StepReport(request_id, progress, now)
        if now - self._pruned > STALE_REPORT_SECONDS:
            self._pruned = now
            self._reports = {job: r for job, r in self._reports.items() if now - r.at < STALE_REPORT_SECONDS}
        for event in self._waiters.get(request_id, ()):
            event.set()
        return True

    def of_request(self, request_id: str) -> list[StepProgress]:
        return [r.progress for r in self._reports.values() if r.request_id == request_id]

    def forget(self, job_ids: set[str]) -> None:
        for job_id in job_ids:
            self._reports.pop(job_id, None)

    @contextlib.contextmanager
    def watch(self, request_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters[request_id].add(event)
        try:
            yield event
        finally:
            self._waiters[request_id].discard(event)
            if not self._waiters[request_id]:
                del self._waiters[request_id]


@dataclass
class StreamEvent:
    name: str  # protocol.progress.STREAM_EVENTS
    data: str  # JSON

    def encode(self) -> bytes:
        return f"event: {self.name}\ndata: {self.data}\n\n".encode()


KEEPALIVE = b": keepalive\n\n"


class LiveProgress:
    """Takes nodes' step reports and streams a request's changes."""

    def __init__(self, services: Services, requests: RequestDesk, board: ProgressBoard) -> None:
        self.services = services
        self.requests = requests
        self.board = board

    async def report(self, caller: Caller, body: ProgressReport) -> bool:
        """Record the node's step on its job; only the node the job is assigned to may report it."""
        account = require_account(caller, RC.ANON_FORBIDDEN_WORKER)
        async with self.services.database.reader() as tx:
            job = await tx.get_job(body.id)
            worker = await tx.worker_by("id", job.worker_id) if job and job.worker_id else None
        if job is None:
            raise not_found("job", RC.INVALID_JOB_ID)
        theirs = (
            worker is not None
            and worker.owner_id == account.id
            and (caller.worker is None or caller.worker.id == worker.id)
        )
        if not theirs or job.state != "processing":
            raise HordeError(403, RC.WRONG_CREDENTIALS, "This job is not being made by your node.")
        step = StepProgress(job=job.id, index=job.index, step=min(body.step, body.total), total=body.total)
        accepted = self.board.report(job.request_id, step)
        if accepted:  # to the streams other processes hold (PostgreSQL); SQLite's announce does nothing
            message = json.dumps({"request_id": job.request_id, **step.model_dump()})
            await self.services.database.announce(PROGRESS_CHANNEL, message)
        return accepted

    def relayed(self, message: str) -> None:
        """Another process's accepted report (app.py relays the announcements)."""
        try:
            data = json.loads(message)
            self.board.report(str(data.pop("request_id")), StepProgress.model_validate(data))
        except (ValueError, KeyError, TypeError, ValidationError):
            log.warning("ignored a malformed progress announcement")

    async def events(self, request_id: str, base_url: str) -> AsyncIterator[StreamEvent | None]:
        """The request's events as they happen (None: nothing for a while, send a keepalive); ends
        with `end` once the request is settled."""
        await self.requests.load(request_id)  # 404 before the stream starts
        sent_check: RequestCheck | None = None
        sent_images: set[str] = set()
        sent_steps: dict[str, StepProgress] = {}
        deadline = time.monotonic() + MAX_STREAM_SECONDS
        STREAMS_OPEN.inc()
        try:
            while time.monotonic() < deadline:
                hub = self.services.hub
                with hub.request_waiter(request_id) as changed, self.board.watch(request_id) as stepped:
                    status = await self.requests.status(request_id, base_url)
                    check = RequestCheck.model_validate(status.model_dump(include=set(RequestCheck.model_fields)))
                    for step in self.board.of_request(request_id):
                        if sent_steps.get(step.job) != step and step.job not in sent_images:
                            sent_steps[step.job] = step
                            yield StreamEvent("progress", step.model_dump_json())
                    for generation in status.generations:
                        if generation.id not in sent_images:
                            sent_images.add(generation.id)
                            yield StreamEvent("image", generation.model_dump_json(exclude_none=True))
                    self.board.forget(sent_images)
                    if check != sent_check:
                        sent_check = check
                        yield StreamEvent("check", check.model_dump_json())
                    if check.done or check.faulted or hub.closing:
                        yield StreamEvent("end", check.model_dump_json())
                        return
                    if not await _either(changed, stepped, KEEPALIVE_SECONDS):
                        yield None
        finally:
            STREAMS_OPEN.dec()


async def _either(first: asyncio.Event, second: asyncio.Event, timeout: float) -> bool:
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return bool(done)
