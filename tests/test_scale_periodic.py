"""Work that read the whole world on every turn now reads only what changed (issue 19), shown by counting
reads, never by timing:

- upkeep's end of automatic maintenance asks the database for the workers due, not for every worker;
- a long-polled check reloads its request only when woken for it, not on each look at its place and ETA;
- webhooks read a request at most once to learn it has no webhook, not on every change of it.
"""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import coordinator.requesting as requesting
from coordinator.roster import MAINTENANCE_CLEAN_SECONDS
from coordinator.storage.sql import Tx
from tests.api_support import generate, node, pop_job, requester, seed_of, small
from tests.conftest import POSTGRES_DSN, RunningCoordinator, coordinator_config, start_coordinator
from tests.helpers import tiny_webp
from tests.pg import fresh_database

pytestmark = pytest.mark.timeout(120)


async def test_the_end_of_maintenance_reads_only_the_workers_due(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    owners = [await coordinator.create_account("owner"), await coordinator.create_account("owner2")]
    names = ("due", "not-yet", "owners", "working")
    for index, name in enumerate(names):  # an untrusted account may run 3
        assert (await node(coordinator, owners[index // 2], name).pop()).status == 200
    services = coordinator.broker.services
    now = services.clock()
    until = {"due": now - 1, "not-yet": now + MAINTENANCE_CLEAN_SECONDS, "owners": None}
    async with services.database.transaction() as tx:
        for name, lifted_at in until.items():
            worker = await tx.worker_by("name", name)
            assert worker is not None
            worker.maintenance, worker.maintenance_until = True, lifted_at
            await tx.save_worker(worker)

    async def every_worker(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("end_maintenance read every worker")

    monkeypatch.setattr(Tx, "list_workers", every_worker)
    assert await coordinator.broker.upkeep.end_maintenance() == 1  # only "due" was read and lifted
    monkeypatch.undo()
    async with services.database.reader() as tx:
        states = {name: getattr(await tx.worker_by("name", name), "maintenance", None) for name in names}
    assert states == {"due": False, "not-yet": True, "owners": True, "working": False}


async def test_a_long_polled_check_reloads_its_request_only_when_woken_for_it(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, owner = await coordinator.create_account("alice", kudos=100), await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    assert (await worker.pop()).status == 200
    request_id = await generate(requester(coordinator, alice), small())
    desk = coordinator.broker.requests
    loads: list[str] = []
    original_load = desk.load

    async def counted_load(rid: str) -> Any:
        loads.append(rid)
        return await original_load(rid)

    monkeypatch.setattr(desk, "load", counted_load)
    # The check's timer (its look at place and ETA every NEWS_POLL_SECONDS) fires at once three times, as
    # if that much time had passed; its fourth wait is a real one, for the request's own change.
    timer_fired, really_waiting = 0, asyncio.Event()
    real_wait_for: Callable[..., Any] = requesting.wait_for

    async def wait_for(event: asyncio.Event, timeout: float) -> bool:
        nonlocal timer_fired
        if timer_fired < 3:
            timer_fired += 1
            return False
        really_waiting.set()
        return bool(await real_wait_for(event, 30.0))

    monkeypatch.setattr(requesting, "wait_for", wait_for)
    check = asyncio.create_task(requester(coordinator, alice).get(f"/v2/generate/check/{request_id}?wait=30"))
    await asyncio.wait_for(really_waiting.wait(), 30)
    assert loads == [request_id]  # three looks at its place, no reload: nothing woke it
    assert REGISTRY.get_sample_value("horde_long_polls_parked", {"kind": "check"}) == 1  # what bench/scale.py reads
    popped = await pop_job(worker)  # the request changes: its image is being made
    answer = await asyncio.wait_for(check, 30)
    assert answer.body["processing"] == 1 and answer.body["waiting"] == 0, answer.body
    assert loads == [request_id, request_id]
    assert REGISTRY.get_sample_value("horde_long_polls_parked", {"kind": "check"}) == 0
    assert f"check:{request_id}" not in coordinator.broker.services.hub._parked  # nothing kept per request
    assert (await worker.submit(popped.body["ids"][0], seed_of(popped), tiny_webp())).status == 200


async def test_webhooks_read_a_request_without_one_at_most_once(coordinator: RunningCoordinator) -> None:
    """Accepted here: known to have no webhook, never read. Accepted elsewhere (another process, or before a
    restart: here, forgotten): read at its first change only."""
    alice, owner = await coordinator.create_account("alice", kudos=100), await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    assert (await worker.pop()).status == 200
    webhooks = coordinator.broker.webhooks
    for accepted_elsewhere, expected_reads in ((False, 0), (True, 1)):
        reads = webhooks.reads
        await generate(requester(coordinator, alice), small())
        if accepted_elsewhere:
            webhooks._without.clear()
        popped = await pop_job(worker)  # a change of the request
        await asyncio.gather(*webhooks._running.values())
        assert (await worker.submit(popped.body["ids"][0], seed_of(popped), tiny_webp())).status == 200
        await asyncio.gather(*webhooks._running.values())
        assert webhooks.reads - reads == expected_reads


@pytest.mark.skipif(not POSTGRES_DSN, reason="several processes share PostgreSQL only: set HORDE_TEST_POSTGRES_DSN")
async def test_another_process_never_reads_a_request_to_learn_it_has_no_webhook(tmp_path: Path) -> None:
    """A request accepted by one process and served through another: the other heard, with its jobs, that it
    has no webhook (a read of each request there was ~0.4 ms of its CPU per request, bench/scale.py)."""
    async with fresh_database(POSTGRES_DSN or "") as url:
        config = coordinator_config(tmp_path / "shared", url)  # one data dir: one apikey secret, as replicas
        first, second = await start_coordinator(config), await start_coordinator(config)
        try:
            alice, owner = await first.create_account("alice", kudos=100), await first.create_account("owner")
            worker = node(second, owner, "n1")
            assert (await worker.pop()).status == 200
            webhooks = second.broker.webhooks
            parked = asyncio.create_task(worker.pop(wait=30))  # woken by the jobs' announcement
            await second.broker.services.hub.until_parked("pop:n1")
            await generate(requester(first, alice), small())
            popped = await parked
            assert popped.status == 200 and popped.body["ids"], popped.body
            assert (await worker.submit(popped.body["ids"][0], seed_of(popped), tiny_webp())).status == 200
            await asyncio.gather(*webhooks._running.values())
            assert webhooks.reads == 0
        finally:
            await second.stop()
            await first.stop()
