"""The coordinator's periodic chores: reissue overdue jobs, lift automatic maintenance, expire
abandoned requests, pay uptime kudos, release escrow and queue canaries (verified work), and prune old
requests and images (never the ledger)."""

import asyncio
import logging

from coordinator.canaries import Canaries
from coordinator.escrow import hold, release_due
from coordinator.events import announce_jobs
from coordinator.lifecycle import TIME_LIMIT_EXCEEDED, fault_request, requeue_or_fault
from coordinator.results import upload_name
from coordinator.roster import count_missed_deadline, lift_maintenance, maintenance_over
from coordinator.services import Services
from coordinator.storage import StorageUnavailable
from coordinator.storage.records import QueueEntry, Worker
from coordinator.storage.sql import Tx
from coordinator.verification import Verifier

log = logging.getLogger("horde.coordinator.upkeep")
UPTIME_PERIOD = 600.0


class Upkeep:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.verifier = Verifier(services)
        self.canaries = Canaries(services, self.verifier)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except StorageUnavailable as error:
                log.warning("upkeep skipped: %s", error)
            except Exception:
                log.exception("upkeep failed; retrying next round")
            await asyncio.sleep(self.services.config.maintenance_interval)

    async def run_once(self) -> None:
        await self.reissue_overdue()
        await self.end_maintenance()
        await self.expire_abandoned()
        await self.verifier.void_lapsed()  # after expiry, so a check that just expired is closed this round
        await self.pay_uptime()
        await self.release_escrow()
        await self.canaries.issue()
        await self.prune()

    async def reissue_overdue(self) -> int:
        """Jobs whose node missed the time limit go back to the queue for another node."""
        now = self.services.clock()
        config = self.services.config
        misses = config.max_missed_deadlines
        requeued: list[QueueEntry] = []
        touched: set[str] = set()
        async with self.services.database.transaction() as tx:
            await tx.lock_ledger()  # not while a result for one of these jobs is being stored (results._current)
            for job in await tx.overdue_jobs(now):
                request = await tx.get_request(job.request_id)
                # Read for each job, so a crash's other overdue jobs in this pass see the miss counted.
                worker = await tx.worker_by("id", job.worker_id) if job.worker_id else None
                if request is None:
                    continue
                assigned_at = job.assigned_at
                entry = await requeue_or_fault(tx, job, request, config.max_job_faults, now, TIME_LIMIT_EXCEEDED)
                requeued += [entry] if entry else []
                touched.add(request.id)
                if worker is not None and count_missed_deadline(worker, assigned_at, now, misses):
                    await tx.save_worker_state(worker)
            self._announce(tx, requeued, touched)
        self._wake(requeued, touched)
        return len(touched)

    async def end_maintenance(self) -> int:
        """Lift automatic maintenance whose clean period has passed (pops already ignore it)."""
        now = self.services.clock()
        async with self.services.database.reader() as tx:
            due = await tx.maintenance_over_ids(now)
        if not due:
            return 0  # the usual case: no write transaction
        async with self.services.database.transaction() as tx:
            for worker_id in due:
                worker = await tx.worker_by("id", worker_id)
                if worker is not None and maintenance_over(worker, now):
                    lift_maintenance(worker)
                    await tx.save_worker_state(worker)
        return len(due)

    async def expire_abandoned(self) -> None:
        """A request nobody picks up for `request_expiry_seconds` is faulted as expired."""
        now = self.services.clock()
        touched: set[str] = set()
        async with self.services.database.transaction() as tx:
            for request in await tx.stale_requests(now - self.services.config.request_expiry_seconds):
                jobs = await tx.jobs_of(request.id)
                if any(job.state == "processing" for job in jobs):
                    continue
                await fault_request(tx, request, now, "expired: no node picked it up in time")
                touched.add(request.id)
            self._announce(tx, [], touched)
        self._wake([], touched)

    async def pay_uptime(self) -> None:
        per_period = self.services.config.uptime_kudos_per_10_minutes
        if per_period <= 0:
            return
        now = self.services.clock()
        async with self.services.database.transaction() as tx:
            # Before reading when each node was last paid: two processes' rounds at once must not both pay it.
            await tx.lock_ledger()
            for worker in await tx.list_workers():
                online = now - worker.last_seen < self.services.config.worker_online_seconds
                if not online or worker.maintenance:
                    continue
                if worker.last_uptime_award == 0:
                    worker.last_uptime_award = now
                elif now - worker.last_uptime_award >= UPTIME_PERIOD:
                    await self._pay_uptime(tx, worker, per_period, now)
                    worker.last_uptime_award = now
                    worker.uptime += int(UPTIME_PERIOD)
                else:
                    continue
                await tx.save_worker_state(worker)

    async def _pay_uptime(self, tx: Tx, worker: Worker, amount: float, now: float) -> None:
        """Uptime is a reward like an image's: held in escrow while verification is on, so a node that
        fails a check loses it too."""
        verification = self.services.config.verification
        if verification.enabled:
            await hold(tx, worker.id, worker.owner_id, amount, f"uptime:{int(now)}", None, now, verification.window)
        else:
            await tx.move_kudos("uptime", None, worker.owner_id, amount, f"uptime:{worker.id}", now)

    async def release_escrow(self) -> int:
        """Rewards whose verification window closed clean go to their nodes' owners."""
        if not self.services.config.verification.enabled:
            return 0
        async with self.services.database.transaction() as tx:
            await tx.lock_ledger()
            return await release_due(tx, self.services.clock())

    async def prune(self) -> int:
        cutoff = self.services.clock() - self.services.config.retention_hours * 3600
        doomed: list[str | None] = []
        async with self.services.database.transaction() as tx:
            requests = await tx.finished_requests(cutoff)
            for request in requests:
                for job in await tx.jobs_of(request.id):
                    nodes = {*job.previous_workers, *([job.worker_id] if job.worker_id else [])}
                    doomed += [job.image, *(upload_name(job.id, node) for node in nodes)]
                doomed += [request.source_image, request.source_mask]
                await tx.delete_request(request.id)
        # Images go only after the rows that name them are gone, so no record loses its image.
        for index, name in enumerate(doomed):
            try:
                await self.services.images.delete(name)
            except StorageUnavailable as error:
                # Not one timeout per image while the store is away: the other chores wait behind this.
                # The rows are gone, so these stay behind (a bucket's lifecycle rule is the backstop).
                log.warning("image store unavailable; left %d images behind: %s", len(doomed) - index, error)
                break
        return len(requests)

    @staticmethod
    def _announce(tx: Tx, requeued: list[QueueEntry], touched: set[str]) -> None:
        """What the other processes hear when `tx` commits."""
        announce_jobs(tx, requeued)
        for request_id in touched:
            tx.announce("request", request_id)

    def _wake(self, requeued: list[QueueEntry], touched: set[str]) -> None:
        """This process's parked nodes and waiting checks, after the commit."""
        self.services.hub.jobs_queued(requeued)
        for request_id in touched:
            self.services.hub.request_changed(request_id)
