"""The node's API end to end: pop (incl. long-poll and concurrency), uploads, submit and its refusals."""

import asyncio
import io
import json
from collections import Counter

import aiohttp
import pytest
from PIL import Image

from coordinator.results import upload_name
from protocol.provenance import request_digest
from tests.api_support import (
    MODEL,
    RequesterAndNode,
    b64,
    balance,
    count,
    expire_job,
    fetch_one,
    generate,
    job_state,
    node,
    parked,
    png,
    pop_job,
    requester,
    seed_of,
    small,
)
from tests.conftest import RunningCoordinator
from tests.helpers import Api, tiny_webp


async def test_empty_pop_explains_what_it_skipped(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=1000)
    api = requester(coordinator, alice)
    await generate(api, small(models=["other-model"]))
    await generate(api, small(width=768, height=768))
    await generate(api, {**small(), "nsfw": True})
    await generate(api, {**small(), "source_image": b64(png())})
    await generate(api, {**small(), "source_image": b64(png(mode="RGBA")), "source_processing": "inpainting"})
    await generate(api, small(loras=[{"name": "some-lora"}]))
    await generate(api, small(post_processing=["RealESRGAN_x4plus"]))
    owner = await coordinator.create_account("owner")
    picky = node(
        coordinator,
        owner,
        "picky",
        max_pixels=512 * 512,
        extra={
            "allow_img2img": False,
            "allow_painting": False,
            "allow_lora": False,
            "allow_post_processing": False,
            "nsfw": False,
        },
    )
    popped = await picky.pop()
    assert popped.status == 200, popped.body
    assert popped.body["ids"] == []
    assert popped.body["payload"] == {}
    assert popped.body["skipped"] == {
        "models": 1,
        "max_pixels": 1,
        "nsfw": 1,
        "img2img": 1,
        "painting": 1,
        "lora": 1,
        "post-processing": 1,
    }
    assert await count(coordinator, "queue") == 7


