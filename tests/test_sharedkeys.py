"""Shared keys (/v2/sharedkeys) end to end, over real HTTP on both engines: a key spends its owner's
kudos within its limits and through the economy's rules (issue 11): prices reserved at submit, nothing
minted, the owner's own node paid only from the owner to the owner, and the key is good for requesting images only."""

import pytest

from coordinator.economy import spendable
from coordinator.sharing import key_left, shortfall
from coordinator.storage.sharedkeys import SharedKey
from protocol.kudos import image_kudos
from tests.api_support import MODEL, balance, generate, ledger_rows, node, pop_job, requester, seed_of, small
from tests.conftest import RunningCoordinator, TestAccount
from tests.helpers import Api, SimWorker

PRICE = image_kudos(width=64, height=64, steps=4)  # 2.9


async def new_key(coordinator: RunningCoordinator, owner: TestAccount, **settings: object) -> str:
    reply = await requester(coordinator, owner).call("PUT", "/v2/sharedkeys", {"kudos": 5, **settings})
    assert reply.status == 200, reply.body
    return reply.body["id"]


async def minted(coordinator: RunningCoordinator) -> float:
    rows = await ledger_rows(coordinator)
    made = sum(r["amount"] for r in rows if r["source"] is None and r["kind"] != "admin")
    burned = sum(r["amount"] for r in rows if r["target"] is None and r["kind"] != "admin")
    return round(made - burned, 2)


async def serve(worker: SimWorker) -> float:
    """Pop one job and deliver it; the reward the node's owner got."""
    popped = await pop_job(worker)
    reply = await worker.submit(popped.body["ids"][0], seed_of(popped))
    assert reply.status == 200, reply.body
    return float(reply.body["reward"])


