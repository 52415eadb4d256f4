"""Nodes as the API shows them: /v2/workers."""

from aiohttp import web

from coordinator.auth import require_account
from coordinator.economy import withheld_reason
from coordinator.errors import HordeError, not_found
from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, caller, parse, reply
from coordinator.storage import NameTaken
from coordinator.storage.records import Worker
from protocol.accounts import WorkerDetails, WorkerUpdate
from protocol.errors import RC


def details(worker: Worker, online_cutoff: float, suspicion_threshold: int) -> WorkerDetails:
    speed = worker.megapixelsteps / max(worker.uptime, 1) if worker.uptime else 0.0
    return WorkerDetails(
        id=worker.id, name=worker.name, online=worker.last_seen >= online_cutoff,
        requests_fulfilled=worker.requests_fulfilled, kudos_rewards=worker.kudos_rewards,
        performance=f"{speed:.2f} megapixelsteps per second", threads=worker.threads, uptime=worker.uptime,
        maintenance_mode=worker.maintenance, info=worker.info, nsfw=worker.nsfw, trusted=worker.trusted,
        suspicious=worker.suspicion, models=worker.models, max_pixels=worker.max_pixels, img2img=worker.img2img,
        painting=worker.painting, lora=worker.lora, owner=str(worker.owner_id), public_key=worker.public_key,
        bridge_agent=worker.bridge_agent, rewards_withheld=withheld_reason(worker.suspicion, suspicion_threshold),
    )  # fmt: skip


def online_cutoff(request: web.Request) -> float:
    services = broker(request).services
    return services.clock() - services.config.worker_online_seconds


async def load_worker(request: web.Request) -> Worker:
    async with broker(request).services.database.reader() as tx:
        worker = await tx.worker_by("id", request.match_info["id"])
    if worker is None:
        raise not_found("worker", RC.WORKER_NOT_FOUND)
    return worker


async def owned_worker(request: web.Request) -> Worker:
    account = require_account(await caller(request))
    worker = await load_worker(request)
    if worker.owner_id != account.id:
        raise HordeError(403, RC.NOT_OWNER, "Only the worker's owner may change it.")
    return worker


async def list_workers(request: web.Request) -> web.Response:
    async with broker(request).services.database.reader() as tx:
        workers = await tx.list_workers()
    cutoff = online_cutoff(request)
    threshold = broker(request).services.config.suspicion_threshold
    return reply([details(worker, cutoff, threshold) for worker in workers])


async def get_worker(request: web.Request) -> web.Response:
    threshold = broker(request).services.config.suspicion_threshold
    return reply(details(await load_worker(request), online_cutoff(request), threshold))


async def update_worker(request: web.Request) -> web.Response:
    worker = await owned_worker(request)
    change = await parse(request, WorkerUpdate)
    if change.maintenance is not None:
        worker.maintenance = change.maintenance
        worker.maintenance_until = None  # the owner's word: it never lifts by itself (coordinator/roster.py)
        worker.missed_deadlines = 0 if not change.maintenance else worker.missed_deadlines
    for field in ("maintenance_msg", "info", "name"):
        if getattr(change, field) is not None:
            setattr(worker, field, getattr(change, field))
    try:
        async with broker(request).services.database.transaction() as tx:
            await tx.save_worker(worker)
    except NameTaken as error:
        raise HordeError(400, RC.WORKER_NAME_EXISTS, f"Worker name {worker.name} is taken.") from error
    return reply(change.model_dump(exclude_none=True))


async def delete_worker(request: web.Request) -> web.Response:
    worker = await owned_worker(request)
    async with broker(request).services.database.transaction() as tx:
        await tx.delete_worker(worker.id)
    return reply({"deleted_id": worker.id, "deleted_name": worker.name})


ENDPOINTS = [
    Endpoint("GET", "/v2/workers", list_workers, "All known nodes.", response=WorkerDetails, many=True),
    Endpoint("GET", "/v2/workers/{id}", get_worker, "One node.", response=WorkerDetails),
    Endpoint("PUT", "/v2/workers/{id}", update_worker, "Change a node (its owner only).", body=WorkerUpdate,
             auth="required", example={"maintenance": True, "maintenance_msg": "upgrading drivers"}),
    Endpoint("DELETE", "/v2/workers/{id}", delete_worker, "Remove a node (its owner only).", auth="required"),
]
