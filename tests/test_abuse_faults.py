"""Hostile participants, faults attributed correctly (issue 11, cases 4 and 5).

A job that failed on a node never goes back to that node; a request faults after failing on
three *different* nodes; a fault the payload caused (an unreadable source image) counts against
nobody; a node's crash counts as one missed deadline however many jobs it held; maintenance
lifts itself after a clean period and a node in it is told why (AI Horde's `WorkerMaintenance`);
the jobs of a batch have staggered deadlines, so a node working through them in time keeps them.
"""

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.storage.records import Worker
from node.daemon import NodeDaemon
from protocol.kudos import job_time_limit
from protocol.provenance import ResultDocument, sha256_hex, sign_result
from tests.api_support import (
    RequesterAndNode,
    balance,
    execute,
    expire_job,
    generate,
    node,
    pop_job,
    requester,
    seed_of,
    small,
)
from tests.conftest import RunningCoordinator
from tests.helpers import Api, FakeClock, Reply, SimWorker, tiny_webp
from tests.node_support import RecordingConsole, finished, node_config, request_images, running, until

PARSE_FAILED = {"type": "source_image", "value": "parse_failed", "ref": "cannot identify image file"}
NODE_OWN_FAULT = {"type": "information", "value": "see_ref", "ref": "CUDA out of memory"}
# 64×64, 4 steps: the time limit of one image of `small()`.
LIMIT = job_time_limit(width=64, height=64, steps=4)


@pytest.fixture
def clock(coordinator: RunningCoordinator) -> Iterator[FakeClock]:
    services = coordinator.broker.services
    original = services.clock
    fake = FakeClock(original())
    services.clock = fake
    try:
        yield fake
    finally:
        services.clock = original


async def submit_fault(worker: SimWorker, job_id: str, seed: str, metadata: dict[str, str]) -> Reply:
    """A faulted submit with AI Horde's gen_metadata saying why, signed like the real node's."""
    body: dict[str, Any] = {
        "id": job_id,
        "generation": "",
        "state": "faulted",
        "seed": seed,
        "gen_metadata": [metadata],
    }
    assert worker.api.identity is not None
    document = ResultDocument(job_id=job_id, image_sha256=None, seed=seed, state="faulted")
    body["signature"] = sign_result(worker.api.identity, document)
    return await worker.api.post("/v2/generate/submit", body)


async def worker_record(coordinator: RunningCoordinator, name: str) -> Worker:
    async with coordinator.broker.services.database.reader() as tx:
        worker = await tx.worker_by("name", name)
    assert worker is not None
    return worker


async def jobs_of(coordinator: RunningCoordinator, request_id: str) -> list[dict[str, Any]]:
    async with coordinator.broker.services.database.reader() as tx:
        jobs = await tx.jobs_of(request_id)
    return [
        {
            "id": j.id,
            "state": j.state,
            "worker": j.worker_name,
            "deadline": j.deadline,
            "assigned_at": j.assigned_at,
            "ttl": (j.job_document or {}).get("ttl"),
        }
        for j in jobs
    ]


# --- case 4: a job that failed on a node never goes back to it ----------------------------------


@pytest.mark.parametrize("failure", ["fault", "deadline"])
async def test_a_job_that_failed_on_a_node_never_goes_back_to_it(coordinator: RunningCoordinator, failure: str) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    request_id = await generate(requester(coordinator, alice), small())
    owner = await coordinator.create_account("owner")
    first, second = node(coordinator, owner, "first"), node(coordinator, owner, "second")
    popped = await pop_job(first)
    job_id = popped.body["ids"][0]
    if failure == "fault":
        assert (await submit_fault(first, job_id, seed_of(popped), NODE_OWN_FAULT)).status == 200
    else:
        await expire_job(coordinator, job_id)
        await coordinator.broker.upkeep.reissue_overdue()  # (the background upkeep may have been first)

    again = await first.pop()
    assert again.status == 200 and again.body["ids"] == [], "the job went back to the node it failed on"
    assert again.body["skipped"] == {"failed_here": 1}  # says why, not "the queue is empty"
    taken = await pop_job(second)
    assert taken.body["ids"] == [job_id]
    assert (await second.submit(job_id, seed_of(taken))).status == 200
    status = (await requester(coordinator, alice).get(f"/v2/generate/status/{request_id}")).body
    assert status["done"] is True and [g["worker_name"] for g in status["generations"]] == ["second"]


