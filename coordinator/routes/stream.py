"""Live progress: a node's step reports (`POST /v2/generate/progress`) and a request's event stream
(`GET /v2/generate/stream/{id}`, server-sent events; protocol/progress.py lists the events)."""

from aiohttp import web

from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import base_url, broker, caller, parse, reply
from coordinator.stream import KEEPALIVE
from protocol.history import NetworkHistory
from protocol.progress import ProgressAccepted, ProgressReport


async def progress(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await parse(request, ProgressReport)
    return reply(ProgressAccepted(accepted=await broker(request).live.report(who, body)))


async def history(request: web.Request) -> web.Response:
    return reply(await broker(request).history.last_day())


async def stream(request: web.Request) -> web.StreamResponse:
    events = broker(request).live.events(request.match_info["id"], base_url(request))
    first = await anext(events)  # a missing request is a 404 `{message, rc}`, before any event is sent
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    await response.write(first.encode() if first else KEEPALIVE)
    async for event in events:
        await response.write(event.encode() if event else KEEPALIVE)
    await response.write_eof()
    return response


ENDPOINTS = [
    Endpoint(
        "GET",
        "/v2/status/history",
        history,
        "Images, megapixelsteps and faults per minute, last 24 hours.",
        response=NetworkHistory,
        auth="none",
    ),
    Endpoint(
        "POST",
        "/v2/generate/progress",
        progress,
        "A node's step on a job it is making (optional).",
        body=ProgressReport,
        response=ProgressAccepted,
        auth="required",
    ),
    Endpoint(
        "GET",
        "/v2/generate/stream/{id}",
        stream,
        "Server-sent events (text/event-stream) of a request: check, progress, image, end; each data is JSON.",
    ),
]
