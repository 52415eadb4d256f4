"""Hostile participants, bounds (issue 11, cases 2, 9 and part of 12): one anonymous request, one
pop or one status answer costs the coordinator a bounded number of bytes, an account runs a bounded
number of workers, and kudos transfers take only a JSON number and a `name#id` that matches both."""

import base64
import hashlib
import io
import json
import os
from typing import Any

import aiohttp
import pytest
from PIL import Image

from protocol.provenance import request_digest
from tests.api_support import count, fetch_one, node, pop_job, requester, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api

# The bounds docs/security.md states ("Bounds"), written out again here on purpose: a test that
# read them from the code would pass whatever the code said.
NAME_MAX = 100
REQUEST_MODELS_MAX = 32
POP_MODELS_MAX = 500
# One anonymous request of the largest allowed shape writes at most this much (database + images):
# 20 images × 32 models = 640 queue rows of ≤ 100-character model names, and the request itself.
REQUEST_BYTES_MAX = 768 * 1024
# One worker in `/v2/workers`, at the largest allowed pop, name, info and bridge agent.
WORKER_ANSWER_MAX = 60 * 1024
INLINE_BYTES_MAX = 2 * 1024 * 1024
UNTRUSTED_WORKERS_MAX = 3


async def stored_bytes(coordinator: RunningCoordinator) -> int:
    """The database's size as its engine counts it, plus every image file."""
    database = coordinator.broker.services.database
    if database.dialect == "postgresql":
        row = await fetch_one(coordinator, "SELECT pg_database_size(current_database()) AS n")
    else:  # pages in use, whether they sit in the main file or still in the WAL
        row = await fetch_one(
            coordinator, "SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()"
        )
    assert row is not None
    root = coordinator.config.image_root
    images = sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) if root.exists() else 0
    return int(row["n"]) + images


def flood(models: int, model_chars: int, workers: int, worker_chars: int) -> dict[str, Any]:
    return {
        "prompt": "a cat",
        "models": [f"{i:05d}" + "m" * (model_chars - 5) for i in range(models)],
        "workers": [f"{i:05d}" + "w" * (worker_chars - 5) for i in range(workers)],
        "params": {"width": 64, "height": 64, "steps": 4, "n": 20},
    }


@pytest.mark.parametrize(
    "body",
    [flood(100, 1000, 20, 5000), flood(100, 4000, 20, 100_000)],
    ids=["200KB", "2.4MB"],
)
async def test_an_oversized_anonymous_request_is_refused_and_stores_nothing(
    coordinator: RunningCoordinator, body: dict[str, Any]
) -> None:
    before = await stored_bytes(coordinator)
    reply = await Api(coordinator.url).post("/v2/generate/async", body)
    assert (reply.status, reply.rc) == (400, "ValidationError"), reply.body
    assert set(reply.body["errors"]) >= {"models", "workers.0"} or "models.0" in reply.body["errors"]
    assert await count(coordinator, "requests") == 0 and await count(coordinator, "queue") == 0
    assert await stored_bytes(coordinator) - before <= 64 * 1024  # nothing but what SQLite/PostgreSQL touch anyway


def largest_request() -> dict[str, Any]:
    """Every field of an anonymous request at its bound."""
    return {
        "prompt": "p" * 20000,
        "models": [f"{i:02d}" + "m" * (NAME_MAX - 2) for i in range(REQUEST_MODELS_MAX)],
        "workers": [f"{i:02d}" + "w" * (NAME_MAX - 2) for i in range(20)],
        "params": {
            "width": 64,
            "height": 64,
            "steps": 4,
            "n": 20,
            "seed": "s" * 256,
            "loras": [{"name": f"{i}" + "l" * 254} for i in range(5)],
        },
    }


