"""Issue 11, cases 6 and 7: a captured signed request replayed after a restart, or to another network.

- Case 6: nonces are remembered by the database on every engine (SQLite too), so a signed transfer
  accepted before a restart is refused as a replay after it, within the `created` window.
- Case 7: the signature's `@target-uri` is checked against this coordinator's origin (its
  `public_url`, else the address the connection reached), never against the client's `Host`
  header; a request signed for another network is refused with its own rc and moves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from protocol.httpsig import UnknownKey, sign_request
from protocol.keys import Identity
from tests.api_support import balance, custom_coordinator, raw_call
from tests.conftest import RunningCoordinator, TestAccount, coordinator_config, start_coordinator

TRANSFER = "/v2/kudos/transfer"
WRONG_ORIGIN = "SignatureWrongOrigin"
OTHER_NETWORK = "other-network:7001"


async def keyed_account(
    coordinator: RunningCoordinator, username: str, kudos: float, origin: str | None = None
) -> tuple[Identity, TestAccount]:
    """An account that signs with its own key (registered with proof of possession, signed for
    `origin`, by default the address the coordinator listens on), funded."""
    identity = Identity.generate()
    body = json.dumps({"username": username, "public_key": identity.public_key.text()}).encode()
    headers = signed_for(identity, f"{origin or coordinator.url}/api/v2/accounts", body)
    reply = await raw_call(coordinator, "POST", "/v2/accounts", body, headers)
    assert reply.status == 200, reply.body
    await coordinator.grant(reply.body["id"], kudos)
    return identity, TestAccount(reply.body["id"], username, reply.body["apikey"])


def transfer_body(amount: float = 25) -> bytes:
    return json.dumps({"username": "bob", "amount": amount}).encode()


def signed_for(identity: Identity, url: str, body: bytes, **headers: str) -> dict[str, str]:
    return {"Content-Type": "application/json", **headers, **sign_request(identity, "POST", url, body)}


async def kudos(coordinator: RunningCoordinator, *accounts: TestAccount) -> list[float]:
    return [await balance(coordinator, account) for account in accounts]


async def assert_audit_passes(coordinator: RunningCoordinator) -> None:
    report = await coordinator.broker.bank.audit()
    assert report.ok, report.problems


# --- case 6: replay after a restart ------------------------------------------------------------------


async def test_a_transfer_replayed_after_a_restart_is_refused(tmp_path: Path, database_url: str | None) -> None:
    config = coordinator_config(tmp_path / "network", database_url)
    first = await start_coordinator(config)
    port = int(first.url.rsplit(":", 1)[1])
    try:
        alice_key, alice = await keyed_account(first, "alice", 100)
        bob = await first.create_account("bob")
        body = transfer_body()
        captured = signed_for(alice_key, f"{first.url}/api{TRANSFER}", body)
        accepted = await raw_call(first, "POST", TRANSFER, body, captured)
        assert (accepted.status, accepted.body) == (200, {"transferred": 25})
    finally:
        await first.stop()

    # Same data dir (or database), same address: the signature still verifies and is still fresh.
    second = await start_coordinator(config, port=port)
    try:
        assert second.url == first.url
        replay = await raw_call(second, "POST", TRANSFER, body, captured)
        assert (replay.status, replay.rc) == (401, "SignatureReplay"), replay.body
        assert await kudos(second, alice, bob) == [75, 25]
        # The key itself still works: a fresh signature (new nonce) of the same transfer goes through.
        again = signed_for(alice_key, f"{second.url}/api{TRANSFER}", body)
        fresh = await raw_call(second, "POST", TRANSFER, body, again)
        assert (fresh.status, fresh.body) == (200, {"transferred": 25})
        assert await kudos(second, alice, bob) == [50, 50]
        await assert_audit_passes(second)
    finally:
        await second.stop()


async def test_nonces_are_pruned_past_the_window_but_kept_within_it(coordinator: RunningCoordinator) -> None:
    """The nonce table does not grow forever: past twice the clock window a nonce is forgotten
    (its signature has long expired by then); within it, it is refused."""
    database = coordinator.broker.services.database
    assert await database.first_use("ed25519:k1", "n1", 1000.0, 300) is True
    assert await database.first_use("ed25519:k1", "n1", 1599.0, 300) is False  # inside 2 × window
    assert await database.first_use("ed25519:k2", "n1", 1599.0, 300) is True  # nonces are per key
    assert await database.first_use("ed25519:k1", "n1", 1000.0 + 601 + 60, 300) is True  # pruned, forgotten


async def test_a_key_nobody_holds_leaves_no_nonce_behind(coordinator: RunningCoordinator) -> None:
    """The apikey, the key's holder and the nonce are one question to the database (storage/callers.py), but
    the nonce is recorded only when the credentials name someone: a stranger signing with fresh keys cannot
    fill the table, and is told its key is unknown however often it sends the same request."""
    await coordinator.create_account("bob")
    stranger, body = Identity.generate(), transfer_body()
    headers = signed_for(stranger, f"{coordinator.url}/api{TRANSFER}", body)
    for _attempt in range(2):
        refused = await raw_call(coordinator, "POST", TRANSFER, body, headers)
        assert (refused.status, refused.body["rc"]) == (401, UnknownKey.rc), refused.body
    async with coordinator.broker.services.database.reader() as tx:
        rows = await tx.driver.fetchall(
            "SELECT nonce FROM signature_nonces WHERE signer = ?", (stranger.public_key.text(),)
        )
    assert rows == []


# --- case 7: a request signed for another network ----------------------------------------------------


async def test_a_request_signed_for_another_network_is_refused(coordinator: RunningCoordinator) -> None:
    alice_key, alice = await keyed_account(coordinator, "alice", 100)
    bob = await coordinator.create_account("bob")
    body = transfer_body()
    # Captured on network B (http://other-network:7001) and sent to us with B's Host header, so a
    # target URI rebuilt from Host would match what was signed.
    foreign = signed_for(alice_key, f"http://{OTHER_NETWORK}/api{TRANSFER}", body, Host=OTHER_NETWORK)
    refused = await raw_call(coordinator, "POST", TRANSFER, body, foreign)
    assert (refused.status, refused.rc) == (401, WRONG_ORIGIN), refused.body
    assert coordinator.url in refused.body["message"]  # says which origin to sign for
    assert await kudos(coordinator, alice, bob) == [100, 0]

    # Signed for our own origin, the Host header does not matter: whatever it claims, it passes.
    ours = signed_for(alice_key, f"{coordinator.url}/api{TRANSFER}", body, Host=OTHER_NETWORK)
    accepted = await raw_call(coordinator, "POST", TRANSFER, body, ours)
    assert (accepted.status, accepted.body) == (200, {"transferred": 25})
    assert await kudos(coordinator, alice, bob) == [75, 25]
    await assert_audit_passes(coordinator)


async def test_with_a_public_url_only_that_origin_verifies(tmp_path: Path, database_url: str | None) -> None:
    public_url = "https://horde.example.org"
    async with custom_coordinator(tmp_path, database_url, public_url=public_url) as running:
        alice_key, alice = await keyed_account(running, "alice", 100, public_url)
        bob = await running.create_account("bob")
        body = transfer_body()
        # The bound address is not the public origin: a signature for it is another origin's.
        direct = signed_for(alice_key, f"{running.url}/api{TRANSFER}", body)
        refused = await raw_call(running, "POST", TRANSFER, body, direct)
        assert (refused.status, refused.rc) == (401, WRONG_ORIGIN), refused.body
        assert public_url in refused.body["message"]
        assert await kudos(running, alice, bob) == [100, 0]
        public = signed_for(alice_key, f"{public_url}/api{TRANSFER}", body)
        accepted = await raw_call(running, "POST", TRANSFER, body, public)
        assert (accepted.status, accepted.body) == (200, {"transferred": 25})
        assert await kudos(running, alice, bob) == [75, 25]


async def test_a_tampered_signature_is_still_invalid_not_a_wrong_origin(coordinator: RunningCoordinator) -> None:
    """Only a signature that verifies for another origin is called a wrong origin; anything else
    that fails stays InvalidSignature."""
    alice_key, alice = await keyed_account(coordinator, "alice", 100)
    await coordinator.create_account("bob")
    body = transfer_body()
    headers = signed_for(alice_key, f"{coordinator.url}/api/v2/find_user", body)
    refused = await raw_call(coordinator, "POST", TRANSFER, body, headers)
    assert (refused.status, refused.rc) == (401, "InvalidSignature"), refused.body
    assert await balance(coordinator, alice) == 100


async def test_localhost_names_the_loopback_origin_and_nothing_else(coordinator: RunningCoordinator) -> None:
    """`localhost` is the loopback address under another name: a client that dialled it may sign it.
    The Host header only chooses between our own spellings; it cannot name another origin."""
    alice_key, alice = await keyed_account(coordinator, "alice", 100)
    bob = await coordinator.create_account("bob")
    port = coordinator.url.rsplit(":", 1)[1]
    body = transfer_body()
    by_name = signed_for(alice_key, f"http://localhost:{port}/api{TRANSFER}", body, Host=f"localhost:{port}")
    accepted = await raw_call(coordinator, "POST", TRANSFER, body, by_name)
    assert (accepted.status, accepted.body) == (200, {"transferred": 25})
    elsewhere = signed_for(alice_key, f"http://localhost:1/api{TRANSFER}", body, Host="localhost:1")
    refused = await raw_call(coordinator, "POST", TRANSFER, body, elsewhere)
    assert (refused.status, refused.rc) == (401, WRONG_ORIGIN), refused.body
    assert await kudos(coordinator, alice, bob) == [75, 25]
