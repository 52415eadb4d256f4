"""Issue 15: measured speeds, wait times from the real queue, model ETAs, service levels, fairness.

A real coordinator over real HTTP and storage, with its clock in the test's hand, so that each
node's measured speed, and so each figure, is known exactly.
"""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.queueing import AGEING_PER_SECOND, PRIORITY_KUDOS_CAP
from protocol.provenance import request_digest
from tests.api_support import RequesterAndNode, custom_coordinator, generate, node, requester, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api, SimWorker, tiny_webp

SIDE, STEPS = 512, 20
WORK = SIDE * SIDE * STEPS / 1e6  # megapixelsteps of one job of `job()`
IMAGE = tiny_webp(size=SIDE)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clocked(tmp_path: Path, database_url: str | None) -> AsyncIterator[tuple[RunningCoordinator, Clock]]:
    """A coordinator whose forecast is rebuilt on every question, on a clock the test moves."""
    async with custom_coordinator(tmp_path, database_url, forecast_seconds=0.0) as coordinator:
        clock = Clock()
        coordinator.broker.services.clock = clock
        yield coordinator, clock


def job(n: int = 1, **extra: Any) -> dict[str, Any]:
    return small(n=n, width=SIDE, height=SIDE, steps=STEPS, **extra)


async def pop_ids(worker: SimWorker, amount: int = 1) -> list[tuple[str, str]]:
    popped = await worker.pop(amount=amount)
    assert popped.status == 200, popped.body
    jobs = popped.body["jobs"]
    return [(job_id, jobs[i]["document"]["payload"]["seed"]) for i, job_id in enumerate(popped.body["ids"])]


async def submit(worker: SimWorker, job_id: str, seed: str) -> None:
    reply = await worker.submit(job_id, seed, image=IMAGE)
    assert reply.status == 200, reply.body


async def measure(coordinator: RunningCoordinator, clock: Clock, worker: SimWorker, seconds: float) -> None:
    """Two jobs of WORK made in `seconds` each (the first is a warm-up the second replaces)."""
    owner = await coordinator.create_account(f"warm-{worker.name}", kudos=1000)
    await generate(requester(coordinator, owner), job(n=2))
    for _ in range(2):
        [(job_id, seed)] = await pop_ids(worker)
        clock.now += seconds
        await submit(worker, job_id, seed)


async def check(api: Api, request_id: str) -> dict[str, Any]:
    reply = await api.get(f"/v2/generate/check/{request_id}?provenance=1")
    assert reply.status == 200, reply.body
    return reply.body


async def worker_speed(coordinator: RunningCoordinator, name: str) -> str:
    workers = (await Api(coordinator.url).get("/v2/workers")).body
    return next(w["performance"] for w in workers if w["name"] == name)


async def test_speed_is_measured_from_results_not_idle_time(clocked: tuple[RunningCoordinator, Clock]) -> None:
    coordinator, clock = clocked
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    await measure(coordinator, clock, worker, 4.0)
    assert await worker_speed(coordinator, "n1") == f"{WORK / 4:.2f} megapixelsteps per second"
    # An idle minute before a pop is not work; a batch of two made one after another is 5 s each, not 5 and 10.
    alice = await coordinator.create_account("alice", kudos=1000)
    await generate(requester(coordinator, alice), job(n=2))
    clock.now += 60
    popped = await pop_ids(worker, amount=2)
    for job_id, seed in popped:
        clock.now += 5.0
        await submit(worker, job_id, seed)
    # Decayed sums: 4 s then 5 s then 5 s per WORK.
    work, seconds = WORK * 0.8 * 0.8 + WORK * 0.8 + WORK, 4.0 * 0.8 * 0.8 + 5.0 * 0.8 + 5.0
    assert await worker_speed(coordinator, "n1") == f"{work / seconds:.2f} megapixelsteps per second"


async def test_wait_time_and_position_follow_the_queue_and_count_down(
    clocked: tuple[RunningCoordinator, Clock],
) -> None:
    coordinator, clock = clocked
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    await measure(coordinator, clock, worker, 2.0)  # 2 s per job
    alice = await coordinator.create_account("alice", kudos=500)
    bob = await coordinator.create_account("bob", kudos=100)
    first = await generate(requester(coordinator, alice), job(n=3))
    second = await generate(requester(coordinator, bob), job())
    api = Api(coordinator.url)
    assert [(c["wait_time"], c["queue_position"]) for c in [await check(api, first), await check(api, second)]] == [
        (6, 0),
        (8, 3),
    ]
    [(job_id, seed)] = await pop_ids(worker)
    clock.now += 1.0  # one second into the first job
    assert [(c["wait_time"], c["queue_position"]) for c in [await check(api, first), await check(api, second)]] == [
        (5, 0),
        (7, 2),
    ]
    clock.now += 1.0
    await submit(worker, job_id, seed)
    # A second node (not measured yet: it counts at the network's speed for the model) halves what is left.
    helper = node(coordinator, owner, "n2")
    assert (await helper.pop()).body["ids"]  # it takes the next job of the first request
    assert (await check(api, second))["wait_time"] == 4  # both nodes busy until +2, then n1 makes it


