"""Verified work: the public verdicts about an image (docs/security.md, "Verified work")."""

from aiohttp import web

from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, reply
from protocol.verdicts import ImageChecks


async def image_checks(request: web.Request) -> web.Response:
    return reply(await broker(request).results.verifier.checks_of(request.match_info["job_id"]))


ENDPOINTS = [
    Endpoint(
        "GET",
        "/v2/verdicts/{job_id}",
        image_checks,
        "Ours: whether an image (by its job id) was spot-checked, by which nodes, and the signed verdicts.",
        response=ImageChecks,
        auth="none",
    ),
]