async def test_a_shared_key_spends_its_owners_kudos_up_to_its_limit(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("lender", kudos=100)
    volunteer = await coordinator.create_account("volunteer")
    key = await new_key(coordinator, owner, name="for my bot")
    shown = await Api(coordinator.url).get(f"/v2/sharedkeys/{key}")  # whoever holds the id, no apikey
    assert shown.status == 200, shown.body
    assert {k: shown.body[k] for k in ("id", "username", "name", "kudos", "utilized", "expiry")} == {
        "id": key,
        "username": f"{owner.username}#{owner.id}",
        "name": "for my bot",
        "kudos": 5,
        "utilized": 0,
        "expiry": None,
    }
    holder = Api(coordinator.url, apikey=key)
    # Two images cost 5.8: more than the key's 5, refused before anything is queued or reserved.
    short = await holder.post("/v2/generate/async", small(n=2))
    assert (short.status, short.rc) == (403, "SharedKeyInsufficientKudos"), short.body
    await generate(holder, small())
    # The first image's price is reserved against the key: a second one now finds 2.1 left.
    second = await holder.post("/v2/generate/async", small())
    assert (second.status, second.rc) == (403, "SharedKeyInsufficientKudos"), second.body
    worker = node(coordinator, volunteer, "volunteer-node")
    assert await serve(worker) == PRICE
    assert await balance(coordinator, owner) == round(100 - PRICE, 2)
    assert await balance(coordinator, volunteer) == PRICE
    assert await minted(coordinator) == 0
    assert (await Api(coordinator.url).get(f"/v2/sharedkeys/{key}")).body["utilized"] == 3  # 2.9, rounded up
    # 2.1 left: a 2.9 image is refused; with allow_downgrade it is made unfunded, charged to nobody.
    downgraded = {**small(), "allow_downgrade": True}
    refused = await holder.post("/v2/generate/async", small())
    assert (refused.status, refused.rc) == (403, "SharedKeyInsufficientKudos"), refused.body
    await generate(holder, downgraded)
    await serve(worker)
    assert await balance(coordinator, owner) == round(100 - PRICE, 2)
    assert (await Api(coordinator.url).get(f"/v2/sharedkeys/{key}")).body["utilized"] == 3
    # allow_downgrade without a shared key is still refused by name: nothing to downgrade from.
    plain = await requester(coordinator, owner).post("/v2/generate/async", downgraded)
    assert (plain.status, plain.rc) == (400, "UnsupportedParameter"), plain.body


async def test_a_keys_owner_node_pays_itself_and_a_spent_key_is_refused(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("lender", kudos=100)
    key = await new_key(coordinator, owner, kudos=3)
    holder = Api(coordinator.url, apikey=key)
    await generate(holder, small())
    # The owner's own node serves the key's request: the owner's images, paid from the owner to the owner (issue 11).
    assert await serve(node(coordinator, owner, "lenders-node")) == PRICE
    assert await balance(coordinator, owner) == 100
    assert await minted(coordinator) == 0
    # The owner spent nothing, so the key is charged nothing and still has 3: one more image, reserved, then none.
    await generate(holder, small())
    empty = await holder.post("/v2/generate/async", small())
    assert (empty.status, empty.rc) == (403, "SharedKeyInsufficientKudos"), empty.body
    await serve(node(coordinator, await coordinator.create_account("other"), "other-node"))
    spent = await holder.post("/v2/generate/async", small())
    assert (spent.status, spent.rc) == (403, "SharedKeyInsufficientKudos") and "0.1 left" in spent.body["message"]
    empty_key = await new_key(coordinator, owner, kudos=0)
    nothing = await Api(coordinator.url, apikey=empty_key).post("/v2/generate/async", small())
    assert (nothing.status, nothing.rc) == (403, "SharedKeyEmpty"), nothing.body


@pytest.mark.parametrize(
    ("settings", "params", "rc"),
    [
        ({"max_image_pixels": 64 * 64}, {"width": 128}, "SharedKeyLimit"),
        ({"max_image_steps": 4}, {"steps": 5}, "SharedKeyLimit"),
        ({"expiry": 0}, {}, "SharedKeyExpired"),  # 0 days: expired from the start
    ],
)
async def test_a_key_refuses_what_its_limits_exclude(
    coordinator: RunningCoordinator, settings: dict[str, int], params: dict[str, int], rc: str
) -> None:
    owner = await coordinator.create_account("lender", kudos=100)
    key = await new_key(coordinator, owner, kudos=-1, **settings)
    reply = await Api(coordinator.url, apikey=key).post("/v2/generate/async", small(**params))
    assert (reply.status, reply.rc) == (403, rc), reply.body
    if settings.get("expiry") != 0:
        within = await Api(coordinator.url, apikey=key).post("/v2/generate/async", small())
        assert within.status == 202, within.body


async def test_a_key_requests_and_cancels_images_and_nothing_else(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("lender", kudos=100)
    key = await new_key(coordinator, owner)
    holder = Api(coordinator.url, apikey=key)
    request_id = await generate(holder, small())
    cancelled = await holder.call("DELETE", f"/v2/generate/status/{request_id}")
    assert cancelled.status == 200 and cancelled.body["cancelled"], cancelled.body
    for method, path, body in [
        ("POST", "/v2/kudos/transfer", {"username": "someone", "amount": 10}),
        ("GET", "/v2/find_user", None),
        ("PUT", "/v2/sharedkeys", {"kudos": 100}),
        ("DELETE", f"/v2/sharedkeys/{key}", None),
        ("POST", "/v2/generate/pop", {"name": "n", "models": [MODEL]}),
    ]:
        reply = await holder.call(method, path, body)
        assert (reply.status, reply.rc) == (401, "InvalidAPIKey"), (path, reply.body)
    assert await balance(coordinator, owner) == 100


async def test_only_the_owner_changes_or_deletes_a_key(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("lender", kudos=100)
    stranger = await coordinator.create_account("stranger", kudos=100)
    key = await new_key(coordinator, owner)
    for method in ("PATCH", "DELETE"):
        reply = await requester(coordinator, stranger).call(method, f"/v2/sharedkeys/{key}", {"kudos": 999})
        assert (reply.status, reply.rc) == (403, "NotOwner"), reply.body
    patched = await requester(coordinator, owner).call("PATCH", f"/v2/sharedkeys/{key}", {"kudos": 10, "expiry": 2})
    assert patched.status == 200 and patched.body["kudos"] == 10 and patched.body["expiry"], patched.body
    assert patched.body["name"] is None  # unchanged: only what was sent
    assert (await Api(coordinator.url, apikey=key).post("/v2/generate/async", small(n=3))).status == 202
    deleted = await requester(coordinator, owner).call("DELETE", f"/v2/sharedkeys/{key}")
    assert deleted.status == 200 and deleted.body == {"message": "OK"}
    gone = await Api(coordinator.url, apikey=key).post("/v2/generate/async", small())
    assert (gone.status, gone.rc) == (401, "InvalidAPIKey"), gone.body
    missing = await Api(coordinator.url).get(f"/v2/sharedkeys/{key}")
    assert (missing.status, missing.rc) == (404, "SharedKeyInvalid"), missing.body


async def test_key_settings_are_bounded(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("lender")
    api = requester(coordinator, owner)
    for bad in ({"kudos": -2}, {"max_image_steps": -5}, {"name": "x" * 256}, {"expiry": -3}):
        reply = await api.call("PUT", "/v2/sharedkeys", bad)
        assert (reply.status, reply.rc) == (400, "ValidationError"), reply.body
    anonymous = await Api(coordinator.url).call("PUT", "/v2/sharedkeys", {"kudos": 5})
    assert (anonymous.status, anonymous.rc) == (403, "AnonForbidden"), anonymous.body
    for _ in range(10):
        await new_key(coordinator, owner)
    eleventh = await api.call("PUT", "/v2/sharedkeys", {"kudos": 5})
    assert (eleventh.status, eleventh.rc) == (403, "Forbidden"), eleventh.body


def test_the_keys_rules_as_pure_functions() -> None:
    """`key_left`, `shortfall` and `economy.spendable`: what a key may still fund, and when it refuses."""
    key = SharedKey(key_hash="h", owner_id=1, created=0.0, kudos=10, expiry=None, utilized=4.0)
    assert key_left(key, reserved=2.5) == 3.5
    assert key_left(key, reserved=9.0) == 0.0  # never negative
    assert key_left(SharedKey(key_hash="h", owner_id=1, created=0.0, kudos=-1, expiry=None), 99.0) is None
    assert spendable(100.0, 3.5) == 3.5 and spendable(2.0, 3.5) == 2.0 and spendable(7.0, None) == 7.0
    assert shortfall(3.5, 3.5, downgrade=False) is None and shortfall(None, 1e9, downgrade=False) is None
    assert shortfall(3.4, 3.5, downgrade=False).rc == "SharedKeyInsufficientKudos"  # type: ignore[union-attr]
    assert shortfall(0.0, 3.5, downgrade=False).rc == "SharedKeyEmpty"  # type: ignore[union-attr]
    assert shortfall(0.0, 3.5, downgrade=True) is None
