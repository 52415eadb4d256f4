"""Canary jobs: known-answer jobs for nodes without a record (docs/security.md, "Verified work").

Images made by trusted nodes form the reference set. The upkeep loop queues, for each online node that is
new or suspect and has had no canary for `canary_interval` seconds, one reference job again as a request of
the verifier account pinned to that node. It is built like any spot check (coordinator/verification.py),
so to the node it is an ordinary job, and its answer is judged the same way: compared with the trusted
node's image, and a disagreement goes to a third owner's node before anyone gets a verdict. A canary asks
nothing of the honest network (no second node re-runs anything unless the answer disagrees).
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from coordinator.services import Services
from coordinator.storage import checks as check_rows
from coordinator.storage.records import Worker

if TYPE_CHECKING:
    from coordinator.verification import Verifier

REFERENCES = 200  # the reference set keeps the newest this many images
_random = random.SystemRandom()


async def remember_reference(services: Services, job_id: str) -> None:
    """A trusted node's image joins the reference set (the oldest leaves beyond REFERENCES)."""
    now = services.clock()
    async with services.database.transaction() as tx:
        await check_rows.add_reference(tx, job_id, now, REFERENCES)


def wants_canary(worker: Worker, now: float, interval: float, online: float, settled_rate: float, rate: float) -> bool:
    """A node online, not trusted (its images are the references) nor suspended, whose check rate is still
    above the settled one (new, or suspect), and that had no canary for `interval` seconds."""
    return (
        not worker.trusted
        and worker.suspended is None
        and now - worker.last_seen < online
        and rate > settled_rate
        and now - worker.last_canary >= interval
    )


class Canaries:
    def __init__(self, services: Services, verifier: Verifier) -> None:
        self.services = services
        self.verifier = verifier
        # One round at a time in this process, so two rounds never both see a node without its canary.
        # (Two coordinator processes may still each queue one: a node then gets two, which costs it nothing.)
        self._round = asyncio.Lock()

    async def issue(self) -> int:
        """Queue one canary for each node that wants one; how many were queued."""
        async with self._round:
            return await self._issue()

    async def _issue(self) -> int:
        settings, config = self.services.config.verification, self.services.config
        if not settings.enabled or settings.canary_interval <= 0:
            return 0
        now = self.services.clock()
        async with self.services.database.reader() as tx:
            newest = await check_rows.newest_references(tx, 50)
            references = [job for job_id in newest if (job := await tx.get_job(job_id)) is not None]
            waiting = await check_rows.canaries_pending(tx)  # one canary at a time per node
            due = [
                w
                for w in await tx.list_workers()
                if w.id not in waiting
                and wants_canary(
                    w,
                    now,
                    settings.canary_interval,
                    config.worker_online_seconds,
                    settings.settled_rate,
                    self.verifier.rate(w),
                )
            ]
        issued = 0
        for worker in due:
            issued += await self._one(worker, references, now)
        return issued

    async def _one(self, worker: Worker, references: list, now: float) -> int:
        async with self.services.database.reader() as tx:
            makers = {job.id: await tx.worker_by("id", job.worker_id) for job in references if job.worker_id}
        usable = [job for job in references if (m := makers.get(job.id)) is not None and m.owner_id != worker.owner_id]
        if not usable:
            return 0
        subject = _random.choice(usable)
        async with self.services.database.reader() as tx:
            request = await tx.get_request(subject.request_id)
        if request is None:
            return 0
        await self.verifier.issue_canary(subject, request, worker)
        async with self.services.database.transaction() as tx:
            current = await tx.worker_by("id", worker.id)
            if current is not None:
                current.last_canary = now
                await tx.save_worker_state(current)
        return 1
