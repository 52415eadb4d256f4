"""The requester's API end to end: accept, price, check, status, long-poll, cancel."""

import asyncio
import base64
import time

import aiohttp
import pytest

from tests.api_support import (
    MODEL,
    RequesterAndNode,
    count,
    generate,
    job_state,
    node,
    parked,
    pop_job,
    requester,
    seed_of,
    small,
    snapshot,
)
from tests.conftest import RunningCoordinator
from tests.helpers import Api, tiny_webp


async def test_accepted_shape_and_warning_without_nodes(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    reply = await api.post("/v2/generate/async", small(n=2))
    assert reply.status == 202, reply.body
    assert set(reply.body) >= {"id", "kudos", "warnings"}
    assert isinstance(reply.body["id"], str) and reply.body["id"]
    assert reply.body["kudos"] > 0
    assert [w["code"] for w in reply.body["warnings"]] == ["NoAvailableWorker"]
    assert await count(coordinator, "jobs") == 2
    assert await count(coordinator, "queue") == 2

    # Once a node serving the model is online, the same request draws no warning.
    assert (await node(coordinator, owner, "n1").pop()).status == 200
    again = await api.post("/v2/generate/async", small())
    assert again.status == 202 and again.body["warnings"] == []


async def test_dry_run_prices_without_queueing(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    before = await snapshot(coordinator)
    priced = await api.post("/v2/generate/async", {**small(n=3), "dry_run": True})
    assert priced.status == 200, priced.body
    assert set(priced.body) == {"kudos"}
    assert await snapshot(coordinator) == before
    real = await api.post("/v2/generate/async", small(n=3))
    assert real.status == 202
    assert real.body["kudos"] == priced.body["kudos"]


async def test_defaults_and_negative_prompt_reach_the_node(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    await generate(api, {"prompt": "a red fox ### blurry, low quality"})
    popped = await pop_job(node(coordinator, owner, "n1"))
    payload = popped.body["payload"]
    # One prompt with the negative after "###", as AI Horde sends it: its workers read no other field.
    assert payload["prompt"] == "a red fox ### blurry, low quality"
    assert "negative_prompt" not in payload
    assert (payload["width"], payload["height"], payload["ddim_steps"]) == (512, 512, 30)
    assert payload["sampler_name"] == "k_euler_a"
    assert payload["cfg_scale"] == 7.5
    assert payload["n_iter"] == 1
    assert popped.body["model"] == MODEL  # a request naming no model runs on what the node serves
    assert popped.body["source_processing"] == "txt2img"
    # The signed job document carries the same payload.
    document = popped.body["jobs"][0]["document"]
    assert document["payload"] == payload
    assert document["job_id"] == popped.body["ids"][0]


async def test_batch_seeds_are_request_seed_plus_index(pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small(n=4, seed="1000"))
    seeds = []
    for _ in range(4):
        popped = await pop_job(worker)
        seeds.append(seed_of(popped))
        assert (await worker.submit(popped.body["ids"][0], seed_of(popped))).status == 200
    assert sorted(seeds, key=int) == ["1000", "1001", "1002", "1003"]
    status = await api.get(f"/v2/generate/status/{request_id}")
    assert sorted(g["seed"] for g in status.body["generations"]) == ["1000", "1001", "1002", "1003"]


async def test_random_seeds_are_distinct_within_a_batch(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    await generate(api, small(n=5))
    popped = await pop_job(node(coordinator, owner, "n1"), amount=5)
    assert len(popped.body["ids"]) == 5
    seeds = [int(seed_of(popped, i)) for i in range(5)]
    assert len(set(seeds)) == 5
    assert [(seed - seeds[0]) % 2**32 for seed in seeds] == [0, 1, 2, 3, 4]


async def test_check_and_status_report_progress(pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small(n=2))
    check = await api.get(f"/v2/generate/check/{request_id}")
    assert check.status == 200
    expected_fields = {
        "finished",
        "processing",
        "restarted",
        "waiting",
        "done",
        "faulted",
        "wait_time",
        "queue_position",
        "kudos",
        "is_possible",
    }
    assert set(check.body) >= expected_fields
    assert (check.body["waiting"], check.body["processing"], check.body["finished"]) == (2, 0, 0)
    assert check.body["done"] is False and check.body["faulted"] is False

    popped = await pop_job(worker)
    check = await api.get(f"/v2/generate/check/{request_id}")
    assert (check.body["waiting"], check.body["processing"], check.body["finished"]) == (1, 1, 0)

    image = tiny_webp((1, 2, 3))
    assert (await worker.submit(popped.body["ids"][0], seed_of(popped), image=image)).status == 200
    check = await api.get(f"/v2/generate/check/{request_id}")
    assert (check.body["waiting"], check.body["processing"], check.body["finished"]) == (1, 0, 1)
    assert check.body["done"] is False

    status = await api.get(f"/v2/generate/status/{request_id}")
    assert set(status.body) >= expected_fields | {"generations", "shared"}
    [generation] = status.body["generations"]
    assert generation["id"] == popped.body["ids"][0]
    assert generation["seed"] == seed_of(popped)
    assert generation["model"] == MODEL
    assert generation["worker_name"] == "n1"
    assert generation["worker_id"] == popped.body["jobs"][0]["document"]["worker_id"]
    assert generation["state"] == "ok" and generation["censored"] is False
    async with aiohttp.ClientSession() as session, session.get(generation["img"]) as response:
        assert response.status == 200
        assert await response.read() == image

    await worker.serve_one()
    final = await api.get(f"/v2/generate/status/{request_id}")
    assert final.body["done"] is True and final.body["finished"] == 2
    assert len(final.body["generations"]) == 2


async def test_r2_false_returns_base64_images(pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, {**small(), "r2": False})
    popped = await pop_job(worker)
    image = tiny_webp((9, 99, 199))
    assert (await worker.submit(popped.body["ids"][0], seed_of(popped), image=image)).status == 200
    status = await api.get(f"/v2/generate/status/{request_id}")
    assert base64.b64decode(status.body["generations"][0]["img"]) == image


async def test_long_poll_check_returns_when_an_image_finishes(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small())
    popped = await pop_job(worker)

    started = time.monotonic()
    waiting = asyncio.create_task(api.get(f"/v2/generate/check/{request_id}?wait=20"))
    await parked(coordinator, f"check:{request_id}")
    assert not waiting.done()  # nothing changed yet: the check is still held
    assert (await worker.submit(popped.body["ids"][0], seed_of(popped))).status == 200
    check = await asyncio.wait_for(waiting, 15)
    elapsed = time.monotonic() - started
    print(f"long-poll check returned after {elapsed:.2f} s (wait=20)")
    assert check.status == 200
    assert check.body["finished"] == 1 and check.body["done"] is True


async def test_long_poll_check_returns_at_once_when_finished_differs(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    request_id = await generate(api, small(n=2))
    await node(coordinator, owner, "n1").serve_one()
    # The caller says it knows of 0 finished images; there is 1, so the answer is immediate.
    check = await asyncio.wait_for(api.get(f"/v2/generate/check/{request_id}?wait=30&finished=0"), 10)
    assert check.body["finished"] == 1


async def test_is_possible_follows_the_online_nodes(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, owner = pair.api, pair.owner
    request_id = await generate(api, small(n=2, models=["rare-model"]))
    assert (await api.get(f"/v2/generate/check/{request_id}")).body["is_possible"] is False
    # A node serving another model does not make it possible.
    assert (await node(coordinator, owner, "other", models=["tiny-sd"]).pop()).body["ids"] == []
    assert (await api.get(f"/v2/generate/check/{request_id}")).body["is_possible"] is False
    # Once a node serving the model has popped (taking one of the two images), the rest is possible.
    await pop_job(node(coordinator, owner, "rare", models=["rare-model"]))
    check = await api.get(f"/v2/generate/check/{request_id}")
    assert check.body["waiting"] == 1
    assert check.body["is_possible"] is True


async def test_cancel_by_owner_keeps_made_images_and_charges_only_them(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    alice, api, owner, worker = pair
    request_id = await generate(api, small(n=3))
    await worker.serve_one()  # one image made
    in_flight = await pop_job(worker)  # one being made
    price = (await coordinator.broker.requests.load(request_id))[0].kudos_per_image

    cancelled = await api.call("DELETE", f"/v2/generate/status/{request_id}")
    assert cancelled.status == 200, cancelled.body
    assert cancelled.body["finished"] == 1
    assert cancelled.body["waiting"] == 0
    assert cancelled.body["processing"] == 1
    assert len(cancelled.body["generations"]) == 1
    assert await count(coordinator, "queue") == 0
    states = sorted([await job_state(coordinator, j["id"]) for j in await _jobs(coordinator, request_id)])
    assert states == ["cancelled", "done", "processing"]

    # The image being made when the request was cancelled is still delivered and paid for.
    assert (await worker.submit(in_flight.body["ids"][0], seed_of(in_flight))).status == 200
    status = await api.get(f"/v2/generate/status/{request_id}")
    assert status.body["done"] is True and status.body["finished"] == 2
    assert (await coordinator.account(alice.id)).kudos == pytest.approx(100 - 2 * price)
    assert (await coordinator.account(owner.id)).kudos == pytest.approx(2 * price)
    # Nothing is left for any node.
    assert (await worker.pop()).body["ids"] == []


async def _jobs(coordinator: RunningCoordinator, request_id: str) -> list[dict]:
    from tests.api_support import fetch_all

    return await fetch_all(coordinator, "SELECT id FROM jobs WHERE request_id = ?", request_id)


async def test_cancel_by_id_needs_no_apikey(coordinator: RunningCoordinator) -> None:
    """As in AI Horde, the request id is the capability: whoever holds it cancels, apikey or not."""
    alice = await coordinator.create_account("alice", kudos=100)
    request_id = await generate(requester(coordinator, alice), small(n=2))
    cancelled = await Api(coordinator.url).call("DELETE", f"/v2/generate/status/{request_id}")
    assert cancelled.status == 200 and cancelled.body["done"] and cancelled.body["waiting"] == 0, cancelled.body
    assert await count(coordinator, "queue") == 0
    from tests.api_support import fetch_all

    states = await fetch_all(coordinator, "SELECT state FROM jobs WHERE request_id = ?", request_id)
    assert [row["state"] for row in states] == ["cancelled", "cancelled"]


async def test_unknown_request_ids_are_404(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    for method, path in (
        ("GET", "/v2/generate/check/nope"),
        ("GET", "/v2/generate/status/nope"),
        ("DELETE", "/v2/generate/status/00000000-0000-0000-0000-000000000000"),
    ):
        reply = await api.call(method, path)
        assert reply.status == 404 and reply.rc == "RequestNotFound", (path, reply.body)


async def test_anonymous_requests_are_accepted_and_tracked(coordinator: RunningCoordinator) -> None:
    anonymous = Api(coordinator.url, apikey="0000000000")
    request_id = await generate(anonymous, small())
    owner = await coordinator.create_account("owner")
    assert (await node(coordinator, owner, "n1").serve_one()).status == 200
    status = await Api(coordinator.url).get(f"/v2/generate/status/{request_id}")
    assert status.body["done"] is True and len(status.body["generations"]) == 1
    # Anonymous images cost nobody, and mint the node only a bounded volunteer reward: none at all here,
    # where the request came from the node's own address (loopback; tests/test_abuse_economy.py).
    assert (await coordinator.account(owner.id)).kudos == 0
