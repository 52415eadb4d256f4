"""Nodes as the API shows them: /v2/workers (coordinator/workers.py holds the rules)."""

from aiohttp import web

from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, caller, parse, reply, wants_provenance
from protocol.accounts import WorkerDetails, WorkerUpdate


async def list_workers(request: web.Request) -> web.Response:
    """AI Horde's filters: `type` (every node of ours serves images) and `name` (exact, any case)."""
    name, kind = request.query.get("name"), request.query.get("type", "")
    workers = await broker(request).workers.listing(name, kind)
    return reply(workers, ours=wants_provenance(request))


async def get_worker(request: web.Request) -> web.Response:
    worker = await broker(request).workers.find("id", request.match_info["id"])
    return reply(worker, ours=wants_provenance(request))


async def get_worker_by_name(request: web.Request) -> web.Response:
    worker = await broker(request).workers.find("name", request.match_info["name"])
    return reply(worker, ours=wants_provenance(request))


async def update_worker(request: web.Request) -> web.Response:
    desk = broker(request).workers
    worker = await desk.owned(await caller(request), request.match_info["id"])  # 404 or 403 before the body
    change = await parse(request, WorkerUpdate)
    await desk.update(worker, change)
    return reply(change.model_dump(exclude_none=True))


async def delete_worker(request: web.Request) -> web.Response:
    desk = broker(request).workers
    worker = await desk.owned(await caller(request), request.match_info["id"])
    await desk.delete(worker)
    return reply({"deleted_id": worker.id, "deleted_name": worker.name})


ENDPOINTS = [
    Endpoint(
        "GET",
        "/v2/workers",
        list_workers,
        "Known nodes.",
        response=WorkerDetails,
        many=True,
        query={
            "name": "only the node of this name (any case)",
            "type": "image (every node here), text or interrogation (none)",
        },
    ),
    Endpoint("GET", "/v2/workers/{id}", get_worker, "One node.", response=WorkerDetails),
    Endpoint(
        "GET", "/v2/workers/name/{name}", get_worker_by_name, "One node, by name (any case).", response=WorkerDetails
    ),
    Endpoint(
        "PUT",
        "/v2/workers/{id}",
        update_worker,
        "Change a node (its owner only).",
        body=WorkerUpdate,
        auth="required",
        example={"maintenance": True, "maintenance_msg": "upgrading drivers"},
    ),
    Endpoint("DELETE", "/v2/workers/{id}", delete_worker, "Remove a node (its owner only).", auth="required"),
]
