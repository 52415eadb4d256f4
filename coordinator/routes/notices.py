"""AI Horde's informational endpoints: news, modes, the documents (terms, privacy, sponsors), and
images made per model."""

from functools import cache
from importlib import resources

from aiohttp import web
from markdown_it import MarkdownIt

from coordinator.errors import bad_request
from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, reply
from protocol.errors import RC
from protocol.notices import HordeDocument, HordeModes, ImageModelStats, Newspiece

DOCUMENTS = ("terms", "privacy", "sponsors")


@cache
def document_text(name: str) -> str:
    return (resources.files("coordinator") / "texts" / f"{name}.md").read_text(encoding="utf-8")


def news_items() -> list[Newspiece]:
    """What AI Horde clients show as news: this coordinator has none beyond what it is."""
    return [
        Newspiece(
            date_published="2026-11-29",
            title="Horde Network",
            importance="Information",
            tags=["network"],
            newspiece="This is a Horde Network coordinator: an AI Horde v2-compatible volunteer image network. "
            "Text generation, interrogation and alchemy are not served here.",
        )
    ]


async def news(request: web.Request) -> web.Response:
    return reply(news_items())


async def modes(request: web.Request) -> web.Response:
    return reply(broker(request).network.modes())


async def document(request: web.Request) -> web.Response:
    text = document_text(request.path.rsplit("/", 1)[-1])  # one route per document, so one of DOCUMENTS
    fmt = request.query.get("format", "html")
    if fmt == "markdown":
        return reply(HordeDocument(markdown=text))
    if fmt != "html":
        raise bad_request(RC.VALIDATION, "format must be html or markdown.", {"format": "html or markdown"})
    return reply(HordeDocument(html=MarkdownIt().render(text)))


async def image_model_stats(request: web.Request) -> web.Response:
    """AI Horde's `model_state`: known (the default), custom or all."""
    return reply(await broker(request).network.model_images(request.query.get("model_state", "known")))


ENDPOINTS = [
    Endpoint(
        "GET", "/v2/status/news", news, "News for clients to show (a list).", response=Newspiece, many=True, auth="none"
    ),
    Endpoint(
        "GET", "/v2/status/modes", modes, "Maintenance, invite-only and raid modes.", response=HordeModes, auth="none"
    ),
    *(
        Endpoint(
            "GET",
            f"/v2/documents/{name}",
            document,
            f"This coordinator's {name} text.",
            response=HordeDocument,
            auth="none",
            query={"format": "html (default) or markdown"},
        )
        for name in DOCUMENTS
    ),
    Endpoint(
        "GET",
        "/v2/stats/img/models",
        image_model_stats,
        "Images made per model: day, month, total.",
        response=ImageModelStats,
        auth="none",
        query={"model_state": "known (default), custom (none here) or all"},
    ),
]


async def swagger(request: web.Request) -> web.Response:
    from coordinator.swagger2 import swagger_document

    return web.json_response(swagger_document(broker(request).services.config.version))


async def openapi(request: web.Request) -> web.Response:
    from coordinator.openapi import openapi_document

    return web.json_response(openapi_document(broker(request).services.config.version))


ENDPOINTS += [
    Endpoint("GET", "/swagger.json", swagger, "This API as Swagger 2.0 (where AI Horde serves its own).", auth="none"),
    Endpoint("GET", "/openapi.json", openapi, "This API as OpenAPI 3.1.", auth="none"),
]
