"""Image styles: /v2/styles/image (AI Horde's routes; a style is named by id, or by name under image_by_name)."""

from aiohttp import web

from coordinator.errors import bad_request
from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, caller, int_query, parse, reply
from protocol.errors import RC
from protocol.sharedkeys import SimpleResponse
from protocol.styles import StyleInput, StyleModify, StylePatch, StyleStable

SORTS = ("popular", "age")


async def list_styles(request: web.Request) -> web.Response:
    sort = request.query.get("sort", "popular")
    if sort not in SORTS:
        raise bad_request(RC.VALIDATION, "sort must be popular or age.", {"sort": "popular or age"})
    page = max(1, int_query(request, "page", 1, 10_000))
    found = await broker(request).styles.listed(sort, page, request.query.get("tag"), request.query.get("model"))
    return reply(found)


async def create(request: web.Request) -> web.Response:
    body = await parse(request, StyleInput)
    return reply(await broker(request).styles.create(await caller(request), body))


async def by_id(request: web.Request) -> web.Response:
    return reply(await broker(request).styles.show("id", request.match_info["id"]))


async def by_name(request: web.Request) -> web.Response:
    return reply(await broker(request).styles.show("name", request.match_info["name"]))


async def modify(request: web.Request) -> web.Response:
    body = await parse(request, StylePatch)
    return reply(await broker(request).styles.modify(await caller(request), request.match_info["id"], body))


async def delete(request: web.Request) -> web.Response:
    await broker(request).styles.delete(await caller(request), request.match_info["id"])
    return reply(SimpleResponse())


ENDPOINTS = [
    Endpoint(
        "GET",
        "/v2/styles/image",
        list_styles,
        "Public image styles, 25 a page.",
        response=StyleStable,
        many=True,
        query={
            "sort": "popular (the most used first, default) or age (the newest first)",
            "page": "from 1",
            "tag": "only styles with this tag",
            "model": "only styles that use this model",
        },
    ),
    Endpoint(
        "POST",
        "/v2/styles/image",
        create,
        "Create a style: a prompt template with {p} and {np}, and the params requests naming it get.",
        body=StyleInput,
        response=StyleModify,
        auth="required",
        example={
            "name": "watercolour",
            "prompt": "{p}, watercolour ### photo, {np}",
            "params": {"steps": 20, "cfg_scale": 6},
        },
    ),
    Endpoint("GET", "/v2/styles/image/{id}", by_id, "A style by id (public or not).", response=StyleStable),
    Endpoint("GET", "/v2/styles/image_by_name/{name}", by_name, "A style by name (any case).", response=StyleStable),
    Endpoint(
        "PATCH",
        "/v2/styles/image/{id}",
        modify,
        "Change a style (its creator only; the fields sent).",
        body=StylePatch,
        response=StyleModify,
        auth="required",
    ),
    Endpoint(
        "DELETE",
        "/v2/styles/image/{id}",
        delete,
        "Delete a style (its creator only).",
        response=SimpleResponse,
        auth="required",
    ),
]
