"""Hostile participants against the economy (issue 11, cases 1 and 12), over real HTTP.

A farmer registers a node and sends it anonymous or sock-puppet requests priced as high as the
rules allow, pinned to that node, answering with 1×1 images; a requester spends one balance twice
through upfront requests; an account floods the queue. Every test checks money (balances, ledger
rows, the audit), not just status codes: kudos move only from a requester who pays, or are minted
only within the volunteer bound.
"""

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from protocol.kudos import image_kudos
from tests.api_support import (
    MODEL,
    RequesterAndNode,
    balance,
    custom_coordinator,
    fetch_one,
    generate,
    ledger_rows,
    node,
    pop_job,
    requester,
    seed_of,
    small,
    snapshot,
)
from tests.conftest import RunningCoordinator
from tests.helpers import Api, Reply, SimWorker, tiny_webp

PRICE = image_kudos(width=64, height=64, steps=4)
# The most a request may ask for without kudos up front: 1024², 50 steps, with a LoRA.
FARMED = {"width": 1024, "height": 1024, "steps": 50, "loras": [{"name": "farm-lora"}]}
VOLUNTEER_PER_SECOND = 50 / 600  # the default volunteer bound: 50 kudos per 10 minutes per node


@asynccontextmanager
async def address(ip: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose requests arrive from `ip` (the coordinator trusts X-Forwarded-For in these tests)."""
    async with aiohttp.ClientSession(headers={"X-Forwarded-For": ip}) as session:
        yield session


async def serve_all(worker: SimWorker, image: Callable[[Reply], bytes] | None = None) -> list[Reply]:
    """Pop and answer every job the node can get, one image per pop (64×64 unless `image` says); the replies."""
    replies = []
    while True:
        popped = await worker.pop()
        assert popped.status == 200, popped.body
        if not popped.body["ids"]:
            return replies
        data = image(popped) if image else None
        replies.append(await worker.submit(popped.body["ids"][0], seed_of(popped), image=data))


def sized(popped: Reply) -> bytes:
    """A solid image of exactly the size the job asks for: the cheapest honest-looking answer."""
    payload = popped.body["jobs"][0]["document"]["payload"]
    return webp(payload["width"], payload["height"])


def webp(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, format="WEBP")
    return buffer.getvalue()


async def worker_id(coordinator: RunningCoordinator, name: str) -> str:
    row = await fetch_one(coordinator, "SELECT id FROM workers WHERE name = ?", name)
    assert row is not None
    return str(row["id"])


async def minted(coordinator: RunningCoordinator) -> float:
    """Kudos created by anything but an operator grant: what an attacker could farm."""
    rows = await ledger_rows(coordinator)
    made = sum(r["amount"] for r in rows if r["source"] is None and r["kind"] != "admin")
    burned = sum(r["amount"] for r in rows if r["target"] is None and r["kind"] != "admin")
    return round(made - burned, 2)


async def audit_ok(coordinator: RunningCoordinator) -> None:
    report = await coordinator.broker.bank.audit()
    assert report.ok, report.problems


async def test_a_farm_of_self_pinned_unfunded_requests_earns_nothing(coordinator: RunningCoordinator) -> None:
    """Case 1: anonymous and zero-balance sock-puppet requests pinned to the farmer's own node, priced as
    high as allowed without upfront kudos, answered at once with images of the right size."""
    farmer = await coordinator.create_account("farmer")
    puppet = await coordinator.create_account("puppet")
    farm = node(coordinator, farmer, "farm", max_pixels=1024 * 1024, extra={"allow_lora": True})
    assert (await farm.pop()).status == 200  # registers the node
    pinned = {"prompt": "farm", "models": [MODEL], "workers": [await worker_id(coordinator, "farm")]}
    for api in (Api(coordinator.url), requester(coordinator, puppet), requester(coordinator, farmer)):
        for _ in range(2):
            await generate(api, {**pinned, "params": {**FARMED, "n": 2}})
    replies = []
    while (popped := await farm.pop()).body["ids"]:
        job_id, seed = popped.body["ids"][0], seed_of(popped)
        # The farm answered every 1024² job with a 1×1 PNG: refused, so it answers at the right size.
        one_pixel = await farm.submit(job_id, seed, image=tiny_webp(size=1))
        assert (one_pixel.status, one_pixel.rc) == (400, "ImageSizeMismatch"), one_pixel.body
        replies.append(await farm.submit(job_id, seed, image=sized(popped)))
    assert len(replies) == 12 and all(reply.status == 200 for reply in replies), replies[0].body
    # Self-pinned (the farmer's own account) or from the node's own address: nothing at all.
    assert [reply.body["reward"] for reply in replies] == [0] * 12
    assert await balance(coordinator, farmer) == 0
    assert await balance(coordinator, puppet) == 0  # the unfunded requester never goes negative
    assert await minted(coordinator) == 0
    listed = (await Api(coordinator.url).get(f"/v2/workers/{await worker_id(coordinator, 'farm')}")).body
    assert listed["kudos_rewards"] == 0 and listed["requests_fulfilled"] == 12
    await audit_ok(coordinator)


async def test_pinning_a_node_costs_ten_percent_more(coordinator: RunningCoordinator) -> None:
    plain = await Api(coordinator.url).post("/v2/generate/async", {**small(n=2), "dry_run": True})
    pinned = await Api(coordinator.url).post(
        "/v2/generate/async", {**small(n=2), "workers": ["somewhere"], "dry_run": True}
    )
    assert plain.body["kudos"] == round(2 * PRICE, 2)
    assert pinned.body["kudos"] == round(2 * image_kudos(width=64, height=64, steps=4, pinned=True), 2)
    assert image_kudos(width=64, height=64, steps=4, pinned=True) == pytest.approx(PRICE * 1.1, abs=0.011)


async def test_images_of_the_wrong_size_are_refused_and_cost_nothing(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    alice, api, owner, worker = pair
    await generate(api, small())
    popped = await pop_job(worker)
    before = await snapshot(coordinator)
    for wrong in (tiny_webp(size=1), webp(64, 65), webp(128, 128)):
        refused = await worker.submit(popped.body["ids"][0], seed_of(popped), image=wrong)
        assert (refused.status, refused.rc) == (400, "ImageSizeMismatch"), refused.body
        assert "64x64" in refused.body["message"]
    assert await snapshot(coordinator) == before
    assert (await balance(coordinator, alice), await balance(coordinator, owner)) == (100, 0)
    # The job is still the node's: the right image is taken and paid.
    accepted = await worker.submit(popped.body["ids"][0], seed_of(popped), image=webp(64, 64))
    assert accepted.status == 200 and accepted.body["reward"] == PRICE
    await audit_ok(coordinator)


async def test_an_upscaler_result_must_have_the_upscaled_size(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, worker = pair.api, pair.worker
    await generate(api, small(post_processing=["RealESRGAN_x2plus"]))
    popped = await pop_job(worker)
    unscaled = await worker.submit(popped.body["ids"][0], seed_of(popped), image=webp(64, 64))
    assert (unscaled.status, unscaled.rc) == (400, "ImageSizeMismatch")
    upscaled = await worker.submit(popped.body["ids"][0], seed_of(popped), image=webp(128, 128))
    assert upscaled.status == 200 and upscaled.body["reward"] > 0
    await audit_ok(coordinator)


async def test_a_request_is_funded_up_to_the_balance_and_moves_exactly_the_price(
    coordinator: RunningCoordinator,
) -> None:
    alice = await coordinator.create_account("alice", kudos=round(1.5 * PRICE, 2))  # enough for one image
    owner = await coordinator.create_account("owner")
    await generate(requester(coordinator, alice), small(n=3))
    replies = await serve_all(node(coordinator, owner, "n1"))
    # One funded image moves its price from alice to the node's owner; the two unfunded ones come from
    # the node's own address (loopback) and earn nothing.
    assert sorted(reply.body["reward"] for reply in replies) == [0, 0, PRICE]
    assert await balance(coordinator, alice) == pytest.approx(0.5 * PRICE, abs=0.011)
    assert await balance(coordinator, owner) == PRICE
    spends = [(r["source"], r["target"], r["amount"]) for r in await ledger_rows(coordinator) if r["kind"] == "spend"]
    rewards = [(r["source"], r["target"], r["amount"]) for r in await ledger_rows(coordinator) if r["kind"] == "reward"]
    assert spends == [(alice.id, None, PRICE)] and rewards == [(None, owner.id, PRICE)]
    assert await minted(coordinator) == 0
    await audit_ok(coordinator)


async def test_your_own_node_is_paid_from_your_own_funds_and_nothing_is_minted(
    coordinator: RunningCoordinator,
) -> None:
    """AI Horde pays a node for its owner's own images (horde-sdk's worker round trip asserts the reward).
    Here an image its requester funded, made by its own node, moves its price from the account to itself:
    the node is told its reward, the balance does not change, nothing is minted; an unfunded one earns 0."""
    owner = await coordinator.create_account("owner", kudos=round(1.5 * PRICE, 2))  # funds one image of three
    await generate(requester(coordinator, owner), small(n=3))
    replies = await serve_all(node(coordinator, owner, "mine"))
    assert sorted(reply.body["reward"] for reply in replies) == [0, 0, PRICE]
    assert await balance(coordinator, owner) == round(1.5 * PRICE, 2)
    moved = [(r["kind"], r["source"], r["target"], r["amount"]) for r in await ledger_rows(coordinator)]
    assert moved[1:] == [("spend", owner.id, None, PRICE), ("reward", None, owner.id, PRICE)]
    assert await minted(coordinator) == 0
    # What the node earned from others is what its page shows: its owner paying itself is not earning.
    listed = (await Api(coordinator.url).get(f"/v2/workers/{await worker_id(coordinator, 'mine')}")).body
    assert listed["kudos_rewards"] == 0 and listed["requests_fulfilled"] == 3
    await audit_ok(coordinator)


async def test_upfront_kudos_are_reserved_so_one_balance_pays_once(coordinator: RunningCoordinator) -> None:
    big = {"prompt": "big", "models": [MODEL], "params": {"width": 64, "height": 64, "steps": 51}}
    price = image_kudos(width=64, height=64, steps=51)
    alice = await coordinator.create_account("alice", kudos=round(1.5 * price, 2))
    api = requester(coordinator, alice)
    first = await api.post("/v2/generate/async", big)
    assert first.status == 202, first.body
    second = await api.post("/v2/generate/async", big)
    assert (second.status, second.rc) == (403, "KudosUpfront"), second.body
    # At the same moment, from another account with the same balance: exactly one is accepted.
    bob = await coordinator.create_account("bob", kudos=round(1.5 * price, 2))
    both = await asyncio.gather(*(requester(coordinator, bob).post("/v2/generate/async", big) for _ in range(4)))
    assert sorted(reply.status for reply in both) == [202, 403, 403, 403]
    # Cancelling releases the reservation.
    assert (await api.call("DELETE", f"/v2/generate/status/{first.body['id']}")).status == 200
    assert (await api.post("/v2/generate/async", big)).status == 202
    await audit_ok(coordinator)


async def test_queued_images_are_capped_at_the_advertised_concurrency(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice")
    api = requester(coordinator, alice)
    first = await generate(api, small(n=20))
    over = await api.post("/v2/generate/async", small(n=11))
    assert (over.status, over.rc) == (429, "TooManyPrompts"), over.body
    assert "30" in over.body["message"]
    await generate(api, small(n=10))
    assert (await api.post("/v2/generate/async", small())).status == 429
    # Processing images count too; finished and cancelled ones free their place.
    assert (await api.call("DELETE", f"/v2/generate/status/{first}")).status == 200
    await generate(api, small(n=20))
    # Anonymous requesters share one cap per address (loopback here).
    await generate(Api(coordinator.url), small(n=20))
    anonymous = await Api(coordinator.url).post("/v2/generate/async", small(n=11))
    assert (anonymous.status, anonymous.rc) == (429, "TooManyPrompts")
    assert (await api.get("/v2/find_user")).body["concurrency"] == 30  # the cap is the one advertised


async def test_anonymous_caps_are_per_address(tmp_path: Path, database_url: str | None) -> None:
    async with custom_coordinator(tmp_path, database_url, trust_forwarded_for=True) as coordinator:
        async with address("203.0.113.1") as one, address("203.0.113.2") as two:
            for session in (one, two):  # each address has its own 30
                await generate(Api(coordinator.url, session=session), small(n=20))
                await generate(Api(coordinator.url, session=session), small(n=10))
            refused = await Api(coordinator.url, session=one).post("/v2/generate/async", small())
            assert (refused.status, refused.rc) == (429, "TooManyPrompts")


async def test_cancel_and_fault_release_reserved_kudos(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=round(3 * PRICE, 2))
    owner = await coordinator.create_account("owner")
    api = requester(coordinator, alice)
    request_id = await generate(api, small(n=3))
    # Every kudo is promised to the three waiting images: none can leave.
    held = await api.post("/v2/kudos/transfer", {"username": "owner", "amount": 1})
    assert (held.status, held.rc) == (400, "KudosTransferNotEnough")
    assert (await api.call("DELETE", f"/v2/generate/status/{request_id}")).status == 200
    # Cancelled: the balance is free again (and untouched).
    request_id = await generate(api, small(n=1))
    nodes = [node(coordinator, owner, f"n{i}") for i in range(3)]
    for worker in nodes:  # three different nodes fail it: the request faults
        popped = await pop_job(worker)
        assert (await worker.submit(popped.body["ids"][0], seed_of(popped), state="faulted")).status == 200
    assert (await api.get(f"/v2/generate/check/{request_id}")).body["faulted"] is True
    sent = await api.post("/v2/kudos/transfer", {"username": "owner", "amount": round(3 * PRICE, 2)})
    assert sent.status == 200, sent.body
    assert (await balance(coordinator, alice), await balance(coordinator, owner)) == (0, round(3 * PRICE, 2))
    await audit_ok(coordinator)


async def test_a_transfer_cannot_spend_kudos_promised_to_a_processing_image(coordinator: RunningCoordinator) -> None:
    """An image being made when its request is cancelled is still delivered and charged: its kudos stay held."""
    alice = await coordinator.create_account("alice", kudos=PRICE)
    owner = await coordinator.create_account("owner")
    api = requester(coordinator, alice)
    request_id = await generate(api, small())
    worker = node(coordinator, owner, "n1")
    popped = await pop_job(worker)
    assert (await api.call("DELETE", f"/v2/generate/status/{request_id}")).status == 200
    held = await api.post("/v2/kudos/transfer", {"username": "owner", "amount": PRICE})
    assert (held.status, held.rc) == (400, "KudosTransferNotEnough")
    delivered = await worker.submit(popped.body["ids"][0], seed_of(popped))
    assert delivered.status == 200 and delivered.body["reward"] == PRICE
    assert (await balance(coordinator, alice), await balance(coordinator, owner)) == (0, PRICE)
    await audit_ok(coordinator)


async def test_volunteer_rewards_are_bounded_per_node(tmp_path: Path, database_url: str | None) -> None:
    """Anonymous requests from another address do pay the node, but only what it would earn in uptime."""
    async with custom_coordinator(tmp_path, database_url, trust_forwarded_for=True) as coordinator:
        shift = 0.0
        coordinator.broker.services.clock = lambda: time.time() + shift
        owner = await coordinator.create_account("owner")
        async with address("198.51.100.7") as node_address, address("203.0.113.9") as stranger:
            worker = SimWorker(Api(coordinator.url, apikey=owner.apikey, session=node_address), "volunteer")
            assert (await worker.pop()).status == 200
            registered = time.time()
            await generate(Api(coordinator.url, session=stranger), small(n=3))
            fresh = await serve_all(worker)
            # A node that has just registered has earned (almost) nothing yet.
            elapsed = time.time() - registered
            assert sum(r.body["reward"] for r in fresh) <= round(elapsed * VOLUNTEER_PER_SECOND, 2) + 0.01
            shift = 3600.0  # an hour later the allowance is full: 50 kudos, no more
            for _ in range(2):  # 20 images of 2.9 kudos: more than the allowance
                await generate(Api(coordinator.url, session=stranger), small(n=10))
            later = await serve_all(worker)
            earned = sum(r.body["reward"] for r in later)
            elapsed = time.time() - registered
            assert 50 - PRICE <= earned <= 50 + elapsed * VOLUNTEER_PER_SECOND + 0.01, earned
            assert later[0].body["reward"] == PRICE and later[-1].body["reward"] < PRICE
            # The same node's own address gets nothing, even with allowance left (an hour on).
            shift = 7200.0
            await generate(Api(coordinator.url, session=node_address), small(n=2))
            assert [r.body["reward"] for r in await serve_all(worker)] == [0, 0]
        assert await balance(coordinator, owner) == pytest.approx(sum(r.body["reward"] for r in fresh + later))
        volunteer = [r for r in await ledger_rows(coordinator) if r["reference"].startswith("volunteer:")]
        assert round(sum(r["amount"] for r in volunteer), 2) == await balance(coordinator, owner)
        await audit_ok(coordinator)


async def test_suspicion_past_the_threshold_withholds_rewards(tmp_path: Path, database_url: str | None) -> None:
    async with custom_coordinator(tmp_path, database_url, suspicious_mps_per_second=1e-9) as coordinator:
        alice = await coordinator.create_account("alice", kudos=100)
        owner = await coordinator.create_account("owner")
        worker = node(coordinator, owner, "too-fast")
        await generate(requester(coordinator, alice), small(n=7))
        replies = await serve_all(worker)
        # Every result is impossibly fast: four are paid, from the fifth (the threshold) on rewards are withheld.
        assert [reply.body["reward"] for reply in replies] == [PRICE] * 4 + [0] * 3
        assert await balance(coordinator, alice) == round(100 - 4 * PRICE, 2)  # not charged for withheld ones
        assert await balance(coordinator, owner) == round(4 * PRICE, 2)
        worker_page = f"/v2/workers/{await worker_id(coordinator, 'too-fast')}"
        listed = (await Api(coordinator.url).get(worker_page)).body
        assert listed["suspicious"] == 7 and "faster than" in (listed.get("rewards_withheld") or "")
        assert listed["requests_fulfilled"] == 7 and listed["kudos_rewards"] == round(4 * PRICE, 2)
        await audit_ok(coordinator)
        # The operator vouches for the node: suspicion cleared, rewards flow again.
        command = [sys.executable, "-m", "coordinator.cli", "--data-dir", str(coordinator.data_dir)]
        command += ["--db", database_url] if database_url else []
        done = await asyncio.to_thread(
            subprocess.run, [*command, "trust", "too-fast"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert (await Api(coordinator.url).get(worker_page)).body["rewards_withheld"] is None
        await generate(requester(coordinator, alice), small())
        assert [reply.body["reward"] for reply in await serve_all(worker)] == [PRICE]


def test_the_economy_rules_directly() -> None:
    from coordinator.economy import funded_images, settle, volunteer_allowance, withheld_reason

    assert funded_images(available=3 * 2.9, price=2.9, n=5) == 3  # exactly three prices fund three images
    assert funded_images(available=2.89, price=2.9, n=5) == 0 and funded_images(-4.0, 2.9, 2) == 0
    assert funded_images(available=0.02, price=0.01, n=5) == 2  # a one-hundredth price is a price
    assert funded_images(available=0.0, price=0.001, n=3) == 3  # a price that rounds to nothing costs nothing
    assert volunteer_allowance(0.0, since=0.0, now=60.0, per_period=50.0) == pytest.approx(5.0)
    assert volunteer_allowance(10.0, since=0.0, now=10_000.0, per_period=50.0) == 50.0  # capped
    common = {
        "price": 7.61,
        "requester_address": "203.0.113.9",
        "owner_id": 2,
        "node_address": "203.0.113.9",
        "allowance": 50.0,
    }
    assert settle(**common, charge=7.61, requester_id=1, withheld=True).reward == 0  # suspicion beats all
    own = settle(**common, charge=7.61, requester_id=2, withheld=False)  # own node, funded: paid to itself
    assert (own.charge, own.reward, own.minted, own.reason) == (7.61, 7.61, 0, "own node")
    assert settle(**common, charge=0, requester_id=2, withheld=False).reward == 0  # own node, unfunded: nothing
    funded = settle(**common, charge=7.61, requester_id=1, withheld=False)
    assert (funded.charge, funded.reward, funded.minted) == (7.61, 7.61, 0)  # paid, even from the same address
    assert settle(**common, charge=0, requester_id=1, withheld=False).reward == 0  # unfunded, same address
    stranger = {**common, "requester_address": "198.51.100.1"}
    assert settle(**stranger, charge=0, requester_id=0, withheld=False).reward == 7.61
    assert settle(**{**stranger, "allowance": 3.339}, charge=0, requester_id=0, withheld=False).reward == 3.33
    cheap = settle(**stranger, charge=0.5, requester_id=1, withheld=False)  # funded, though under one kudo
    assert (cheap.charge, cheap.reward) == (0.5, 0.5)
    # The node's page says rewards are withheld exactly when `settle` is told they are (suspicion >= threshold).
    assert withheld_reason(4, threshold=5) is None
    assert "5 results came back faster" in (withheld_reason(5, threshold=5) or "")


async def test_a_node_asking_for_upfront_kudos_gets_only_the_images_they_were_reserved_for(
    coordinator: RunningCoordinator,
) -> None:
    """`require_upfront_kudos` means "only images someone pays for": a requester holding one image's price
    who asks for two has one funded image and one volunteer image, and the careful node takes only the first,
    even in a batch, though the requester's balance still covers a price."""
    price = (await Api(coordinator.url).post("/v2/generate/async", {**small(), "dry_run": True})).body["kudos"]
    owner = await coordinator.create_account("owner")
    payer = await coordinator.create_account("payer", kudos=price)
    careful = node(coordinator, owner, "careful", extra={"require_upfront_kudos": True})
    await generate(requester(coordinator, payer), small(n=2))
    popped = await pop_job(careful, amount=2)
    assert len(popped.body["ids"]) == 1, popped.body
    await careful.submit(popped.body["ids"][0], seed_of(popped))
    empty = await careful.pop()
    assert empty.body["ids"] == [] and empty.body["skipped"].get("kudos") == 1, empty.body
    assert await balance(coordinator, payer) == 0 and await balance(coordinator, owner) == price
    assert len((await pop_job(node(coordinator, owner, "anyone"))).body["ids"]) == 1  # the volunteer image