async def test_unservable_requests_say_why(clocked: tuple[RunningCoordinator, Clock]) -> None:
    coordinator, _clock = clocked
    alice = await coordinator.create_account("alice", kudos=10_000)
    api = requester(coordinator, alice)
    nobody = await generate(api, job())
    assert (await check(api, nobody))["is_possible_reason"] == "No node is online."
    owner = await coordinator.create_account("owner")
    assert (await node(coordinator, owner, "n1").pop()).status == 200  # online, serving the tiny model
    unknown = await generate(api, job(models=["nope"]))
    huge = await generate(api, small(width=2048, height=2048, steps=10))
    for request_id, reason in (
        (unknown, "No online node serves nope."),
        (huge, "No online node accepts images this large."),
    ):
        answer = await check(api, request_id)
        assert (answer["is_possible"], answer["is_possible_reason"], answer["wait_time"]) == (False, reason, 0)
    servable = await check(api, nobody)
    assert (servable["is_possible"], servable["is_possible_reason"]) == (True, None)
    assert servable["wait_time"] > 0


async def test_models_and_performance_show_measured_speed_and_eta(clocked: tuple[RunningCoordinator, Clock]) -> None:
    coordinator, clock = clocked
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    await measure(coordinator, clock, worker, 2.0)
    alice = await coordinator.create_account("alice", kudos=500)
    await generate(requester(coordinator, alice), job(n=3))
    await generate(requester(coordinator, alice), job(models=[]))  # any model: counted for the model too
    api = Api(coordinator.url)
    [model] = (await api.get("/v2/status/models?provenance=1")).body
    assert (model["name"], model["jobs"], model["eta"]) == ("tiny-sd", 4, 8)
    assert model["performance"] == pytest.approx(WORK / 2, abs=1e-3)
    performance = (await api.get("/v2/status/performance?provenance=1")).body
    assert (performance["eta"], performance["megapixelsteps_per_second"]) == (8, pytest.approx(WORK / 2, abs=1e-3))


async def test_service_levels_are_measured_per_model(clocked: tuple[RunningCoordinator, Clock]) -> None:
    coordinator, clock = clocked
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    alice = await coordinator.create_account("alice", kudos=500)
    waits = []
    for seconds in (2.0, 4.0, 6.0):
        await generate(requester(coordinator, alice), job(n=2))
        for _ in range(2):
            [(job_id, seed)] = await pop_ids(worker)
            clock.now += seconds
            await submit(worker, job_id, seed)
        waits.append(seconds)
    [model] = (await Api(coordinator.url).get("/v2/status/models?provenance=1")).body
    # First images came after 2, 4 and 6 s; whole requests after 4, 8 and 12 s.
    assert (model["time_to_first_image_p50"], model["time_to_first_image_p95"]) == (4.0, 6.0)
    assert (model["time_to_done_p50"], model["time_to_done_p95"]) == (8.0, 12.0)
    plain = (await Api(coordinator.url, provenance=False).get("/v2/status/models")).body[0]
    assert "time_to_done_p50" not in plain  # ours, for clients that ask (strict AI Horde clients refuse it)


async def test_anonymous_request_is_passed_only_within_the_fairness_bound(
    clocked: tuple[RunningCoordinator, Clock],
) -> None:
    coordinator, clock = clocked
    rich = await coordinator.create_account("rich", kudos=1_000_000)
    anonymous = await generate(Api(coordinator.url), job())
    bound = PRIORITY_KUDOS_CAP / AGEING_PER_SECOND
    clock.now += bound - 1
    inside = await generate(requester(coordinator, rich), job())  # queued within the bound: goes first
    clock.now += 2
    outside = await generate(requester(coordinator, rich), job())  # queued after it: waits its turn
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    api = Api(coordinator.url)
    assert [(await check(api, r))["queue_position"] for r in (inside, anonymous, outside)] == [0, 1, 2]
    order = []
    for _ in range(3):
        popped = await worker.pop()
        order.append(popped.body["jobs"][0]["document"]["request_sha256"])
    assert order == [request_digest(r) for r in (inside, anonymous, outside)]


async def test_long_poll_answers_when_the_place_moves(coordinator: RunningCoordinator) -> None:
    """A pop for another request raises no event for this one; the held check still answers with the new place."""
    alice = await coordinator.create_account("alice", kudos=500)
    bob = await coordinator.create_account("bob", kudos=100)
    await generate(requester(coordinator, alice), small())
    later = await generate(requester(coordinator, bob), small())
    api = Api(coordinator.url)
    assert (await check(api, later))["queue_position"] == 1
    held = asyncio.create_task(api.get(f"/v2/generate/check/{later}?wait=20&finished=0"))
    owner = await coordinator.create_account("owner")
    assert (await node(coordinator, owner, "n2").pop()).body["ids"]  # takes alice's job
    answer = await asyncio.wait_for(held, 10)  # long before the 20 s the check may be held
    assert (answer.body["queue_position"], answer.body["finished"]) == (0, 0)


async def test_a_cancelled_request_reads_as_cancelled(pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small(n=2))
    [(job_id, seed)] = await pop_ids(worker)
    assert (await api.call("DELETE", f"/v2/generate/status/{request_id}")).status == 200
    answer = await check(api, request_id)
    assert (answer["cancelled"], answer["done"], answer["waiting"], answer["processing"]) == (True, False, 0, 1)
    assert (await worker.submit(job_id, seed)).status == 200  # the image in progress is kept
    answer = await check(api, request_id)
    assert (answer["cancelled"], answer["done"], answer["finished"], answer["wait_time"]) == (True, True, 1, 0)
    assert (await api.get(f"/v2/generate/status/{request_id}")).body["cancelled"] is True
