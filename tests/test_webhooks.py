"""Signed webhooks: a POST per finished image and one at completion, signed by the coordinator (RFC 9421)
and verifiable offline (`horde webhook verify`); retried for a bounded time; never to loopback,
link-local or private addresses unless the operator allows them."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from client.cli import main as horde
from client.webhooks import verify_webhook
from coordinator.metrics import WEBHOOK_DELIVERIES
from coordinator.webhooks import address_allowed
from tests.api_support import custom_coordinator, generate, node, requester, small
from tests.conftest import RunningCoordinator, free_port
from tests.node_support import until


@dataclass
class Received:
    url: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    fail_first: int = 0  # answer 500 to this many POSTs first
    posts: list[Received] = field(default_factory=list)
    attempts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.arrived.set()
        if self.attempts <= self.fail_first:
            return web.Response(status=500)
        self.posts.append(Received(str(request.url), dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def until(self, count: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while len(self.posts) < count:
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def receiver(fail_first: int = 0) -> AsyncIterator[Receiver]:
    port = free_port()
    hook = Receiver(f"http://127.0.0.1:{port}/hook?token=abc", fail_first)
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield hook
    finally:
        await runner.cleanup()


@pytest.fixture
async def open_coordinator(tmp_path: Path, database_url: str | None) -> AsyncIterator[RunningCoordinator]:
    """A coordinator whose operator lets webhooks reach private addresses (the receiver is on loopback)."""
    async with custom_coordinator(
        tmp_path, database_url, webhook_private_addresses=True, webhook_retry_seconds=30.0
    ) as running:
        yield running


async def test_each_image_and_the_completion_are_posted_signed(
    open_coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    coordinator = open_coordinator
    owner = await coordinator.create_account("owner")
    alice = await coordinator.create_account("alice", kudos=100)
    worker = node(coordinator, owner, "hooked")
    async with receiver(fail_first=1) as hook:
        request_id = await generate(requester(coordinator, alice), {**small(n=2), "webhook": hook.url})
        assert await worker.serve_one() is not None
        assert await worker.serve_one() is not None
        await hook.until(3)
    key = coordinator.public_key.text()
    events = [post.payload["event"] for post in hook.posts]
    assert events == ["image", "image", "done"]
    assert hook.attempts == 4  # the first POST failed and was retried
    assert {post.payload["request_id"] for post in hook.posts} == {request_id}
    jobs = [post.payload["generation"] for post in hook.posts[:2]]
    status = (await requester(coordinator, alice).get(f"/v2/generate/status/{request_id}")).body
    assert sorted(job["id"] for job in jobs) == sorted(g["id"] for g in status["generations"])
    assert all(job["signature"] and job["job_signature"] and job["image_sha256"] for job in jobs)
    assert hook.posts[2].payload["check"]["done"] and hook.posts[2].payload["check"]["finished"] == 2
    for post in hook.posts:
        assert post.url == hook.url
        report = verify_webhook(hook.url, post.headers, post.body, key)
        assert report.ok, report.problems
        assert report.signer == key
    # Tampered, or sent to another URL, or pinned to another key: refused.
    tampered = hook.posts[0].body.replace(b'"image"', b'"imagE"')
    assert not verify_webhook(hook.url, hook.posts[0].headers, tampered, key).ok
    assert not verify_webhook(hook.url + "x", hook.posts[0].headers, hook.posts[0].body, key).ok
    other = "ed25519:" + "A" * 43
    assert not verify_webhook(hook.url, hook.posts[0].headers, hook.posts[0].body, other).ok
    # The CLI, offline, on files as a receiver would log them.
    (tmp_path / "headers.txt").write_text("\n".join(f"{k}: {v}" for k, v in hook.posts[0].headers.items()))
    (tmp_path / "body.json").write_bytes(hook.posts[0].body)
    (tmp_path / "tampered.json").write_bytes(tampered)
    common = ["webhook", "verify", "--webhook-url", hook.url, "--headers", str(tmp_path / "headers.txt")]
    assert (
        await asyncio.to_thread(horde, [*common, "--body", str(tmp_path / "body.json"), "--coordinator-key", key]) == 0
    )
    assert await asyncio.to_thread(horde, [*common, "--body", str(tmp_path / "tampered.json")]) == 1


async def test_a_webhook_to_loopback_is_refused_by_default(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    async with receiver() as hook:
        for url in (
            hook.url,
            hook.url.replace("127.0.0.1", "localhost"),
            "http://169.254.169.254/latest",
            "http://10.1.2.3/hook",
            "http://[::1]:80/hook",
            "http://[::ffff:127.0.0.1]/hook",
        ):
            reply = await api.post("/v2/generate/async", {**small(), "webhook": url})
            assert reply.status == 400, (url, reply.body)
            assert reply.body["rc"] == "WebhookRefused", (url, reply.body)
        not_a_url = await api.post("/v2/generate/async", {**small(), "webhook": "ftp://example.com/x"})
        assert not_a_url.status == 400 and not_a_url.body["rc"]
    assert hook.attempts == 0


def test_which_addresses_webhooks_may_reach() -> None:
    for refused in (
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
    ):
        assert not address_allowed(refused, private_ok=False), refused
        assert address_allowed(refused, private_ok=True), refused
    for public in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "1.1.1.1"):
        assert address_allowed(public, private_ok=False), public


async def test_a_failing_receiver_is_retried_for_a_bounded_time(tmp_path: Path, database_url: str | None) -> None:
    async with custom_coordinator(
        tmp_path, database_url, webhook_private_addresses=True, webhook_retry_seconds=2.0
    ) as coordinator:
        alice = await coordinator.create_account("alice", kudos=100)
        abandoned = WEBHOOK_DELIVERIES.labels("abandoned")._value.get()
        async with receiver(fail_first=10**6) as hook:
            request_id = await generate(requester(coordinator, alice), {**small(), "webhook": hook.url})
            reply = await requester(coordinator, alice).call("DELETE", f"/v2/generate/status/{request_id}")
            assert reply.status == 200
            await until(lambda: WEBHOOK_DELIVERIES.labels("abandoned")._value.get() > abandoned, 30, "given up")
        # 0.5 + 1 s of backoff fit in 2 s, the next (2 s) would not: three attempts, then given up.
        assert hook.attempts == 3
        assert not hook.posts
