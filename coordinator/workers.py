"""Nodes as the API shows them (`/v2/workers`) and as their owners change them. The roster
(coordinator/roster.py) registers nodes on pop and keeps who is online; this is the rest of a
node's public life: its details, and its owner's edits and deletion."""

from coordinator.auth import Caller, require_account
from coordinator.economy import withheld_reason
from coordinator.errors import HordeError, not_found
from coordinator.estimates import measured_speed
from coordinator.services import Services
from coordinator.storage import NameTaken
from coordinator.storage.records import Worker
from protocol.accounts import WorkerDetails, WorkerKudosDetails, WorkerUpdate
from protocol.errors import RC

WORKER_KINDS = ("image",)  # every node here makes images; AI Horde's text and interrogation workers: none


def details(worker: Worker, online_cutoff: float, suspicion_threshold: int) -> WorkerDetails:
    speed = measured_speed(worker) or 0.0  # from its own finished jobs (coordinator/estimates.py)
    return WorkerDetails(
        id=worker.id,
        name=worker.name,
        online=worker.last_seen >= online_cutoff,
        requests_fulfilled=worker.requests_fulfilled,
        kudos_rewards=worker.kudos_rewards,
        kudos_details=WorkerKudosDetails(generated=worker.kudos_rewards),
        uncompleted_jobs=worker.missed_deadlines,
        megapixelsteps_generated=int(worker.megapixelsteps),
        post_processing=worker.post_processing,
        performance=f"{speed:.2f} megapixelsteps per second",
        threads=worker.threads,
        uptime=worker.uptime,
        maintenance_mode=worker.maintenance,
        info=worker.info,
        nsfw=worker.nsfw,
        trusted=worker.trusted,
        suspicious=worker.suspicion,
        models=worker.models,
        max_pixels=worker.max_pixels,
        img2img=worker.img2img,
        painting=worker.painting,
        lora=worker.lora,
        controlnet=worker.controlnet,
        sdxl_controlnet=worker.sdxl_controlnet,
        owner=str(worker.owner_id),
        public_key=worker.public_key,
        bridge_agent=worker.bridge_agent,
        rewards_withheld=withheld_reason(worker.suspicion, suspicion_threshold),
    )


def apply_update(worker: Worker, change: WorkerUpdate) -> None:
    """The owner's change, on `worker`. Maintenance set or lifted by the owner never lifts by itself
    (coordinator/roster.py), and lifting it forgets the missed deadlines."""
    if change.maintenance is not None:
        worker.maintenance = change.maintenance
        worker.maintenance_until = None
        worker.missed_deadlines = 0 if not change.maintenance else worker.missed_deadlines
    for field in ("maintenance_msg", "info", "name"):
        if getattr(change, field) is not None:
            setattr(worker, field, getattr(change, field))


class WorkerDesk:
    def __init__(self, services: Services) -> None:
        self.services = services

    def details(self, worker: Worker) -> WorkerDetails:
        config = self.services.config
        cutoff = self.services.clock() - config.worker_online_seconds
        return details(worker, cutoff, config.suspicion_threshold)

    async def listing(self, name: str | None = None, kind: str = "image") -> list[WorkerDetails]:
        """AI Horde's filters: `kind` ("" for every kind) and `name` (exact, any case)."""
        if kind and kind not in WORKER_KINDS:
            return []
        async with self.services.database.reader() as tx:
            if name is not None:
                workers = [worker] if (worker := await tx.worker_by("name", name)) else []
            else:
                workers = await tx.list_workers()
        return [self.details(worker) for worker in workers]

    async def find(self, by: str, value: str) -> WorkerDetails:
        """One node by "id" or by "name" (any case)."""
        return self.details(await self._load(by, value))

    async def owned(self, caller: Caller, worker_id: str) -> Worker:
        """The caller's node `worker_id`: 404 if there is none, 403 if it is someone else's."""
        account = require_account(caller)
        worker = await self._load("id", worker_id)
        if worker.owner_id != account.id:
            raise HordeError(403, RC.NOT_OWNER, "Only the worker's owner may change it.")
        return worker

    async def update(self, worker: Worker, change: WorkerUpdate) -> None:
        """Save the owner's change to its node (`owned`)."""
        apply_update(worker, change)
        try:
            async with self.services.database.transaction() as tx:
                await tx.save_worker(worker)
        except NameTaken as error:
            raise HordeError(400, RC.WORKER_NAME_EXISTS, f"Worker name {worker.name} is taken.") from error

    async def delete(self, worker: Worker) -> None:
        """Remove the owner's node (`owned`); the account may then register another in its place."""
        async with self.services.database.transaction() as tx:
            await tx.delete_worker(worker.id)

    async def _load(self, by: str, value: str) -> Worker:
        async with self.services.database.reader() as tx:
            worker = await tx.worker_by(by, value)
        if worker is None:
            raise not_found("worker", RC.WORKER_NOT_FOUND)
        return worker
