"""Nodes as the API shows them: /v2/workers."""

from aiohttp import web

from coordinator.auth import require_account
from coordinator.economy import withheld_reason
from coordinator.errors import HordeError, not_found
from coordinator.estimates import measured_speed
from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, caller, parse, reply, wants_provenance
from coordinator.storage import NameTaken
from coordinator.storage.records import Worker
from protocol.accounts import WorkerDetails, WorkerKudosDetails, WorkerUpdate
from protocol.errors import RC


def details(worker: Worker, online_cutoff: float, suspicion_threshold: int) -> WorkerDetails:
    speed = measured_speed(worker) or 0.0  # from its own finished jobs (coordinator/estimates.py)
    return WorkerDetails(
        id=worker.id, name=worker.name, online=worker.last_seen >= online_cutoff,
        requests_fulfilled=worker.requests_fulfilled, kudos_rewards=worker.kudos_rewards,
        kudos_details=WorkerKudosDetails(generated=worker.kudos_rewards),
        uncompleted_jobs=worker.missed_deadlines, megapixelsteps_generated=int(worker.megapixelsteps),
        post_processing=worker.post_processing,
        performance=f"{speed:.2f} megapixelsteps per second", threads=worker.threads, uptime=worker.uptime,
        maintenance_mode=worker.maintenance, info=worker.info, nsfw=worker.nsfw, trusted=worker.trusted,
        suspicious=worker.suspicion, models=worker.models, max_pixels=worker.max_pixels, img2img=worker.img2img,
        painting=worker.painting, lora=worker.lora, owner=str(worker.owner_id), public_key=worker.public_key,
        bridge_agent=worker.bridge_agent, rewards_withheld=withheld_reason(worker.suspicion, suspicion_threshold),
    )  # fmt: skip


def online_cutoff(request: web.Request) -> float:
    services = broker(request).services
    return services.clock() - services.config.worker_online_seconds


async def load_worker(request: web.Request, by: str = "id") -> Worker:
    async with broker(request).services.database.reader() as tx:
        worker = await tx.worker_by(by, request.match_info[by])
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
    """AI Horde's filters: `type` (every node of ours serves images) and `name` (exact, any case)."""
    name, kind = request.query.get("name"), request.query.get("type") or "image"  # "": every type
    async with broker(request).services.database.reader() as tx:
        if kind != "image":
            workers = []
        elif name is not None:
            workers = [worker] if (worker := await tx.worker_by("name", name)) else []
        else:
            workers = await tx.list_workers()
    cutoff = online_cutoff(request)
    threshold = broker(request).services.config.suspicion_threshold
    return reply([details(worker, cutoff, threshold) for worker in workers], ours=wants_provenance(request))


async def get_worker(request: web.Request) -> web.Response:
    threshold = broker(request).services.config.suspicion_threshold
    worker = await load_worker(request)
    return reply(details(worker, online_cutoff(request), threshold), ours=wants_provenance(request))


async def get_worker_by_name(request: web.Request) -> web.Response:
    threshold = broker(request).services.config.suspicion_threshold
    worker = await load_worker(request, "name")
    return reply(details(worker, online_cutoff(request), threshold), ours=wants_provenance(request))


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
    Endpoint("GET", "/v2/workers", list_workers, "Known nodes.", response=WorkerDetails, many=True,
             query={"name": "only the node of this name (any case)",
                    "type": "image (every node here), text or interrogation (none)"}),
    Endpoint("GET", "/v2/workers/{id}", get_worker, "One node.", response=WorkerDetails),
    Endpoint("GET", "/v2/workers/name/{name}", get_worker_by_name, "One node, by name (any case).",
             response=WorkerDetails),
    Endpoint("PUT", "/v2/workers/{id}", update_worker, "Change a node (its owner only).", body=WorkerUpdate,
             auth="required", example={"maintenance": True, "maintenance_msg": "upgrading drivers"}),
    Endpoint("DELETE", "/v2/workers/{id}", delete_worker, "Remove a node (its owner only).", auth="required"),
]