async def test_the_largest_allowed_anonymous_request_stores_a_bounded_number_of_bytes(
    coordinator: RunningCoordinator,
) -> None:
    body = largest_request()
    assert len(json.dumps(body)) > 25_000
    before = await stored_bytes(coordinator)
    reply = await Api(coordinator.url).post("/v2/generate/async", body)
    assert reply.status == 202, reply.body
    written = await stored_bytes(coordinator) - before
    assert written <= REQUEST_BYTES_MAX, f"one request wrote {written} bytes"
    # Queue rows carry the model (pop's index walks it) but no copy of the worker list.
    queued = await fetch_one(coordinator, "SELECT COUNT(*) AS n, MAX(LENGTH(model)) AS longest FROM queue")
    assert queued == {"n": 20 * REQUEST_MODELS_MAX, "longest": NAME_MAX}
    columns = await fetch_one(coordinator, "SELECT * FROM queue LIMIT 1")
    assert columns is not None and "workers" not in columns


async def test_a_worker_list_still_reserves_the_job(coordinator: RunningCoordinator) -> None:
    """The list lives in the request now; the pop still honours it, whitelist and blacklist."""
    owner = await coordinator.create_account("owner")
    chosen, other = node(coordinator, owner, "chosen"), node(coordinator, owner, "other")
    await chosen.pop()
    api = Api(coordinator.url)
    pinned = await api.post("/v2/generate/async", {**small(), "workers": ["chosen"]})
    assert pinned.status == 202, pinned.body
    empty = await other.pop()
    assert empty.body["ids"] == [] and empty.body["skipped"] == {"worker_id": 1}
    assert (await pop_job(chosen)).body["jobs"][0]["document"]["request_sha256"] == request_digest(pinned.body["id"])
    avoided = await api.post("/v2/generate/async", {**small(), "workers": ["chosen"], "worker_blacklist": True})
    assert (await chosen.pop()).body["skipped"] == {"worker_id": 1}
    assert (await pop_job(other)).body["jobs"][0]["document"]["request_sha256"] == request_digest(avoided.body["id"])


