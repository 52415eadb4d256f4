"""Targeted wake-ups (issue 19): a new job wakes only parked nodes that can serve it, one at a
time until it is claimed, in this process and in another PostgreSQL process.

Nodes park in real HTTP long-polls. Which nodes looked at the queue is counted by a spy on the
pop's queue query (by node name), and `EventHub.wakeups` counts wake-ups; a second job, for a
model only one other parked node serves, is the barrier that says the first job's wake-ups are
all done (announcements and wake-ups are handled in order).
"""

import asyncio
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.storage.sql import Tx
from tests.api_support import generate, node, requester, small
from tests.conftest import POSTGRES_DSN, RunningCoordinator, coordinator_config, start_coordinator
from tests.helpers import Reply, SimWorker
from tests.node_support import until

pytestmark = pytest.mark.timeout(120)
PARK = 25.0  # long enough that a node still parked at the end was never answered


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every look at the queue by a popping node, by node name."""
    seen: Counter[str] = Counter()
    original = Tx.queue_candidates

    async def counted(self: Tx, caps: Any, *args: Any, **kwargs: Any) -> Any:
        seen[caps.worker_name] += 1
        return await original(self, caps, *args, **kwargs)

    monkeypatch.setattr(Tx, "queue_candidates", counted)
    return seen


async def park(coordinator: RunningCoordinator, nodes: list[SimWorker]) -> dict[str, asyncio.Task[Reply]]:
    """Each node long-polls, one after another (oldest first is the order wake-ups follow)."""
    hub = coordinator.broker.services.hub
    tasks = {}
    for worker in nodes:
        tasks[worker.name] = asyncio.create_task(worker.pop(wait=PARK))
        n = len(tasks)
        await until(lambda n=n: sum(waiter.idle for waiter in hub._job_waiters) == n, what=f"{worker.name} parked")
    return tasks


async def answered(tasks: dict[str, asyncio.Task[Reply]], name: str) -> Reply:
    reply = await asyncio.wait_for(tasks[name], PARK - 5)
    assert reply.status == 200 and reply.body["ids"], reply.body
    return reply


def still_parked(tasks: dict[str, asyncio.Task[Reply]]) -> set[str]:
    return {name for name, task in tasks.items() if not task.done()}


async def end(tasks: dict[str, asyncio.Task[Reply]]) -> None:
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


async def nodes_of(coordinator: RunningCoordinator, prefix: str, n: int, **kw: Any) -> list[SimWorker]:
    """`n` nodes, each its own owner's (an untrusted account runs at most three)."""
    return [
        node(coordinator, await coordinator.create_account(f"{prefix}-owner-{i}"), f"{prefix}-{i}", **kw)
        for i in range(n)
    ]


async def first_answered(tasks: dict[str, asyncio.Task[Reply]]) -> str:
    done, _ = await asyncio.wait(tasks.values(), timeout=PARK - 5, return_when=asyncio.FIRST_COMPLETED)
    assert done, "no node was given the job"
    return next(name for name, task in tasks.items() if task in done)


async def test_a_job_wakes_one_node_that_can_serve_it_and_no_other(
    coordinator: RunningCoordinator, looks: Counter[str]
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    small_ones = await nodes_of(coordinator, "small", 3, max_pixels=64 * 64)  # cannot take a 128×128 image
    others = await nodes_of(coordinator, "other", 3, models=["other-model"])
    able = await nodes_of(coordinator, "able", 3)
    tasks = await park(coordinator, [*small_ones, *others, *able])
    hub = coordinator.broker.services.hub
    looks.clear()
    woken_before = hub.wakeups

    api = requester(coordinator, alice)
    await generate(api, small(width=128, height=128))
    claimer = await first_answered(tasks)
    await answered(tasks, claimer)
    await generate(api, small(models=["other-model"]))  # the barrier
    await answered(tasks, "other-0")

    assert claimer == "able-0"  # the oldest parked node that can serve it
    assert hub.wakeups - woken_before == 2  # one node per job
    assert set(looks) == {claimer, "other-0"}, looks  # nobody else looked at the queue
    assert still_parked(tasks) == set(tasks) - {claimer, "other-0"}
    await end(tasks)


async def test_a_node_that_may_not_take_the_job_hands_it_to_the_next(
    coordinator: RunningCoordinator, looks: Counter[str]
) -> None:
    """One at a time until claimed: the first node offered the job refuses it (its word blacklist),
    so the offer moves to the next node that can serve it, and stops there."""
    alice = await coordinator.create_account("alice", kudos=100)
    picky = await nodes_of(coordinator, "picky", 1, extra={"blacklist": ["lighthouse"]})
    plain = await nodes_of(coordinator, "plain", 3)
    tasks = await park(coordinator, [*picky, *plain])
    hub = coordinator.broker.services.hub
    looks.clear()
    woken_before = hub.wakeups

    await generate(requester(coordinator, alice), small(prompt="a lighthouse"))
    claimer = await first_answered(tasks)
    await answered(tasks, claimer)

    assert claimer == "plain-0"
    assert hub.wakeups - woken_before == 2  # the picky node, then one that took it
    assert set(looks) == {"picky-0", "plain-0"}, looks
    assert still_parked(tasks) == {"picky-0", "plain-1", "plain-2"}
    await end(tasks)


@pytest.fixture
async def two_processes(tmp_path: Path) -> AsyncIterator[tuple[RunningCoordinator, RunningCoordinator]]:
    """Two coordinators on one PostgreSQL database (in this process, so the test sees both hubs),
    sharing the coordinator key and secret as a cluster's processes do."""
    if not POSTGRES_DSN:
        pytest.skip("PostgreSQL engine: set HORDE_TEST_POSTGRES_DSN to run (CI always does)")
    from tests.pg import fresh_database

    async with fresh_database(POSTGRES_DSN) as url:
        first = await start_coordinator(coordinator_config(tmp_path / "one", url))
        second_dir = tmp_path / "two"
        second_dir.mkdir()
        for name in ("coordinator.key", "secret.key"):
            shutil.copy2(first.data_dir / name, second_dir / name)
        second = await start_coordinator(coordinator_config(second_dir, url))
        try:
            yield first, second
        finally:
            await second.stop()
            await first.stop()


async def test_a_job_queued_on_one_process_wakes_one_node_on_the_other(
    two_processes: tuple[RunningCoordinator, RunningCoordinator], looks: Counter[str]
) -> None:
    """The announcement carries the job's demands: the other process wakes one node that can serve
    it, not every node parked there."""
    one, two = two_processes
    alice = await one.create_account("alice", kudos=100)
    others = await nodes_of(two, "other", 3, models=["other-model"])
    small_ones = await nodes_of(two, "small", 3, max_pixels=64 * 64)
    able = await nodes_of(two, "able", 3)
    tasks = await park(two, [*others, *small_ones, *able])
    looks.clear()
    woken_before = two.broker.services.hub.wakeups

    api = requester(one, alice)
    await generate(api, small(width=128, height=128))
    claimer = await first_answered(tasks)
    await answered(tasks, claimer)
    await generate(api, small(models=["other-model"]))  # announced after the first: handled after it
    await answered(tasks, "other-0")

    assert claimer == "able-0"
    assert two.broker.services.hub.wakeups - woken_before == 2
    assert set(looks) == {claimer, "other-0"}, looks
    assert still_parked(tasks) == set(tasks) - {claimer, "other-0"}
    await end(tasks)
