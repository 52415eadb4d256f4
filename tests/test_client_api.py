"""HordeClient against the real coordinator, in-process (the CLI tests cover the same calls as a user)."""

from __future__ import annotations

import asyncio

import pytest

from client.api import HordeClient
from client.errors import CoordinatorUnreachable, HordeAPIError
from protocol.errors import RC
from protocol.generation import GenerationRequest
from protocol.keys import Identity
from tests.api_support import parked
from tests.conftest import RunningCoordinator


@pytest.fixture
def database_url() -> None:
    """Client behaviour does not depend on the coordinator's engine: SQLite only."""
    return None


def small_request(**changes: object) -> GenerationRequest:
    body = {"prompt": "a fox", "params": {"width": 64, "height": 64, "steps": 1}, **changes}
    return GenerationRequest.model_validate(body)


async def test_signed_registration_then_signed_calls(coordinator: RunningCoordinator) -> None:
    identity = Identity.generate()
    async with HordeClient(coordinator.url, identity=identity) as client:
        account = await client.register("signer")
        assert account.public_key == identity.public_key.text()
        # No apikey at all: the signature alone identifies the account.
        me = await client.find_user()
        assert (me.id, me.public_key) == (account.id, identity.public_key.text())
        accepted = await client.generate(small_request())
        assert (await client.check(accepted.id)).waiting == 1


async def test_unregistered_key_is_refused(coordinator: RunningCoordinator) -> None:
    async with HordeClient(coordinator.url, identity=Identity.generate()) as client:
        with pytest.raises(HordeAPIError) as caught:
            await client.find_user()
    assert caught.value.status == 401 and caught.value.rc == "UnknownSignatureKey"


async def test_error_bodies_become_api_errors(coordinator: RunningCoordinator) -> None:
    async with HordeClient(coordinator.url, apikey="0000000000") as client:
        with pytest.raises(HordeAPIError) as caught:
            await client.status("no-such-request")
        assert caught.value.status == 404 and caught.value.rc
        with pytest.raises(HordeAPIError) as caught:
            await client.find_user()
        assert caught.value.status == 403 and caught.value.rc == RC.ANON_FORBIDDEN
    async with HordeClient(coordinator.url, apikey="wrong-key") as client:
        with pytest.raises(HordeAPIError) as caught:
            await client.find_user()
        assert caught.value.rc == RC.INVALID_API_KEY
        assert caught.value.describe().endswith(f"({RC.INVALID_API_KEY})")


async def test_unreachable_coordinator() -> None:
    async with HordeClient("http://127.0.0.1:9", timeout=5) as client:
        with pytest.raises(CoordinatorUnreachable) as caught:
            await client.heartbeat()
    assert caught.value.url == "http://127.0.0.1:9" and caught.value.reason


async def test_long_poll_returns_when_the_request_changes(coordinator: RunningCoordinator) -> None:
    user = await coordinator.create_account("poller")
    async with HordeClient(coordinator.url, apikey=user.apikey) as client:
        accepted = await client.generate(small_request())
        polling = asyncio.create_task(client.check(accepted.id, wait=20))
        await parked(coordinator, f"check:{accepted.id}")
        assert not polling.done()
        await client.cancel(accepted.id)
        check = await asyncio.wait_for(polling, 5)
    assert check.done and check.waiting == 0


async def test_dry_run_prices_without_queueing(coordinator: RunningCoordinator) -> None:
    async with HordeClient(coordinator.url) as client:
        price = await client.dry_run(small_request())
    assert price.kudos > 0


async def test_ledger_is_read_page_by_page(coordinator: RunningCoordinator) -> None:
    accounts = [await coordinator.create_account(f"user{index}", kudos=10 + index) for index in range(3)]
    async with HordeClient(coordinator.url, apikey=accounts[0].apikey) as client:
        await client.transfer("user1", 2.5, idempotency_key="same-key")
        await client.transfer("user1", 2.5, idempotency_key="same-key")  # a retry: moves nothing more
        entries = [entry async for entry in client.ledger(page_size=1)]
        head = await client.ledger_head()
        me = await client.find_user()
    assert [entry.seq for entry in entries] == [1, 2, 3, 4]
    assert head.seq == 4 and head.hash == entries[-1].hash
    assert me.kudos == pytest.approx(7.5)