async def test_pop_on_an_empty_queue(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    popped = await node(coordinator, owner, "n1").pop()
    assert popped.status == 200
    assert popped.body["ids"] == [] and popped.body["payload"] == {} and popped.body["skipped"] == {}
    assert popped.body["id"] is None


async def test_long_poll_pop_gets_a_job_queued_after_it_started(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, worker = pair.api, pair.worker
    assert (await worker.pop()).body["ids"] == []  # registered
    waiting = asyncio.create_task(worker.pop(wait=20))
    await parked(coordinator, "pop:n1")
    assert not waiting.done()
    request_id = await generate(api, small())
    popped = await asyncio.wait_for(waiting, 15)
    assert popped.status == 200
    assert len(popped.body["ids"]) == 1
    assert popped.body["jobs"][0]["document"]["request_sha256"] == request_digest(request_id)


async def test_long_poll_pop_wakes_the_node_a_restricted_request_names(coordinator: RunningCoordinator) -> None:
    """A request limited to node B must wake B, even when node A has been waiting longer."""
    owner = await coordinator.create_account("owner")
    node_a, node_b = node(coordinator, owner, "node-a"), node(coordinator, owner, "node-b")
    await node_a.pop()
    await node_b.pop()
    wait_a = asyncio.create_task(node_a.pop(wait=10))
    await parked(coordinator, "pop:node-a")
    wait_b = asyncio.create_task(node_b.pop(wait=10))
    await parked(coordinator, "pop:node-b")
    api = requester(coordinator, await coordinator.create_account("alice", kudos=100))
    for_b = await generate(api, {**small(), "workers": ["node-b"]})
    got_b = await asyncio.wait_for(wait_b, 15)
    assert [job["document"]["request_sha256"] for job in got_b.body["jobs"]] == [request_digest(for_b)]
    assert not wait_a.done()  # still parked: the wake-up went to B
    for_anyone = await generate(api, small())
    got_a = await asyncio.wait_for(wait_a, 15)
    assert [job["document"]["request_sha256"] for job in got_a.body["jobs"]] == [request_digest(for_anyone)]


async def test_long_poll_pop_wakes_a_node_that_allows_post_processing(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    plain = node(coordinator, owner, "plain", extra={"allow_post_processing": False})
    full = node(coordinator, owner, "full")
    await plain.pop()
    await full.pop()
    wait_plain = asyncio.create_task(plain.pop(wait=10))
    await parked(coordinator, "pop:plain")
    wait_full = asyncio.create_task(full.pop(wait=10))
    await parked(coordinator, "pop:full")
    api = requester(coordinator, await coordinator.create_account("alice", kudos=100))
    post_processed = await generate(api, small(post_processing=["GFPGAN"]))
    got_full = await asyncio.wait_for(wait_full, 15)
    assert [job["document"]["request_sha256"] for job in got_full.body["jobs"]] == [request_digest(post_processed)]
    assert not wait_plain.done()  # still parked: the wake-up went to the node that can serve it
    plain_request = await generate(api, small())
    got_plain = await asyncio.wait_for(wait_plain, 15)
    assert [job["document"]["request_sha256"] for job in got_plain.body["jobs"]] == [request_digest(plain_request)]


async def test_concurrent_pops_never_hand_out_a_job_twice(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    async with coordinator.broker.services.database.transaction() as tx:
        await tx.set_account_trusted(owner.id, True)  # ten workers: past an untrusted account's three
    workers = [node(coordinator, owner, f"n{i}") for i in range(10)]
    for worker in workers:  # each node registers with a first, empty pop
        assert (await worker.pop()).body["ids"] == []
    alice = await coordinator.create_account("alice", kudos=1000)
    api = requester(coordinator, alice)
    request_ids = [await generate(api, small(n=2)) for _ in range(10)]
    pops = await asyncio.gather(*(workers[i % 10].pop() for i in range(50)))
    assert all(p.status == 200 for p in pops), [p.body for p in pops if p.status != 200]
    handed = [job_id for p in pops for job_id in p.body["ids"]]
    assert len(handed) == 20
    assert len(set(handed)) == 20
    assert sum(1 for p in pops if not p.body["ids"]) == 30
    assert await count(coordinator, "queue") == 0
    # Each job is recorded as assigned to exactly the node that received it.
    for p in pops:
        for index, job_id in enumerate(p.body["ids"]):
            assert p.body["jobs"][index]["document"]["job_id"] == job_id
    assert {d["request_sha256"] for p in pops for d in (j["document"] for j in p.body["jobs"])} == {
        request_digest(request_id) for request_id in request_ids
    }


async def test_concurrent_first_pops_of_a_new_node_all_succeed(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "fresh")
    pops = await asyncio.gather(*(worker.pop() for _ in range(4)))
    assert [p.status for p in pops] == [200] * 4, [p.body for p in pops]
    assert await count(coordinator, "workers") == 1


async def test_amount_batches_consecutive_images_of_one_request(pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small(n=4, seed="77"))
    popped = await pop_job(worker, amount=3)
    assert len(popped.body["ids"]) == 3
    assert popped.body["payload"]["n_iter"] == 3
    assert len(popped.body["r2_uploads"]) == 3 and len(popped.body["jobs"]) == 3
    seeds = [int(seed_of(popped, i)) for i in range(3)]
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
    assert {job["document"]["request_sha256"] for job in popped.body["jobs"]} == {request_digest(request_id)}
    for index, job_id in enumerate(popped.body["ids"]):
        assert (await worker.submit(job_id, seed_of(popped, index))).status == 200
    rest = await pop_job(worker, amount=3)
    assert len(rest.body["ids"]) == 1
    assert sorted([*seeds, int(seed_of(rest))]) == [77, 78, 79, 80]


async def test_worker_name_of_another_account_is_refused(coordinator: RunningCoordinator) -> None:
    bob = await coordinator.create_account("bob")
    eve = await coordinator.create_account("eve")
    assert (await node(coordinator, bob, "bobs-node").pop()).status == 200
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small())
    stolen = await node(coordinator, eve, "bobs-node").pop()
    assert stolen.status == 403 and stolen.rc == "WrongCredentials"
    unsigned = await node(coordinator, eve, "BOBS-NODE", signed=False).pop()
    assert unsigned.status == 403 and unsigned.rc == "WrongCredentials"
    assert await count(coordinator, "queue") == 1


async def test_submit_for_a_job_assigned_to_another_node_is_refused(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small())
    bob = await coordinator.create_account("bob")
    eve = await coordinator.create_account("eve")
    bobs = node(coordinator, bob, "bobs-node")
    popped = await pop_job(bobs)
    job_id = popped.body["ids"][0]
    eves = node(coordinator, eve, "eves-node")
    await eves.pop()
    refused = await eves.submit(job_id, seed_of(popped))
    assert refused.status == 403 and refused.rc == "WrongCredentials"
    # Another signed node of the same owner may not submit it either.
    sibling = node(coordinator, bob, "bobs-other-node")
    await sibling.pop()
    refused = await sibling.submit(job_id, seed_of(popped))
    assert refused.status == 403 and refused.rc == "WrongCredentials"
    assert await job_state(coordinator, job_id) == "processing"
    assert await balance(coordinator, eve) == 0 and await balance(coordinator, bob) == 0
    assert (await bobs.submit(job_id, seed_of(popped))).status == 200


async def test_unknown_job_id_on_submit(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    await worker.pop()
    reply = await worker.submit("no-such-job", "1")
    assert reply.status == 404 and reply.rc == "InvalidJobID"


async def test_repeated_submit_is_a_duplicate_and_paid_once(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner, worker = pair.api, pair.owner, pair.worker
    await generate(api, small())
    popped = await pop_job(worker)
    first = await worker.submit(popped.body["ids"][0], seed_of(popped))
    assert first.status == 200 and first.body["reward"] > 0
    paid = await balance(coordinator, owner)
    again = await worker.submit(popped.body["ids"][0], seed_of(popped))
    assert again.status == 400 and again.rc == "DuplicateGen"
    assert await balance(coordinator, owner) == paid == first.body["reward"]


async def test_submit_after_the_time_limit_is_aborted_and_unpaid(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    alice, api, owner, worker = pair
    await generate(api, small())
    popped = await pop_job(worker)
    await expire_job(coordinator, popped.body["ids"][0])
    late = await worker.submit(popped.body["ids"][0], seed_of(popped))
    assert late.status == 400 and late.rc == "AbortedGen"
    assert await balance(coordinator, owner) == 0
    assert await balance(coordinator, alice) == 100


async def test_upload_then_submit_r2(pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small())
    popped = await pop_job(worker)
    image = tiny_webp((5, 6, 7))
    upload = popped.body["r2_upload"]
    assert upload == popped.body["r2_uploads"][0]
    reply = await worker.submit(popped.body["ids"][0], seed_of(popped), image=image, upload_url=upload)
    assert reply.status == 200, reply.body
    status = await api.get(f"/v2/generate/status/{request_id}")
    generation = status.body["generations"][0]
    async with aiohttp.ClientSession() as session, session.get(generation["img"]) as response:
        assert await response.read() == image


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
async def test_an_upload_of_raw_pixels_of_the_jobs_size_is_stored_as_an_image(
    coordinator: RunningCoordinator, mode: str
) -> None:
    """horde-sdk's CI worker PUTs `Image.tobytes()` with no content type: exactly width × height × 3 (or × 4)
    bytes are taken as the job's pixels and stored as a WebP; any other length is refused as before."""
    alice = await coordinator.create_account("alice", kudos=100)
    request_id = await generate(requester(coordinator, alice), small())
    worker = node(coordinator, await coordinator.create_account("owner"), "raw", signed=False)
    popped = await pop_job(worker)
    pixels = Image.linear_gradient("L").resize((64, 64)).convert(mode)  # not one colour: the layout must survive
    if mode == "RGBA":
        pixels.putalpha(Image.linear_gradient("L").resize((64, 64)).rotate(90))  # translucent: alpha kept
    raw = pixels.tobytes()
    url = popped.body["r2_upload"]
    async with aiohttp.ClientSession() as session:
        for wrong in (raw[:-1], raw + b"\0", bytes(64 * 64 * 2), bytes(65 * 64 * 3)):
            async with session.put(url, data=wrong, skip_auto_headers=["content-type"]) as response:
                assert response.status == 400 and (await response.json())["rc"] == "ImageValidationFailed"
        async with session.put(url, data=raw, skip_auto_headers=["content-type"]) as response:
            assert response.status == 200, await response.text()
    r2 = {"id": popped.body["ids"][0], "generation": "R2", "state": "ok", "seed": seed_of(popped)}
    submitted = await worker.api.post("/v2/generate/submit", r2)
    assert submitted.status == 200 and submitted.body["reward"] > 0, submitted.body
    generation = (await requester(coordinator, alice).get(f"/v2/generate/status/{request_id}")).body["generations"][0]
    async with aiohttp.ClientSession() as session, session.get(generation["img"]) as response:
        stored = Image.open(io.BytesIO(await response.read()))
        assert (stored.format, stored.size, stored.mode) == ("WEBP", (64, 64), mode)
        assert stored.tobytes() == raw  # lossless: the requester gets exactly the node's pixels


async def test_submit_r2_without_upload_is_refused(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small())
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1", signed=False)
    popped = await pop_job(worker)
    reply = await worker.api.post(
        "/v2/generate/submit", {"id": popped.body["ids"][0], "generation": "R2", "state": "ok", "seed": seed_of(popped)}
    )
    assert reply.status == 400 and reply.rc == "UploadMissing"
    assert await job_state(coordinator, popped.body["ids"][0]) == "processing"


async def test_upload_with_a_bad_token_is_refused(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    await generate(api, small(n=2))
    popped = await pop_job(worker, amount=2)
    first_url, second_url = popped.body["r2_uploads"]
    good_token = first_url.split("token=", 1)[1]
    base = first_url.split("?", 1)[0]
    async with aiohttp.ClientSession() as session:
        for url in (f"{base}?token=1.abc", f"{base}", second_url.split("?")[0] + "?token=" + good_token):
            async with session.put(url, data=tiny_webp()) as response:
                assert response.status == 403, url
                assert (await response.json())["rc"] == "UploadTokenInvalid"
        async with session.put(first_url, data=b"not an image") as response:
            assert response.status == 400
            assert (await response.json())["rc"] == "ImageValidationFailed"
    for job in popped.body["jobs"]:
        name = upload_name(job["document"]["job_id"], job["document"]["worker_id"])
        assert not await coordinator.broker.services.images.exists(name)


async def test_late_upload_by_the_previous_node_does_not_reach_the_new_one(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    # The new node is an unsigned (AI Horde) one: nothing but its upload says which image it made.
    slow, quick = node(coordinator, owner, "slow"), node(coordinator, owner, "quick", signed=False)
    await quick.pop()
    request_id = await generate(api, small())
    first = await pop_job(slow)
    job_id = first.body["ids"][0]
    await expire_job(coordinator, job_id)
    await coordinator.broker.upkeep.reissue_overdue()
    second = await pop_job(quick)
    assert second.body["ids"] == [job_id]
    good = tiny_webp((250, 250, 250))
    async with aiohttp.ClientSession() as session:
        async with session.put(second.body["r2_upload"], data=good) as response:
            assert response.status == 200
        # The first node, late, uploads with the URL it was given: refused, nothing overwritten.
        async with session.put(first.body["r2_upload"], data=tiny_webp((0, 0, 0))) as response:
            assert response.status == 403
            assert (await response.json())["rc"] == "UploadTokenInvalid"
    reply = await quick.api.post(
        "/v2/generate/submit", {"id": job_id, "generation": "R2", "state": "ok", "seed": seed_of(second)}
    )
    assert reply.status == 200, reply.body
    [generation] = (await api.get(f"/v2/generate/status/{request_id}")).body["generations"]
    async with aiohttp.ClientSession() as session, session.get(generation["img"]) as response:
        assert await response.read() == good


async def test_nodes_get_only_jobs_for_their_models(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=1000)
    api = requester(coordinator, alice)
    wanted = {
        "model-a": [await generate(api, small(models=["model-a"])) for _ in range(3)],
        "model-b": [await generate(api, small(models=["model-b"])) for _ in range(3)],
    }
    owner = await coordinator.create_account("owner")
    node_a = node(coordinator, owner, "node-a", models=["model-a"])
    node_b = node(coordinator, owner, "node-b", models=["model-b"])
    got: dict[str, list[str]] = {"model-a": [], "model-b": []}
    for _ in range(4):
        for model, worker in (("model-a", node_a), ("model-b", node_b)):
            popped = await worker.pop()
            if popped.body["ids"]:
                assert popped.body["model"] == model
                got[model].append(popped.body["jobs"][0]["document"]["request_sha256"])
    assert sorted(got["model-a"]) == sorted(map(request_digest, wanted["model-a"]))
    assert sorted(got["model-b"]) == sorted(map(request_digest, wanted["model-b"]))


async def test_three_faults_fault_the_request_and_cost_nothing(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    request_id = await generate(api, small())
    owner = await coordinator.create_account("owner")
    workers = [node(coordinator, owner, f"n{i}") for i in range(3)]  # three faults on one node are one (abuse_faults)
    for attempt, worker in enumerate(workers):
        popped = await pop_job(worker)
        reply = await worker.submit(popped.body["ids"][0], seed_of(popped), state="faulted")
        assert reply.status == 200 and reply.body["reward"] == 0
        check = (await api.get(f"/v2/generate/check/{request_id}")).body
        if attempt < 2:
            assert check["faulted"] is False and check["waiting"] == 1 and check["restarted"] == attempt + 1
    check = (await api.get(f"/v2/generate/check/{request_id}")).body
    assert check["faulted"] is True and check["waiting"] == 0 and check["finished"] == 0
    assert (await workers[0].pop()).body["ids"] == []
    assert await balance(coordinator, alice) == 100 and await balance(coordinator, owner) == 0


async def test_richer_requesters_go_first_and_anonymous_last(coordinator: RunningCoordinator) -> None:
    poor = await coordinator.create_account("poor", kudos=10)
    rich = await coordinator.create_account("rich", kudos=1000)
    anonymous_id = await generate(Api(coordinator.url), small())
    poor_id = await generate(requester(coordinator, poor), small())
    rich_id = await generate(requester(coordinator, rich), small())  # queued last, within the ageing bonus
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    order = []
    for _ in range(3):
        popped = await pop_job(worker)
        order.append(popped.body["jobs"][0]["document"]["request_sha256"])
    assert order == [request_digest(rich_id), request_digest(poor_id), request_digest(anonymous_id)]


async def test_servable_job_behind_many_reserved_ones_is_found(coordinator: RunningCoordinator) -> None:
    """Jobs reserved for another node at the head of the queue must not hide one this node may take."""
    rich = await coordinator.create_account("rich", kudos=10000)
    poor = await coordinator.create_account("poor", kudos=1)
    for _ in range(12):
        await generate(requester(coordinator, rich), {**small(), "workers": ["someone-else"]})
    open_id = await generate(requester(coordinator, poor), small())
    owner = await coordinator.create_account("owner")
    popped = await node(coordinator, owner, "n1").pop()
    assert popped.body["ids"], popped.body
    assert popped.body["jobs"][0]["document"]["request_sha256"] == request_digest(open_id)


async def test_worker_list_filter_and_blacklist(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, owner = pair.api, pair.owner
    node_a, node_b = node(coordinator, owner, "node-a"), node(coordinator, owner, "node-b")
    only_b = await generate(api, {**small(), "workers": ["node-b"]})
    not_b = await generate(api, {**small(), "workers": ["node-b"], "worker_blacklist": True})
    first_a = await pop_job(node_a)
    assert first_a.body["jobs"][0]["document"]["request_sha256"] == request_digest(not_b)
    assert (await node_a.pop()).body["ids"] == []
    first_b = await pop_job(node_b)
    assert first_b.body["jobs"][0]["document"]["request_sha256"] == request_digest(only_b)


async def test_a_nodes_word_blacklist_keeps_matching_prompts_from_it(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    """A node's `blacklist` (words it will not draw, any case, anywhere in the prompt) passes over those
    requests, which stay queued for other nodes."""
    api, owner = pair.api, pair.owner
    unwanted = await generate(api, small("A red FOXglove in a vase"))
    wanted = await generate(api, small("a cat"))
    picky = node(coordinator, owner, "picky", extra={"blacklist": ["fox", "wolf"]})
    first = await pop_job(picky)
    assert first.body["jobs"][0]["document"]["request_sha256"] == request_digest(wanted)
    assert (await picky.pop()).body["ids"] == []
    other = await pop_job(node(coordinator, owner, "other"))
    assert other.body["jobs"][0]["document"]["request_sha256"] == request_digest(unwanted)


@pytest.mark.parametrize("models", [499, 500])
async def test_pop_with_many_models(coordinator: RunningCoordinator, models: int) -> None:
    owner = await coordinator.create_account("owner")
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small(models=["m-7"]))
    worker = node(coordinator, owner, "n1", models=[f"m-{i}" for i in range(models)])
    popped = await worker.pop()
    assert popped.status == 200, popped.body
    assert popped.body["model"] == "m-7"


async def test_maintenance_node_gets_nothing(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, owner, worker = pair.api, pair.owner, pair.worker
    await worker.pop()
    worker_id = await fetch_worker_id(coordinator, "n1")
    reply = await Api(coordinator.url, apikey=owner.apikey).call(
        "PUT", f"/v2/workers/{worker_id}", {"maintenance": True}
    )
    assert reply.status == 200, reply.body
    await generate(api, small())
    refused = await worker.pop()  # AI Horde's answer, not an empty pop (tests/test_abuse_faults.py)
    assert (refused.status, refused.rc) == (403, "WorkerMaintenance"), refused.body
    reply = await Api(coordinator.url, apikey=owner.apikey).call(
        "PUT", f"/v2/workers/{worker_id}", {"maintenance": False}
    )
    assert (await worker.pop()).body["ids"]


async def fetch_worker_id(coordinator: RunningCoordinator, name: str) -> str:
    workers = await Api(coordinator.url).get("/v2/workers")
    return next(w["id"] for w in workers.body if w["name"] == name)


async def test_model_counts_in_status(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, owner = pair.api, pair.owner
    await node(coordinator, owner, "n1", models=[MODEL, "other"]).pop()
    await node(coordinator, owner, "n2", models=[MODEL]).pop()
    await generate(api, small(n=3, models=["queued-only"]))
    models = {m["name"]: m for m in (await Api(coordinator.url).get("/v2/status/models")).body}
    assert Counter({name: m["count"] for name, m in models.items()}) == Counter(
        {MODEL: 2, "other": 1, "queued-only": 0}
    )
    assert models["queued-only"]["jobs"] == 3


async def test_concurrent_submits_of_one_job_store_one_consistent_result(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    request_id = await generate(requester(coordinator, alice), small())
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1", signed=False)
    popped = await pop_job(worker)
    job_id, seed = popped.body["ids"][0], seed_of(popped)
    images = [tiny_webp((index * 40, 10, 10)) for index in range(6)]
    replies = await asyncio.gather(*(worker.submit(job_id, seed, image=image) for image in images))
    assert sorted(r.status for r in replies) == [200] + [400] * 5
    assert {r.rc for r in replies if r.status == 400} <= {"DuplicateGen", "AbortedGen"}
    assert await balance(coordinator, owner) == replies[[r.status for r in replies].index(200)].body["reward"]
    [generation] = (await requester(coordinator, alice).get(f"/v2/generate/status/{request_id}")).body["generations"]
    async with aiohttp.ClientSession() as session, session.get(generation["img"]) as response:
        stored = await response.read()
    from protocol.provenance import sha256_hex

    assert sha256_hex(stored) == generation["image_sha256"]


async def test_a_pop_abandoned_by_its_node_gives_its_job_back(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that hangs up while its pop is being answered must not take the job with it."""
    owner = await coordinator.create_account("owner")
    alice = await coordinator.create_account("alice", kudos=100)
    hasty, patient = node(coordinator, owner, "hasty"), node(coordinator, owner, "patient")
    assert (await hasty.pop()).body["ids"] == [] and (await patient.pop()).body["ids"] == []
    await generate(requester(coordinator, alice), small())
    dispatcher = coordinator.broker.dispatcher
    answer = dispatcher._response

    # The job is claimed, then the node gives up before it hears of it.
    async def slow_answer(*args: object, **kwargs: object) -> object:
        await asyncio.sleep(1.0)
        return await answer(*args, **kwargs)

    monkeypatch.setattr(dispatcher, "_response", slow_answer)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hasty.pop(), 0.3)
    monkeypatch.setattr(dispatcher, "_response", answer)
    popped = await patient.pop(wait=5)
    assert len(popped.body["ids"]) == 1, popped.body
    job = await fetch_one(coordinator, "SELECT state, worker_id FROM jobs WHERE id = ?", popped.body["ids"][0])
    assert job["state"] == "processing"
    info = await fetch_one(coordinator, "SELECT info FROM jobs WHERE id = ?", popped.body["ids"][0])
    assert json.loads(info["info"])["faults"] == 0  # handing a job back is not the node's fault


async def test_require_upfront_kudos_takes_only_requests_their_requesters_can_pay(
    coordinator: RunningCoordinator,
) -> None:
    owner = await coordinator.create_account("owner")
    broke = await coordinator.create_account("broke")  # registered, but 0 kudos
    rich = await coordinator.create_account("rich", kudos=100)
    careful = node(coordinator, owner, "careful", extra={"require_upfront_kudos": True})
    assert (await careful.pop()).body["ids"] == []
    await generate(requester(coordinator, broke), small())
    await generate(Api(coordinator.url, apikey="0000000000"), small())
    empty = await careful.pop()
    assert empty.body["ids"] == [] and empty.body["skipped"].get("kudos") == 2, empty.body
    paid = await generate(requester(coordinator, rich), small())
    popped = await pop_job(careful)
    assert popped.body["jobs"][0]["document"]["request_sha256"] == request_digest(paid)
    anyone = node(coordinator, owner, "anyone")  # without the flag, the unfunded requests are served
    assert len((await pop_job(anyone)).body["ids"]) == 1


async def test_an_extra_slow_node_gets_no_request_that_refuses_slow_workers(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    slow = node(coordinator, owner, "slow", extra={"extra_slow_worker": True})
    assert (await slow.pop()).body["ids"] == []
    hurried = await generate(api, {**small(), "slow_workers": False})
    assert (await slow.pop()).body["ids"] == []
    relaxed = await generate(api, small())
    assert (await pop_job(slow)).body["jobs"][0]["document"]["request_sha256"] == request_digest(relaxed)
    fast = await pop_job(node(coordinator, owner, "fast"))
    assert fast.body["jobs"][0]["document"]["request_sha256"] == request_digest(hurried)
