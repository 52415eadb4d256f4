"""The one signed session (transport/session.py) under both its users: the `horde` client and the node
send the same signed request for the same call, and neither sends credentials to another origin."""

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from client.api import HordeClient
from node.coordinator_api import CoordinatorClient
from protocol import extensions
from protocol.httpsig import has_signature, verify_request
from protocol.jobs import PopRequest
from protocol.keys import Identity
from tests.conftest import free_port

Seen = list[tuple[web.Request, bytes]]


async def serve(seen: Seen) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        seen.append((request, await request.read()))
        return web.json_response({"ids": [], "skipped": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def two_hosts() -> AsyncIterator[tuple[Seen, str, Seen, str]]:
    """The coordinator and another host (a bucket, a source's host), each recording what it gets."""
    ours: Seen = []
    theirs: Seen = []
    runners = [await serve(ours), await serve(theirs)]
    try:
        yield ours, runners[0][1], theirs, runners[1][1]
    finally:
        for runner, _ in runners:
            await runner.cleanup()


async def test_client_and_node_sign_the_same_request(two_hosts: tuple[Seen, str, Seen, str]) -> None:
    ours, url, _, _ = two_hosts
    key = Identity.generate()
    request = PopRequest(name="n", models=["m"], wait=1)
    async with HordeClient(url, apikey="k", identity=key) as client:
        await client.pop(request)
    async with CoordinatorClient(url, apikey="k", identity=key) as node:
        await node.pop(request)
    (by_client, client_body), (by_node, node_body) = ours
    assert client_body == node_body  # one serialization (AI Horde's names), one encoding
    for seen, body in ((by_client, client_body), (by_node, node_body)):
        assert seen.path == "/api/v2/generate/pop"
        assert seen.headers["apikey"] == "k" and seen.headers[extensions.HEADER] == "1"
        assert verify_request("POST", str(seen.url), seen.headers, body).key == key.public_key


async def test_no_credentials_leave_for_another_origin(two_hosts: tuple[Seen, str, Seen, str]) -> None:
    ours, url, theirs, elsewhere = two_hosts
    key = Identity.generate()
    async with HordeClient(url, apikey="secret", identity=key) as client:
        await client.download(f"{elsewhere}/bucket/image.webp")  # asks for credentials: not given
        await client.download("/api/v2/images/x.webp")  # the coordinator's own: signed
    assert len(theirs) == 1 and len(ours) == 1
    foreign, _ = theirs[0]
    assert "apikey" not in foreign.headers and not has_signature(foreign.headers)
    assert extensions.HEADER not in foreign.headers
    own, _ = ours[0]
    assert own.headers["apikey"] == "secret" and has_signature(own.headers)
