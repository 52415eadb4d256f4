"""The node's HTTP client: what it signs and sends, and how it sorts the answers it gets."""

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from node.config import NodeConfig
from node.console import Console
from node.coordinator_api import ApiError, CoordinatorClient, Unreachable
from node.startup import adopt
from protocol.accounts import CoordinatorInfo
from protocol.httpsig import has_signature, verify_request
from protocol.jobs import PopRequest, SubmitRequest
from protocol.keys import Identity
from tests.conftest import free_port


class Recorder:
    """A stand-in coordinator that records requests and answers from `replies[path]`."""

    def __init__(self) -> None:
        self.seen: list[tuple[web.Request, bytes]] = []
        self.replies: dict[str, tuple[int, Any]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request, await request.read()))
        status, body = self.replies.get(request.path, (404, {"message": "not here", "rc": "NotFound"}))
        return web.json_response(body, status=status)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield recorder, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_signed_requests_carry_apikey_and_a_verifiable_signature(server: tuple[Recorder, str]) -> None:
    recorder, url = server
    recorder.replies["/api/v2/generate/pop"] = (200, {"ids": [], "skipped": {"models": 2}})
    node = Identity.generate()
    async with CoordinatorClient(url, apikey="owner-key", identity=node) as client:
        pop = await client.pop(PopRequest(name="n", models=["m"], wait=1))
    assert pop.skipped == {"models": 2}
    request, body = recorder.seen[0]
    assert request.headers["apikey"] == "owner-key"
    assert request.headers["Client-Agent"].startswith("horde-node:")
    signed = verify_request("POST", str(request.url), request.headers, body)
    assert signed.key == node.public_key


async def test_apikey_only_mode_signs_nothing(server: tuple[Recorder, str]) -> None:
    recorder, url = server
    async with CoordinatorClient(url, apikey="owner-key", identity=Identity.generate()) as client:
        assert await client.coordinator_info() is None  # a plain AI Horde has no /v2/coordinator
        config = NodeConfig(coordinator_url=url)
        assert adopt(None, config, client.identity, client, Console(io.StringIO())) == (None, False)
        recorder.replies["/api/v2/generate/submit"] = (200, {"reward": 4.5})
        assert await client.submit(SubmitRequest(id="j", generation="abc", seed="1")) == 4.5
    request, _ = recorder.seen[-1]
    assert request.headers["apikey"] == "owner-key" and not has_signature(request.headers)


@pytest.mark.parametrize(
    ("status", "rc", "kind", "final"),
    [
        (400, "DuplicateGen", ApiError, True),
        (400, "AbortedGen", ApiError, True),
        (404, "InvalidJobID", ApiError, False),
        (401, "InvalidAPIKey", ApiError, False),
        (429, "RateLimited", Unreachable, False),
        (503, "StorageUnavailable", Unreachable, False),
    ],
)
async def test_answers_are_sorted_into_retry_or_final(
    server: tuple[Recorder, str], status: int, rc: str, kind: type[Exception], final: bool
) -> None:
    recorder, url = server
    recorder.replies["/api/v2/generate/submit"] = (status, {"message": "no", "rc": rc})
    async with CoordinatorClient(url, apikey="k") as client:
        with pytest.raises(kind) as raised:
            await client.submit(SubmitRequest(id="j", seed="1"))
    if isinstance(raised.value, ApiError):
        assert raised.value.rc == rc and raised.value.is_final_submit is final


async def test_a_closed_port_is_unreachable() -> None:
    async with CoordinatorClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(Unreachable):
            await client.coordinator_info()


async def test_uploads_and_downloads_carry_no_credentials(server: tuple[Recorder, str]) -> None:
    recorder, url = server
    recorder.replies["/store/1"] = (200, {})
    async with CoordinatorClient(url, apikey="secret", identity=Identity.generate()) as client:
        await client.upload(f"{url}/store/1", b"image", "image/webp")
        await client.download(f"{url}/store/1", max_bytes=1024, limit_s=5)
    for request, _ in recorder.seen:
        assert "apikey" not in request.headers and not has_signature(request.headers)
    assert recorder.seen[0][1] == b"image" and recorder.seen[0][0].content_type == "image/webp"


def test_an_unreadable_pinned_key_is_a_clear_error() -> None:
    info = CoordinatorInfo(public_key=Identity.generate().public_key.text(), version="1", features=[])
    config = NodeConfig(coordinator_public_key="ed25519:...")
    client = CoordinatorClient("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="coordinator_public_key"):
        adopt(info, config, None, client, Console(io.StringIO()))
