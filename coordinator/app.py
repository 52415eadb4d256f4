"""The aiohttp application factory: wires config → services → broker → routes."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from coordinator.broker import Broker
from coordinator.config import CoordinatorConfig
from coordinator.connections import CONNECTIONS, guard_for, request_limits
from coordinator.events import WITHOUT_WEBHOOK
from coordinator.images import open_images
from coordinator.metrics import METRICS, Metrics, request_metrics
from coordinator.middleware import horde_errors
from coordinator.routes import ENDPOINTS
from coordinator.routes.http import BROKER
from coordinator.routes.site import add_site_routes
from coordinator.services import Services
from coordinator.storage import open_database
from coordinator.stream import PROGRESS_CHANNEL
from coordinator.tokens import Tokens
from transport.keyfiles import load_or_create_identity, load_or_create_secret

log = logging.getLogger("horde.coordinator")


async def open_services(config: CoordinatorConfig) -> Services:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    database = await open_database(config.database_url)
    try:
        images = await open_images(config)
        identity = load_or_create_identity(config.key_path)
        tokens = Tokens(load_or_create_secret(config.secret_path))
    except BaseException:
        await database.close()
        raise
    return Services(config=config, database=database, images=images, identity=identity, tokens=tokens)


def create_app(config: CoordinatorConfig, *, run_upkeep: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[request_metrics, horde_errors, request_limits], client_max_size=config.max_body_bytes
    )
    # Serve it with connections.GuardedRunner, which applies these limits to connections too.
    app[CONNECTIONS] = guard_for(config)
    app[METRICS] = Metrics()
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, "/api" + endpoint.path, endpoint.handler)
    add_site_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services = await open_services(config)
        if config.trust_forwarded_for and not config.public_url:
            # Not fatal (a proxy may pass Host and the scheme through), but usually a mistake: behind a TLS
            # proxy, image and upload URLs would say http:// and clients' signatures (over https://) fail.
            log.warning(
                "HORDE_TRUST_PROXY is on but HORDE_PUBLIC_URL is not set: URLs and signature checks "
                "use the address the proxy forwards to"
            )
        broker = Broker.build(services)
        app[BROKER] = broker
        await services.database.listen(_relay(broker))
        upkeep = asyncio.create_task(broker.upkeep.run_forever()) if run_upkeep else None
        log.info("coordinator ready", extra={"public_key": services.identity.public_key.text()})
        yield
        if upkeep is not None:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
        await broker.webhooks.close()
        await services.close()

    async def end_long_polls(app: web.Application) -> None:
        # Shutdown waits for open handlers; long-polls would hold it up to 30 s for nothing.
        app[BROKER].services.hub.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_long_polls)
    return app


def _relay(broker: Broker) -> Callable[[str, str], Awaitable[None] | None]:
    """Feed other processes' announcements into this process's wake-ups."""

    def on_event(channel: str, payload: str) -> Awaitable[None] | None:
        if channel == "jobs":
            broker.services.hub.jobs_announced(payload)
        elif channel == "request":
            broker.services.hub.request_changed(payload)
        elif channel == "worker":
            return broker.roster.changed(payload)
        elif channel == WITHOUT_WEBHOOK:
            broker.webhooks.remember_without(payload)
        elif channel == PROGRESS_CHANNEL:
            broker.live.relayed(payload)
        return None

    return on_event
