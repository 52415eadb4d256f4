"""Network status: heartbeat, models, performance, totals, the coordinator's identity
(coordinator/network.py holds the rules)."""

from aiohttp import web

from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, int_query, reply, wants_provenance
from protocol.accounts import CoordinatorInfo, Heartbeat, ImageTotals, ModelStatus, Performance


async def heartbeat(request: web.Request) -> web.Response:
    return reply(broker(request).network.heartbeat())


async def coordinator_info(request: web.Request) -> web.Response:
    return reply(broker(request).network.coordinator())


async def models(request: web.Request) -> web.Response:
    """AI Horde's filters: `type` (image models only here), `min_count`, `max_count`."""
    kind = request.query.get("type", "image")
    least, most = int_query(request, "min_count", 0, 10**6), int_query(request, "max_count", 10**6, 10**6)
    return reply(await broker(request).network.models(kind, least, most), ours=wants_provenance(request))


async def single_model(request: web.Request) -> web.Response:
    answer = await broker(request).network.model(request.match_info["model_name"])
    return reply(answer, ours=wants_provenance(request))


async def performance(request: web.Request) -> web.Response:
    return reply(await broker(request).network.performance(), ours=wants_provenance(request))


async def totals(request: web.Request) -> web.Response:
    return reply(await broker(request).network.totals())


ENDPOINTS = [
    Endpoint("GET", "/v2/status/heartbeat", heartbeat, "Is the coordinator up.", response=Heartbeat, auth="none"),
    Endpoint(
        "GET",
        "/v2/status/models",
        models,
        "Models online nodes serve, with queue and ETA (a list).",
        response=ModelStatus,
        many=True,
        auth="none",
        query={
            "type": "image (default) or all; text gives []",
            "min_count": "only models served by at least this many nodes",
            "max_count": "only models served by at most this many nodes",
        },
    ),
    Endpoint(
        "GET",
        "/v2/status/models/{model_name}",
        single_model,
        "One model's status (a list of 0 or 1).",
        response=ModelStatus,
        many=True,
        auth="none",
    ),
    Endpoint(
        "GET", "/v2/status/performance", performance, "Queue size and throughput.", response=Performance, auth="none"
    ),
    Endpoint("GET", "/v2/stats/img/totals", totals, "Images made per period.", response=ImageTotals, auth="none"),
    Endpoint(
        "GET",
        "/v2/coordinator",
        coordinator_info,
        "This coordinator's public key, version and features.",
        response=CoordinatorInfo,
        auth="none",
    ),
]
