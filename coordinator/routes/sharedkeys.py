"""Shared keys: /v2/sharedkeys (AI Horde's routes: PUT creates, the id names one key)."""

from aiohttp import web

from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, caller, parse, reply
from protocol.sharedkeys import SharedKeyDetails, SharedKeyInput, SimpleResponse


async def create(request: web.Request) -> web.Response:
    body = await parse(request, SharedKeyInput)
    return reply(await broker(request).sharedkeys.create(await caller(request), body))


async def show(request: web.Request) -> web.Response:
    return reply(await broker(request).sharedkeys.show(request.match_info["id"]))


async def modify(request: web.Request) -> web.Response:
    body = await parse(request, SharedKeyInput)
    return reply(await broker(request).sharedkeys.modify(await caller(request), request.match_info["id"], body))


async def delete(request: web.Request) -> web.Response:
    await broker(request).sharedkeys.delete(await caller(request), request.match_info["id"])
    return reply(SimpleResponse())


ENDPOINTS = [
    Endpoint(
        "PUT",
        "/v2/sharedkeys",
        create,
        "Create a shared key: an apikey that spends your kudos within its limits (-1: no limit).",
        body=SharedKeyInput,
        response=SharedKeyDetails,
        auth="required",
        example={"kudos": 500, "expiry": 7, "name": "for my bot", "max_image_pixels": 262144},
    ),
    Endpoint(
        "GET",
        "/v2/sharedkeys/{id}",
        show,
        "A shared key's settings and the kudos it has been charged.",
        response=SharedKeyDetails,
    ),
    Endpoint(
        "PATCH",
        "/v2/sharedkeys/{id}",
        modify,
        "Change a shared key's settings (its owner only).",
        body=SharedKeyInput,
        response=SharedKeyDetails,
        auth="required",
    ),
    Endpoint(
        "DELETE",
        "/v2/sharedkeys/{id}",
        delete,
        "Delete a shared key (its owner only).",
        response=SimpleResponse,
        auth="required",
    ),
]