async def test_pops_with_huge_model_names_are_refused(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    models = [f"{i:03d}" + "m" * 20_000 for i in range(POP_MODELS_MAX)]
    for index in range(5):
        popped = await node(coordinator, owner, f"big-{index}", models=models).pop()
        assert (popped.status, popped.rc) == (400, "ValidationError"), str(popped.body)[:300]
    assert await count(coordinator, "workers") == 0
    listing = await raw_get(coordinator, "/v2/workers")
    assert listing == b"[]"


async def raw_get(coordinator: RunningCoordinator, path: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(f"{coordinator.url}/api{path}") as response:
        assert response.status == 200
        return await response.read()


async def test_an_untrusted_account_runs_at_most_three_workers_and_the_listing_is_bounded(
    coordinator: RunningCoordinator,
) -> None:
    owner = await coordinator.create_account("owner")
    models = [f"{i:03d}" + "m" * (NAME_MAX - 3) for i in range(POP_MODELS_MAX)]
    extra = {"bridge_agent": "b" * 1000}
    names = [f"{i}" + "n" * (NAME_MAX - 1) for i in range(UNTRUSTED_WORKERS_MAX + 1)]
    workers = [node(coordinator, owner, name, models=models, extra=extra) for name in names]
    for worker in workers[:UNTRUSTED_WORKERS_MAX]:
        assert (await worker.pop()).status == 200
    fourth = await workers[-1].pop()
    assert (fourth.status, fourth.rc) == (403, "Forbidden"), fourth.body
    assert "at most 3 workers" in fourth.body["message"]
    assert await count(coordinator, "workers") == UNTRUSTED_WORKERS_MAX
    assert (await workers[0].pop()).status == 200  # a known worker keeps popping

    mine = requester(coordinator, owner)
    listed = json.loads(await raw_get(coordinator, "/v2/workers"))
    for worker in listed:
        changed = await mine.call(
            "PUT", f"/v2/workers/{worker['id']}", {"info": "i" * 1000, "maintenance_msg": "m" * 1000}
        )
        assert changed.status == 200, changed.body
    answer = await raw_get(coordinator, "/v2/workers")
    assert len(json.loads(answer)) == UNTRUSTED_WORKERS_MAX
    assert len(answer) <= UNTRUSTED_WORKERS_MAX * WORKER_ANSWER_MAX, len(answer)

    # Deleting a worker frees its place; a trusted account may run more (AI Horde: 20).
    deleted = await mine.call("DELETE", f"/v2/workers/{listed[0]['id']}")
    assert deleted.status == 200
    assert (await workers[-1].pop()).status == 200
    trusted = await coordinator.create_account("trusted")
    async with coordinator.broker.services.database.transaction() as tx:
        await tx.set_account_trusted(trusted.id, True)
    for index in range(UNTRUSTED_WORKERS_MAX + 2):
        assert (await node(coordinator, trusted, f"t{index}").pop()).status == 200


async def test_new_worker_names_racing_never_pass_the_cap(coordinator: RunningCoordinator) -> None:
    import asyncio

    owner = await coordinator.create_account("owner")
    replies = await asyncio.gather(*(node(coordinator, owner, f"racer-{i}").pop() for i in range(8)))
    assert sorted(reply.status for reply in replies) == [200] * 3 + [403] * 5
    assert await count(coordinator, "workers") == UNTRUSTED_WORKERS_MAX


def noise_png(side: int) -> bytes:
    """An image that does not compress: its size is its pixel count."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_an_inline_status_stays_under_its_bound_and_links_the_rest(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    anonymous = Api(coordinator.url)
    body = {**small(n=4, width=384, height=384), "r2": False}
    request_id = (await anonymous.post("/v2/generate/async", body)).body["id"]
    popped = await pop_job(worker, amount=4)
    made: dict[str, bytes] = {}
    for index, job_id in enumerate(popped.body["ids"]):
        made[job_id] = noise_png(384)
        seed = popped.body["jobs"][index]["document"]["payload"]["seed"]
        submitted = await worker.submit(job_id, seed, image=made[job_id])
        assert submitted.status == 200, submitted.body
    assert sum(len(base64.b64encode(image)) for image in made.values()) > INLINE_BYTES_MAX

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{coordinator.url}/api/v2/generate/status/{request_id}?provenance=1") as response:
            answer = await response.read()
        status = json.loads(answer)
        assert len(status["generations"]) == 4
        inline = [g for g in status["generations"] if not g["img"].startswith("http")]
        linked = [g for g in status["generations"] if g["img"].startswith("http")]
        assert 1 <= len(inline) < 4 and linked
        assert sum(len(g["img"]) for g in inline) <= INLINE_BYTES_MAX
        assert len(answer) <= INLINE_BYTES_MAX + 64 * 1024
        for generation in inline:
            assert base64.b64decode(generation["img"]) == made[generation["id"]]
        for generation in linked:
            async with session.get(generation["img"]) as response:
                data = await response.read()
            assert data == made[generation["id"]]
            assert hashlib.sha256(data).hexdigest() == generation["image_sha256"]


@pytest.mark.parametrize("amount", ["5", True, "5.0", None, [5], {"value": 5}])
async def test_a_transfer_amount_must_be_a_json_number(coordinator: RunningCoordinator, amount: Any) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    bob = await coordinator.create_account("bob")
    reply = await requester(coordinator, alice).post("/v2/kudos/transfer", {"username": "bob", "amount": amount})
    assert (reply.status, reply.rc) == (400, "ValidationError"), reply.body
    assert "amount" in reply.body["errors"]
    assert (await coordinator.account(alice.id)).kudos == 100 and (await coordinator.account(bob.id)).kudos == 0


async def test_an_idempotency_key_is_bounded_before_it_reaches_the_ledger(coordinator: RunningCoordinator) -> None:
    """The key becomes the transfer's public ledger reference: a 4 KB one would add 4 KB to the ledger."""
    alice = await coordinator.create_account("alice", kudos=100)
    bob = await coordinator.create_account("bob")
    api = requester(coordinator, alice)
    before = await count(coordinator, "ledger")
    body = {"username": "bob", "amount": 5}
    reply = await api.post("/v2/kudos/transfer", body, headers={"Idempotency-Key": "k" * 4000})
    assert (reply.status, reply.rc) == (400, "ValidationError"), reply.body
    assert "Idempotency-Key" in reply.body["errors"]
    assert await count(coordinator, "ledger") == before
    assert (await coordinator.account(alice.id)).kudos == 100 and (await coordinator.account(bob.id)).kudos == 0
    reply = await api.post("/v2/kudos/transfer", body, headers={"Idempotency-Key": "k" * 100})
    assert reply.status == 200 and (await coordinator.account(bob.id)).kudos == 5, reply.body


async def test_a_transfer_to_name_and_id_must_match_both(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    bob = await coordinator.create_account("bob")
    carol = await coordinator.create_account("carol")
    api = requester(coordinator, alice)
    for username in (f"bob#{carol.id}", f"carol#{bob.id}", "bob#999999", "bob#x", f"bob#{bob.id}#{bob.id}"):
        reply = await api.post("/v2/kudos/transfer", {"username": username, "amount": 5})
        assert (reply.status, reply.rc) == (404, "UserNotFound"), (username, reply.body)
        assert username in reply.body["message"]
    assert (await coordinator.account(alice.id)).kudos == 100
    assert (await coordinator.account(bob.id)).kudos == 0 and (await coordinator.account(carol.id)).kudos == 0
    for username in (f"bob#{bob.id}", f"BOB#{bob.id}", "bob"):
        reply = await api.post("/v2/kudos/transfer", {"username": username, "amount": 5})
        assert reply.status == 200 and reply.body == {"transferred": 5}, reply.body
    assert (await coordinator.account(bob.id)).kudos == 15 and (await coordinator.account(carol.id)).kudos == 0
    assert (await coordinator.broker.bank.audit()).ok


OVER = NAME_MAX + 1

# (path, body) pairs with one field one step past its bound; every one is a 400 that stores nothing.
OVERSIZED = {
    "request models": ("/v2/generate/async", {**small(), "models": ["m"] * (REQUEST_MODELS_MAX + 1)}),
    "request model name": ("/v2/generate/async", {**small(), "models": ["m" * OVER]}),
    "request worker name": ("/v2/generate/async", {**small(), "workers": ["w" * OVER]}),
    "request workers": ("/v2/generate/async", {**small(), "workers": ["w"] * 21}),
    "post-processor name": ("/v2/generate/async", {**small(post_processing=["p" * 65])}),
    "pop model name": ("/v2/generate/pop", {"name": "n", "models": ["m" * OVER]}),
    "pop models": ("/v2/generate/pop", {"name": "n", "models": ["m"] * (POP_MODELS_MAX + 1)}),
    "pop blacklist": ("/v2/generate/pop", {"name": "n", "blacklist": ["b"] * 201}),
    "pop blacklist word": ("/v2/generate/pop", {"name": "n", "blacklist": ["b" * OVER]}),
    "pop priority usernames": ("/v2/generate/pop", {"name": "n", "priority_usernames": ["u"] * 101}),
    "pop priority username": ("/v2/generate/pop", {"name": "n", "priority_usernames": ["u" * OVER]}),
    "pop bridge agent": ("/v2/generate/pop", {"name": "n", "bridge_agent": "b" * 1001}),
    "submit seed": ("/v2/generate/submit", {"id": "j", "seed": "1" * 257}),
    "submit signature": ("/v2/generate/submit", {"id": "j", "signature": "s" * 1025}),
    "submit metadata": ("/v2/generate/submit", {"id": "j", "gen_metadata": [{"type": "t", "value": "v"}] * 33}),
    "submit metadata value": ("/v2/generate/submit", {"id": "j", "gen_metadata": [{"type": "t", "value": "v" * 256}]}),
    "transfer username": ("/v2/kudos/transfer", {"username": "u" * OVER, "amount": 1}),
    "account public key": ("/v2/accounts", {"username": "someone", "public_key": "k" * 201}),
}


@pytest.mark.parametrize("case", sorted(OVERSIZED))
async def test_every_list_and_string_has_a_bound(coordinator: RunningCoordinator, case: str) -> None:
    path, body = OVERSIZED[case]
    owner = await coordinator.create_account("owner", kudos=10)
    before = {table: await count(coordinator, table) for table in ("requests", "workers", "accounts", "ledger")}
    reply = await requester(coordinator, owner).post(path, body)
    assert (reply.status, reply.rc) == (400, "ValidationError"), (case, reply.status, reply.body)
    assert before == {table: await count(coordinator, table) for table in before}