async def test_a_node_waiting_for_work_hands_on_a_job_it_may_not_take(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    """The faulting node is often the one long-polling when its fault requeues the job: the wake-up
    must reach a node that can take it, not end with the one that may not."""
    api, owner = pair.api, pair.owner
    await generate(api, small())
    first, second = node(coordinator, owner, "first"), node(coordinator, owner, "second")
    popped = await pop_job(first)
    hub = coordinator.broker.services.hub
    first_waits = asyncio.create_task(first.pop(wait=3))
    await until(lambda: len(hub._job_waiters) == 1, what="the first node's long-poll")
    second_waits = asyncio.create_task(second.pop(wait=20))
    await until(lambda: len(hub._job_waiters) == 2, what="the second node's long-poll")

    assert (await submit_fault(first, popped.body["ids"][0], seed_of(popped), NODE_OWN_FAULT)).status == 200
    taken = await asyncio.wait_for(second_waits, 10)
    assert taken.body["ids"] == popped.body["ids"]
    assert (await first_waits).body["ids"] == []


async def test_a_payload_fault_counts_against_no_node_and_the_request_faults_after_three_nodes(
    coordinator: RunningCoordinator,
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    request_id = await generate(api, small())
    nodes = [node(coordinator, await coordinator.create_account(f"owner-{i}"), f"n{i}") for i in range(3)]
    for index, worker in enumerate(nodes):
        popped = await pop_job(worker)
        assert (await submit_fault(worker, popped.body["ids"][0], seed_of(popped), PARSE_FAILED)).status == 200
        # Not three times on one node: the node that failed it never sees this job again.
        assert (await worker.pop()).body["ids"] == []
        check = (await api.get(f"/v2/generate/check/{request_id}")).body
        assert check["faulted"] is (index == 2), (index, check)

    status = (await api.get(f"/v2/generate/status/{request_id}")).body
    assert status["faulted"] is True and status["generations"] == []
    for worker in nodes:
        record = await worker_record(coordinator, worker.name)
        assert (record.missed_deadlines, record.maintenance) == (0, False)
    assert await balance(coordinator, alice) == 100  # nothing delivered, nothing charged
    # The payload's fault said nothing about the nodes: each serves the next request at once.
    next_id = await generate(api, small())
    served = await pop_job(nodes[0])
    assert (await nodes[0].submit(served.body["ids"][0], seed_of(served))).status == 200
    assert (await api.get(f"/v2/generate/status/{next_id}")).body["done"] is True
    assert (await coordinator.broker.bank.audit()).ok


# --- case 5: a crashed node is not stranded ----------------------------------------------------


async def test_a_crashed_node_holding_four_jobs_collects_one_missed_deadline(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    await generate(api, small(n=4))
    crashed = node(coordinator, owner, "crashed")
    popped = await pop_job(crashed, amount=4)
    assert len(popped.body["ids"]) == 4
    # It crashed: its staggered deadlines pass one after another, the last three in the same upkeep pass.
    await expire_job(coordinator, popped.body["ids"][0])
    await coordinator.broker.upkeep.reissue_overdue()
    rest = popped.body["ids"][1:]
    now = coordinator.broker.services.clock()
    marks = ", ".join("?" * len(rest))
    assert await execute(coordinator, f"UPDATE jobs SET deadline = ? WHERE id IN ({marks})", now - 1, *rest) == 3
    await coordinator.broker.upkeep.reissue_overdue()

    record = await worker_record(coordinator, "crashed")
    assert (record.missed_deadlines, record.maintenance) == (1, False)
    # Restarted, it works again at once (its own four jobs go to others).
    next_id = await generate(api, small())
    served = await pop_job(crashed)
    assert served.body["ids"] != [] and set(served.body["ids"]).isdisjoint(popped.body["ids"])
    assert (await crashed.submit(served.body["ids"][0], seed_of(served))).status == 200
    assert (await api.get(f"/v2/generate/status/{next_id}")).body["done"] is True
    assert (await worker_record(coordinator, "crashed")).missed_deadlines == 0


async def test_maintenance_says_why_and_lifts_itself_after_the_clean_period(
    coordinator: RunningCoordinator, clock: FakeClock
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    owner = await coordinator.create_account("owner")
    sleepy, other = node(coordinator, owner, "sleepy"), node(coordinator, owner, "other")
    for _ in range(3):  # three crashes, each after taking new work
        await generate(api, small())
        await pop_job(sleepy)
        clock.now += LIMIT + 1
        assert await coordinator.broker.upkeep.reissue_overdue() >= 1
        assert (await other.serve_one(wait=0)) is not None  # someone else finishes what it dropped
        clock.now += 1

    refused = await sleepy.pop(wait=5)
    assert refused.status == 403 and refused.rc == "WorkerMaintenance", refused.body
    message = refused.body["message"]
    assert "missed 3 job deadlines" in message and "10 minutes" in message, message
    assert "lifts by itself" in message, message  # and the remedy: what the operator should do
    await generate(api, small())
    workers = {w["name"]: w for w in (await Api(coordinator.url).get("/v2/workers")).body}
    assert workers["sleepy"]["maintenance_mode"] is True

    from coordinator.roster import MAINTENANCE_CLEAN_SECONDS

    clock.now += MAINTENANCE_CLEAN_SECONDS - 10  # not yet
    await coordinator.broker.upkeep.run_once()
    assert (await sleepy.pop()).rc == "WorkerMaintenance"
    clock.now += 20  # ten minutes since its last miss
    await coordinator.broker.upkeep.run_once()
    workers = {w["name"]: w for w in (await Api(coordinator.url).get("/v2/workers")).body}
    assert workers["sleepy"]["maintenance_mode"] is False
    back = await pop_job(sleepy)
    assert (await sleepy.submit(back.body["ids"][0], seed_of(back))).status == 200
    record = await worker_record(coordinator, "sleepy")
    assert (record.missed_deadlines, record.maintenance, record.maintenance_msg) == (0, False, None)


async def test_maintenance_set_by_the_owner_answers_the_rc_with_the_owners_reason(
    coordinator: RunningCoordinator, clock: FakeClock
) -> None:
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    assert (await worker.pop()).status == 200
    record = await worker_record(coordinator, "n1")
    change = {"maintenance": True, "maintenance_msg": "upgrading drivers"}
    owner_api = Api(coordinator.url, apikey=owner.apikey)
    assert (await owner_api.call("PUT", f"/v2/workers/{record.id}", change)).status == 200
    refused = await worker.pop()
    assert refused.status == 403 and refused.rc == "WorkerMaintenance"
    assert "upgrading drivers" in refused.body["message"]
    clock.now += 7 * 24 * 3600  # an owner's maintenance never lifts by itself
    await coordinator.broker.upkeep.run_once()
    assert (await worker.pop()).rc == "WorkerMaintenance"


async def test_a_batch_has_staggered_deadlines_and_a_node_working_in_time_keeps_every_job(
    coordinator: RunningCoordinator, clock: FakeClock
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    request_id = await generate(api, small(n=4))
    owner = await coordinator.create_account("owner")
    slow = node(coordinator, owner, "slow")
    issued = clock.now
    popped = await pop_job(slow, amount=4)
    jobs = {job["id"]: job for job in await jobs_of(coordinator, request_id)}
    for k, job_id in enumerate(popped.body["ids"], start=1):
        assert jobs[job_id]["deadline"] == pytest.approx(issued + k * LIMIT), k
        assert popped.body["jobs"][k - 1]["document"]["ttl"] == k * LIMIT
    # A slow machine: each image takes nearly the whole time limit, one after another.
    for k, job_id in enumerate(popped.body["ids"], start=1):
        clock.now = issued + k * LIMIT - 5
        await coordinator.broker.upkeep.reissue_overdue()
        submitted = await slow.submit(job_id, seed_of(popped, k - 1))
        assert submitted.status == 200, (k, submitted.body)
    status = (await api.get(f"/v2/generate/status/{request_id}")).body
    assert status["done"] is True and [g["worker_name"] for g in status["generations"]] == ["slow"] * 4
    assert (await worker_record(coordinator, "slow")).missed_deadlines == 0


async def test_a_prefetched_pop_waits_behind_the_jobs_the_node_already_holds(
    coordinator: RunningCoordinator, clock: FakeClock
) -> None:
    """A node pops its next job while one runs (`queue_size`): that job starts only after the first."""
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    first_id, second_id = await generate(api, small()), await generate(api, small())
    owner = await coordinator.create_account("owner")
    slow = node(coordinator, owner, "slow")
    issued = clock.now
    running_now, prefetched = await pop_job(slow), await pop_job(slow)
    assert prefetched.body["jobs"][0]["document"]["ttl"] == 2 * LIMIT
    clock.now = issued + LIMIT - 5
    assert (await slow.submit(running_now.body["ids"][0], seed_of(running_now))).status == 200
    clock.now = issued + 2 * LIMIT - 5
    await coordinator.broker.upkeep.reissue_overdue()
    assert (await slow.submit(prefetched.body["ids"][0], seed_of(prefetched))).status == 200
    for request_id in (first_id, second_id):
        assert (await api.get(f"/v2/generate/status/{request_id}")).body["done"] is True


async def test_an_overdue_job_of_a_batch_goes_to_another_node_and_the_rest_stay(
    coordinator: RunningCoordinator, clock: FakeClock
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    request_id = await generate(requester(coordinator, alice), small(n=4))
    owner = await coordinator.create_account("owner")
    slow, quick = node(coordinator, owner, "slow"), node(coordinator, owner, "quick")
    popped = await pop_job(slow, amount=4)
    first, rest = popped.body["ids"][0], popped.body["ids"][1:]
    clock.now += LIMIT + 1  # the first image overran; the node still works on it
    assert await coordinator.broker.upkeep.reissue_overdue() == 1

    assert (await slow.pop(amount=4)).body["ids"] == []  # never back to the node that still holds it
    taken = await pop_job(quick, amount=4)
    assert taken.body["ids"] == [first]
    jobs = {job["id"]: job for job in await jobs_of(coordinator, request_id)}
    assert [(jobs[j]["state"], jobs[j]["worker"]) for j in rest] == [("processing", "slow")] * 3
    late = await slow.submit(first, seed_of(popped))
    assert late.status == 400 and late.rc == "AbortedGen"
    for index, job_id in enumerate(rest, start=1):
        assert (await slow.submit(job_id, seed_of(popped, index))).status == 200
    assert (await quick.submit(first, seed_of(taken))).status == 200


# --- the real node -------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_torch_thread")
async def test_a_poison_source_does_not_pause_the_real_node(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    requester_account = await coordinator.create_account("requester", kudos=1000)
    owner = await coordinator.create_account("owner")
    api = Api(coordinator.url, apikey=requester_account.apikey)
    poisoned = [await poisoned_request(coordinator, api) for _ in range(3)]
    console = RecordingConsole()
    daemon = NodeDaemon(
        node_config(
            tmp_path,
            coordinator.url,
            owner.apikey,
            tiny_model_dir,
            coordinator_public_key=coordinator.public_key.text(),
        ),
        console=console,
    )
    async with running(daemon):
        await until(lambda: daemon.stats.jobs_faulted >= 3, timeout=60, what="three faulted poison jobs")
        assert "paused" not in console.kinds(), [f for k, f in console.events if k == "paused"]
        status = await finished(api, await request_images(api), timeout=60)
    assert [g["worker_name"] for g in status["generations"]] == ["node-1"]
    assert "paused" not in console.kinds()
    faults = [fields["reason"] for kind, fields in console.events if kind == "job_faulted"]
    assert len(faults) == 3
    for request_id in poisoned:
        check = (await api.get(f"/v2/generate/check/{request_id}")).body
        assert check["faulted"] is False and check["waiting"] == 1  # waits for a node that has not failed it
    record = await worker_record(coordinator, "node-1")
    assert (record.missed_deadlines, record.maintenance) == (0, False)


async def poisoned_request(coordinator: RunningCoordinator, api: Api) -> str:
    """An img2img request whose stored source is then replaced by bytes no decoder reads, with the
    request's hash changed to match: the node receives exactly what the coordinator signed."""
    body = {
        "prompt": "a field",
        "models": ["tiny-sd"],
        "source_image": base64.b64encode(tiny_webp()).decode(),
        "source_processing": "img2img",
        "params": {"width": 64, "height": 64, "steps": 2},
    }
    accepted = await api.post("/v2/generate/async", body)
    assert accepted.status == 202, accepted.body
    poison = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 32
    services = coordinator.broker.services
    async with services.database.transaction() as tx:
        request = await tx.get_request(accepted.body["id"])
        assert request is not None and request.source_image
        await services.images.write(request.source_image, poison)
        request.source_image_sha256 = sha256_hex(poison)
        await tx.update_request(request)
    return accepted.body["id"]


@pytest.mark.usefixtures("one_torch_thread")
async def test_the_real_nodes_console_says_maintenance_and_the_remedy(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("node.popper.MAINTENANCE_PAUSE", 0.2)  # ask again soon (60 s in service)
    requester_account = await coordinator.create_account("requester", kudos=1000)
    owner = await coordinator.create_account("owner")
    api = Api(coordinator.url, apikey=requester_account.apikey)
    owner_api = Api(coordinator.url, apikey=owner.apikey)
    console = RecordingConsole()
    daemon = NodeDaemon(node_config(tmp_path, coordinator.url, owner.apikey, tiny_model_dir), console=console)
    async with running(daemon):
        await until(lambda: "idle" in console.kinds(), what="the node's first pop")
        path = f"/v2/workers/{(await worker_record(coordinator, 'node-1')).id}"
        change = {"maintenance": True, "maintenance_msg": "moving to a new machine"}
        assert (await owner_api.call("PUT", path, change)).status == 200
        await until(lambda: "maintenance" in console.kinds(), what="the maintenance message")
        since = console.kinds().index("maintenance")
        request_id = await request_images(api)  # work is waiting: the node must not say the queue is empty
        told = console.kinds().count("maintenance") + 2  # a whole pop after the request arrived
        await until(lambda: console.kinds().count("maintenance") >= told, what="the maintenance message, again")
        assert "idle" not in console.kinds()[since:], console.events[since:]
        assert (await owner_api.call("PUT", path, {"maintenance": False})).status == 200
        status = await finished(api, request_id, timeout=60)
    messages = [json.loads(line) for line in console.lines()]
    said = next(line["message"] for line in messages if line["event"] == "maintenance")
    assert said.startswith("no jobs: the coordinator has this node in maintenance"), said
    assert "moving to a new machine" in said and "PUT /v2/workers/" in said  # the reason, and the remedy
    assert "maintenance_over" in console.kinds()
    assert [g["worker_name"] for g in status["generations"]] == ["node-1"]
