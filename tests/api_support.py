"""Shared helpers for the coordinator API tests (tests/test_api_*.py): small request bodies,
nodes and requesters over real HTTP, and direct looks at the database the coordinator uses."""

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from coordinator.config import CoordinatorConfig
from protocol.httpsig import sign_request
from protocol.keys import Identity
from tests.conftest import RunningCoordinator, TestAccount, coordinator_config, start_coordinator
from tests.helpers import Api, Reply, SimWorker

MODEL = "tiny-sd"


def small(prompt: str = "a cat", n: int = 1, models: list[str] | None = None, **params: Any) -> dict[str, Any]:
    """A cheap request body: 64×64, 4 steps, for `models` (default the tiny model)."""
    return {
        "prompt": prompt,
        "models": [MODEL] if models is None else models,
        "params": {"width": 64, "height": 64, "steps": 4, "n": n, **params},
    }


def png(size: int = 64, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), (10, 120, 200) if mode == "RGB" else (10, 120, 200, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def requester(coordinator: RunningCoordinator, account: TestAccount) -> Api:
    return Api(coordinator.url, apikey=account.apikey)


def node(
    coordinator: RunningCoordinator,
    owner: TestAccount,
    name: str,
    *,
    signed: bool = True,
    identity: Identity | None = None,
    **kw: Any,
) -> SimWorker:
    """A simulated node owned by `owner`: apikey plus (by default) its own signing key."""
    key = (identity or Identity.generate()) if signed else None
    return SimWorker(Api(coordinator.url, apikey=owner.apikey, identity=key), name, **kw)


class RequesterAndNode(NamedTuple):
    """The set-up most API tests start from (the `pair` fixture): requester `alice` with 100 kudos and her
    apikey's `api`, and a signing node `worker` named n1, owned by another account, `owner`."""

    alice: TestAccount
    api: Api
    owner: TestAccount
    worker: SimWorker


async def requester_and_node(
    coordinator: RunningCoordinator, kudos: float = 100, name: str = "n1", **node_settings: Any
) -> RequesterAndNode:
    """Alice (created first) and `owner`'s node; the node registers with its first pop, as a real one does."""
    alice = await coordinator.create_account("alice", kudos=kudos)
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, name, **node_settings)
    return RequesterAndNode(alice, requester(coordinator, alice), owner, worker)


async def generate(api: Api, body: dict[str, Any]) -> str:
    reply = await api.post("/v2/generate/async", body)
    assert reply.status == 202, reply.body
    return reply.body["id"]


def seed_of(popped: Reply, index: int = 0) -> str:
    return popped.body["jobs"][index]["document"]["payload"]["seed"]


async def pop_job(worker: SimWorker, **kw: Any) -> Reply:
    popped = await worker.pop(**kw)
    assert popped.status == 200, popped.body
    assert popped.body["ids"], popped.body
    return popped


async def parked(coordinator: RunningCoordinator, what: str, count: int = 1, timeout: float = 15.0) -> None:
    """Until `count` long-polls are parked on the coordinator under `what` ("pop:<node name>", "check:<request
    id>"): what a test waits for before it changes something, so the change is what wakes them."""
    await asyncio.wait_for(coordinator.broker.services.hub.until_parked(what, count), timeout)


async def fetch_one(coordinator: RunningCoordinator, sql: str, *args: Any) -> dict[str, Any] | None:
    async with coordinator.broker.services.database.reader() as tx:
        return await tx.driver.fetchone(sql, args)


async def fetch_all(coordinator: RunningCoordinator, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with coordinator.broker.services.database.reader() as tx:
        return await tx.driver.fetchall(sql, args)


async def execute(coordinator: RunningCoordinator, sql: str, *args: Any) -> int:
    async with coordinator.broker.services.database.transaction() as tx:
        return await tx.driver.execute(sql, args)


async def count(coordinator: RunningCoordinator, table: str) -> int:
    row = await fetch_one(coordinator, f"SELECT COUNT(*) AS n FROM {table}")
    assert row is not None
    return int(row["n"])


async def snapshot(coordinator: RunningCoordinator) -> dict[str, int]:
    """Row counts of every table a request or a payment would touch."""
    return {
        table: await count(coordinator, table)
        for table in ("requests", "jobs", "queue", "ledger", "accounts", "workers", "transfers")
    }


async def job_state(coordinator: RunningCoordinator, job_id: str) -> str:
    row = await fetch_one(coordinator, "SELECT state FROM jobs WHERE id = ?", job_id)
    assert row is not None
    return row["state"]


async def expire_job(coordinator: RunningCoordinator, job_id: str) -> None:
    """Move a job's deadline into the past, as if its node had run out of time."""
    now = coordinator.broker.services.clock()
    assert await execute(coordinator, "UPDATE jobs SET deadline = ? WHERE id = ?", now - 1, job_id) == 1


async def balance(coordinator: RunningCoordinator, account: TestAccount) -> float:
    return (await coordinator.account(account.id)).kudos


async def ledger_rows(coordinator: RunningCoordinator) -> list[dict[str, Any]]:
    return await fetch_all(coordinator, "SELECT * FROM ledger ORDER BY seq")


async def register_signed(
    coordinator: RunningCoordinator, username: str, identity: Identity | None = None
) -> tuple[Identity, Reply]:
    """POST /v2/accounts {username, public_key}, signed by that key."""
    identity = identity or Identity.generate()
    api = Api(coordinator.url, identity=identity)
    reply = await api.post("/v2/accounts", {"username": username, "public_key": identity.public_key.text()})
    return identity, reply


async def raw_call(
    coordinator: RunningCoordinator, method: str, path: str, body: bytes, headers: dict[str, str]
) -> Reply:
    """Send exact bytes and headers (for tampered or replayed signed requests)."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{coordinator.url}/api{path}", data=body, headers=headers) as response,
    ):
        text = await response.text()
        try:
            return Reply(response.status, json.loads(text) if text else None)
        except json.JSONDecodeError:
            return Reply(response.status, text)


def signed_headers(
    identity: Identity, coordinator: RunningCoordinator, method: str, path: str, body: bytes, **kw: Any
) -> dict[str, str]:
    url = f"{coordinator.url}/api{path}"
    return {"Content-Type": "application/json", **sign_request(identity, method, url, body, **kw)}


@asynccontextmanager
async def custom_coordinator(
    tmp_path: Path, database_url: str | None, **settings: Any
) -> AsyncIterator[RunningCoordinator]:
    """A coordinator like the fixture's, with some settings changed."""
    config: CoordinatorConfig = replace(coordinator_config(tmp_path / "custom", database_url), **settings)
    running = await start_coordinator(config)
    try:
        yield running
    finally:
        await running.stop()
