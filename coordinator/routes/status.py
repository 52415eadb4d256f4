"""Network status: heartbeat, models, performance, totals, the coordinator's identity, OpenAPI."""

from aiohttp import web

from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, int_query, reply, wants_provenance
from protocol.accounts import (
    CoordinatorInfo,
    Heartbeat,
    ImageTotals,
    ModelStatus,
    Performance,
    PeriodTotals,
)

FEATURES = ["long-poll-pop", "long-poll-check", "signed-requests", "signed-jobs", "signed-results",
            "signed-ledger-head", "uploads", "progress-stream", "step-progress", "signed-webhooks", "metrics"]
PERIOD_MINUTES = {"minute": 1, "hour": 60, "day": 60 * 24, "month": 60 * 24 * 30, "total": 10**9}


async def heartbeat(request: web.Request) -> web.Response:
    return reply(Heartbeat(version=broker(request).services.config.version))


async def coordinator_info(request: web.Request) -> web.Response:
    services = broker(request).services
    return reply(CoordinatorInfo(
        public_key=services.identity.public_key.text(), version=services.config.version, features=FEATURES,
    ))


async def model_statuses(request: web.Request) -> list[ModelStatus]:
    return await broker(request).outlooks.model_statuses()


async def models(request: web.Request) -> web.Response:
    """AI Horde's filters: `type` (image models only here), `min_count`, `max_count`."""
    if request.query.get("type", "image") not in ("image", "all"):
        return reply([])
    least = int_query(request, "min_count", 0, 10**6)
    most = int_query(request, "max_count", 10**6, 10**6)
    answer = [model for model in await model_statuses(request) if least <= model.count <= most]
    return reply(answer, ours=wants_provenance(request))


async def single_model(request: web.Request) -> web.Response:
    name = request.match_info["model_name"]
    answer = [model for model in await model_statuses(request) if model.name == name]
    return reply(answer, ours=wants_provenance(request))


async def performance(request: web.Request) -> web.Response:
    services = broker(request).services
    workers = await broker(request).roster.online()
    now_minute = int(services.clock() // 60)
    async with services.database.reader() as tx:
        queued_requests = await tx.queued_requests()
        pixelsteps = await tx.queued_pixelsteps()
        _, past_minute = await tx.stats_since(now_minute - 1)
    speed, eta = await broker(request).outlooks.network()
    return reply(Performance(
        queued_requests=queued_requests,
        queued_megapixelsteps=round(pixelsteps / 1e6, 2),
        past_minute_megapixelsteps=round(past_minute, 2),
        worker_count=len(workers), thread_count=sum(w.threads for w in workers),
        megapixelsteps_per_second=speed, eta=eta,
    ), ours=wants_provenance(request))


async def totals(request: web.Request) -> web.Response:
    services = broker(request).services
    now_minute = int(services.clock() // 60)
    periods = {}
    async with services.database.reader() as tx:
        for name, minutes in PERIOD_MINUTES.items():
            images, ps = await tx.stats_since(now_minute - minutes + 1)
            periods[name] = PeriodTotals(images=images, ps=int(ps * 1_000_000))  # AI Horde's unit: pixelsteps
    return reply(ImageTotals(**periods))


ENDPOINTS = [
    Endpoint("GET", "/v2/status/heartbeat", heartbeat, "Is the coordinator up.", response=Heartbeat, auth="none"),
    Endpoint("GET", "/v2/status/models", models, "Models online nodes serve, with queue and ETA (a list).",
             response=ModelStatus, many=True, auth="none",
             query={"type": "image (default) or all; text gives []", "min_count": "only models served by at least "
                    "this many nodes", "max_count": "only models served by at most this many nodes"}),
    Endpoint("GET", "/v2/status/models/{model_name}", single_model, "One model's status (a list of 0 or 1).",
             response=ModelStatus, many=True, auth="none"),
    Endpoint("GET", "/v2/status/performance", performance, "Queue size and throughput.", response=Performance,
             auth="none"),
    Endpoint("GET", "/v2/stats/img/totals", totals, "Images made per period.", response=ImageTotals, auth="none"),
    Endpoint("GET", "/v2/coordinator", coordinator_info, "This coordinator's public key, version and features.",
             response=CoordinatorInfo, auth="none"),
]
