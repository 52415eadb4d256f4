"""What the coordinator serves outside the API: `/metrics` for Prometheus, and the status page (`/`
and its static files), which reads the same public API as everyone else."""

from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from coordinator.metrics import METRICS
from coordinator.routes.http import broker

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


async def metrics(request: web.Request) -> web.Response:
    exporter = request.app[METRICS]
    await exporter.refresh(broker(request))
    response = web.Response(body=exporter.exposition())
    response.content_type, response.charset = CONTENT_TYPE_LATEST.split(";")[0], "utf-8"
    return response


async def status_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def add_site_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", status_page)
    app.router.add_static("/static/", WEB_DIR, append_version=False)
