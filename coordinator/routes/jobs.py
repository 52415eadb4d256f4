"""Node endpoints: /v2/generate/pop, /submit, uploads, and serving images."""

from aiohttp import web

from coordinator.errors import bad_request
from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import (
    base_url,
    body_bytes,
    broker,
    caller,
    client_ip,
    parse,
    rate_key,
    reply,
    wants_provenance,
)
from protocol.errors import RC
from protocol.jobs import OUR_SKIP_REASONS, PopRequest, PopResponse, SubmitRequest, SubmitResult


async def pop(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await parse(request, PopRequest)
    broker(request).limiter.check("pop", rate_key(request, who))
    answer = await broker(request).dispatcher.pop(who, body, base_url(request))
    ours = wants_provenance(request)
    if not ours and OUR_SKIP_REASONS & answer.skipped.keys():
        answer.skipped = {key: n for key, n in answer.skipped.items() if key not in OUR_SKIP_REASONS}
    return reply(answer, ours=ours)


async def submit(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await parse(request, SubmitRequest)
    broker(request).limiter.check("submit", rate_key(request, who))
    return reply(await broker(request).results.submit(who, body, client_ip(request)), ours=wants_provenance(request))


async def upload(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    data = await body_bytes(request)
    if not data:
        raise bad_request(RC.IMAGE_VALIDATION_FAILED, "The upload is empty.")
    await broker(request).results.accept_upload(request.match_info["job_id"], token, data)
    return web.Response(status=200)


async def serve_file(request: web.Request) -> web.Response:
    data, content_type = await broker(request).gallery.file(request.match_info["name"])
    return web.Response(body=data, content_type=content_type, headers={"Cache-Control": "max-age=86400"})


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v2/generate/pop",
        pop,
        "A node asks for work; `wait` long-polls up to 30 s.",
        body=PopRequest,
        response=PopResponse,
        auth="required",
        example={"name": "my-node", "models": ["tiny-sd"], "max_pixels": 262144, "wait": 20},
    ),
    Endpoint(
        "POST",
        "/v2/generate/submit",
        submit,
        "A node returns an image (base64 or 'R2' after upload).",
        body=SubmitRequest,
        response=SubmitResult,
        auth="required",
    ),
    Endpoint(
        "PUT",
        "/v2/upload/{job_id}",
        upload,
        "Upload a result image to a pop's r2_upload URL.",
        query={"token": "the token from the pop's upload URL"},
        auth="none",
    ),
    Endpoint("GET", "/v2/images/{name}", serve_file, "A generated image.", auth="none"),
    Endpoint("GET", "/v2/sources/{name}", serve_file, "A request's source image or mask, for its node.", auth="none"),
]
