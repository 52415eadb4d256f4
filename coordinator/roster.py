"""The roster of nodes: registration on pop, name and key ownership, and a short-lived
in-memory view of who is online (for `is_possible`, ETAs and `/status/models`)."""

import uuid
from dataclasses import replace

from coordinator.auth import Caller, require_account
from coordinator.errors import HordeError
from coordinator.events import can_serve
from coordinator.services import Services
from coordinator.storage import NameTaken
from coordinator.storage.records import QueueEntry, Worker, WorkerCaps
from protocol.errors import RC
from protocol.jobs import PopRequest

ROSTER_REFRESH_SECONDS = 2.0
# A pop refreshes `last_seen`; writing it on every pop would cost a write per pop.
LAST_SEEN_WRITE_INTERVAL = 15.0
# Far above any request (3072×3072), and within a 32-bit database integer, whatever a node claims.
MAX_NODE_PIXELS = 2**31 - 1


def wrong_credentials(message: str) -> HordeError:
    return HordeError(403, RC.WRONG_CREDENTIALS, message)


class Roster:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._online: list[Worker] = []
        self._online_caps: list[tuple[Worker, WorkerCaps]] = []
        self._loaded_at = float("-inf")

    async def register(self, caller: Caller, pop: PopRequest) -> Worker:
        """The worker behind this pop, created or updated from what the pop says it can do."""
        account = require_account(caller, RC.ANON_FORBIDDEN_WORKER)
        try:
            return await self._register(caller, account.id, pop)
        except NameTaken:
            # A concurrent first pop of the same new node may have just registered it: look again.
            try:
                return await self._register(caller, account.id, pop)
            except NameTaken as error:
                raise HordeError(403, RC.WORKER_NAME_EXISTS, f"Worker name {pop.name} is taken.") from error

    async def _register(self, caller: Caller, account_id: int, pop: PopRequest) -> Worker:
        now = self.services.clock()
        existing = caller.worker  # a signed node: just read by its key
        if existing is None or existing.name.lower() != pop.name.lower():
            async with self.services.database.reader() as tx:
                existing = await tx.worker_by("name", pop.name)
        if existing is not None:
            self._check_ownership(existing, caller, account_id)
        elif caller.worker is not None:
            raise wrong_credentials(f"This key belongs to worker {caller.worker.name}, not to {pop.name}.")
        worker = self._updated(existing, caller, account_id, pop, now)
        if existing is None or worker != replace(existing, last_seen=worker.last_seen) or (
            now - existing.last_seen > LAST_SEEN_WRITE_INTERVAL
        ):
            await self._save(worker)
        return worker

    @staticmethod
    def _check_ownership(worker: Worker, caller: Caller, account_id: int) -> None:
        if worker.owner_id != account_id:
            raise wrong_credentials(f"Wrong credentials to submit as worker {worker.name}.")
        if caller.key is not None and worker.public_key not in (None, caller.key_text):
            raise wrong_credentials(f"Worker {worker.name} is bound to another key.")
        if caller.worker is not None and caller.worker.id != worker.id:
            raise wrong_credentials("This key belongs to a different worker.")

    @staticmethod
    def _updated(existing: Worker | None, caller: Caller, owner_id: int, pop: PopRequest, now: float) -> Worker:
        base = existing or Worker(
            id=str(uuid.uuid4()), name=pop.name, owner_id=owner_id, public_key=None, models=[], max_pixels=0,
            nsfw=False, threads=1, img2img=False, painting=False, lora=False, post_processing=False,
            bridge_agent="", created=now, last_seen=now,
        )
        return replace(
            base,
            public_key=base.public_key or caller.key_text,
            models=list(dict.fromkeys(pop.models)),
            max_pixels=min(pop.max_pixels, MAX_NODE_PIXELS),
            nsfw=pop.nsfw,
            threads=pop.threads,
            img2img=pop.allow_img2img,
            painting=pop.allow_painting,
            lora=pop.allow_lora,
            post_processing=pop.allow_post_processing,
            bridge_agent=pop.bridge_agent,
            last_seen=now,
        )

    async def _save(self, worker: Worker) -> None:
        async with self.services.database.transaction() as tx:
            await tx.save_worker(worker)
        self._loaded_at = float("-inf")

    async def online(self) -> list[Worker]:
        now = self.services.clock()
        if now - self._loaded_at > ROSTER_REFRESH_SECONDS:
            async with self.services.database.reader() as tx:
                workers = await tx.list_workers()
            cutoff = now - self.services.config.worker_online_seconds
            self._online = [w for w in workers if w.last_seen >= cutoff and not w.maintenance]
            self._online_caps = [(worker, WorkerCaps.of(worker)) for worker in self._online]
            self._loaded_at = now
        return self._online

    async def able(self, entry: QueueEntry) -> list[Worker]:
        """The online nodes that could serve `entry` (for warnings, `is_possible` and ETAs)."""
        await self.online()
        return [worker for worker, caps in self._online_caps if can_serve(caps, entry)]
