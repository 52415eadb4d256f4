"""Requester endpoints: /v2/generate/async, /check, /status."""

from aiohttp import web

from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import (
    base_url,
    broker,
    caller,
    client_agent,
    client_ip,
    float_query,
    parse,
    rate_key,
    reply,
    wants_provenance,
)
from protocol.generation import DryRunResult, GenerationRequest, RequestAccepted, RequestCheck, RequestStatus
from protocol.jobs import MAX_LONG_POLL_SECONDS


async def generate_async(request: web.Request) -> web.Response:
    who = await caller(request, allow_shared_key=True)
    body = await parse(request, GenerationRequest)
    broker(request).limiter.check("generate", rate_key(request, who))
    await broker(request).webhooks.check_target(body.webhook)
    result = await broker(request).requests.submit(who, body, client_agent(request), client_ip(request))
    return reply(result, 200 if body.dry_run else 202)


async def check(request: web.Request) -> web.Response:
    wait = float_query(request, "wait", 0.0, MAX_LONG_POLL_SECONDS)
    known = request.query.get("finished")
    # A count nobody could know (not a number, or more digits than any request has images) is ignored.
    known_finished = int(known) if known and known.isascii() and known.isdigit() and len(known) < 10 else None
    report = await broker(request).requests.check(request.match_info["id"], wait, known_finished)
    return reply(report, ours=wants_provenance(request))


async def status(request: web.Request) -> web.Response:
    report = await broker(request).requests.status(request.match_info["id"], base_url(request))
    return reply(report, ours=wants_provenance(request))


async def cancel(request: web.Request) -> web.Response:
    await caller(request, allow_shared_key=True)  # a wrong apikey is still refused (401), as everywhere
    report = await broker(request).requests.cancel(request.match_info["id"], base_url(request))
    return reply(report, ours=wants_provenance(request))


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v2/generate/async",
        generate_async,
        "Request images (202), or price them with dry_run (200).",
        body=GenerationRequest,
        response=RequestAccepted,
        status=202,
        other_responses={200: DryRunResult},
        example={"prompt": "a lighthouse at dusk ### blurry", "params": {"width": 512, "height": 512, "n": 2}},
    ),
    Endpoint(
        "GET",
        "/v2/generate/check/{id}",
        check,
        "Progress of a request, without images.",
        response=RequestCheck,
        query={
            "wait": "seconds (≤30) to hold the answer until the request changes",
            "finished": "the finished count you already know; wait returns at once if it differs",
        },
    ),
    Endpoint(
        "GET", "/v2/generate/status/{id}", status, "Progress plus the images made so far.", response=RequestStatus
    ),
    Endpoint(
        "DELETE",
        "/v2/generate/status/{id}",
        cancel,
        "Cancel a request: its id is the capability (no apikey needed, as in AI Horde).",
        response=RequestStatus,
    ),
]
