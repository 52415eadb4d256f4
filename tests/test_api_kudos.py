"""Kudos end to end: charges and rewards, transfers, upfront kudos, the public ledger and its audit."""

import asyncio
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.keys import PublicKey
from protocol.kudos import image_kudos
from protocol.ledger import LedgerEntry, LedgerHead, balances, verify_chain, verify_head
from tests.api_support import (
    RequesterAndNode,
    balance,
    custom_coordinator,
    execute,
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
from tests.helpers import Api, FakeClock

PRICE = image_kudos(width=64, height=64, steps=4)


async def test_charges_and_rewards_per_delivered_image(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    alice, api, owner, worker = pair
    request_id = await generate(api, small(n=3))
    first = await worker.serve_one()
    assert first.body["reward"] == PRICE
    assert await balance(coordinator, alice) == pytest.approx(100 - PRICE)
    assert await balance(coordinator, owner) == pytest.approx(PRICE)
    # One image faults (requeued, then made); the third is cancelled before anyone makes it.
    popped = await pop_job(worker)
    assert (await worker.submit(popped.body["ids"][0], seed_of(popped), state="faulted")).body["reward"] == 0
    await worker.serve_one()
    cancelled = await api.call("DELETE", f"/v2/generate/status/{request_id}")
    assert cancelled.status == 200
    assert cancelled.body["finished"] == 2 and cancelled.body["kudos"] == pytest.approx(2 * PRICE)
    assert await balance(coordinator, alice) == pytest.approx(100 - 2 * PRICE)
    assert await balance(coordinator, owner) == pytest.approx(2 * PRICE)
    spends = [r for r in await ledger_rows(coordinator) if r["kind"] == "spend"]
    rewards = [r for r in await ledger_rows(coordinator) if r["kind"] == "reward"]
    assert [(r["source"], r["target"], r["amount"]) for r in spends] == [(alice.id, None, PRICE)] * 2
    assert [(r["source"], r["target"], r["amount"]) for r in rewards] == [(None, owner.id, PRICE)] * 2
    assert {r["reference"] for r in spends} == {r["reference"] for r in rewards}  # one pair per image
    assert (await coordinator.broker.bank.audit()).ok


async def test_find_user_and_user_details(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=12.5)
    me = await requester(coordinator, alice).get("/v2/find_user")
    assert me.status == 200
    assert me.body["username"] == f"alice#{alice.id}" and me.body["kudos"] == 12.5 and me.body["id"] == alice.id
    public = await Api(coordinator.url).get(f"/v2/users/{alice.id}")
    assert public.body["username"] == f"alice#{alice.id}"
    missing = await Api(coordinator.url).get("/v2/users/99999")
    assert missing.status == 404 and missing.rc == "UserNotFound"
    anonymous = await Api(coordinator.url).get("/v2/find_user")
    assert anonymous.status == 403


async def test_transfers_and_their_refusals(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=50)
    bob = await coordinator.create_account("bob")
    api = requester(coordinator, alice)
    sent = await api.post("/v2/kudos/transfer", {"username": f"bob#{bob.id}", "amount": 20})
    assert sent.status == 200 and sent.body == {"transferred": 20}
    assert (await balance(coordinator, alice), await balance(coordinator, bob)) == (30, 20)

    before = await snapshot(coordinator)
    to_self = await api.post("/v2/kudos/transfer", {"username": "alice", "amount": 1})
    assert to_self.status == 400 and to_self.rc == "KudosTransferToSelf"
    too_much = await api.post("/v2/kudos/transfer", {"username": "bob", "amount": 30.01})
    assert too_much.status == 400 and too_much.rc == "KudosTransferNotEnough"
    unknown = await api.post("/v2/kudos/transfer", {"username": "nobody", "amount": 1})
    assert unknown.status == 404 and unknown.rc == "UserNotFound"
    anonymous = await Api(coordinator.url).post("/v2/kudos/transfer", {"username": "bob", "amount": 1})
    assert anonymous.status == 403 and anonymous.rc == "KudosTransferToAnon"
    for amount in (0, -5, "lots"):
        bad = await api.post("/v2/kudos/transfer", {"username": "bob", "amount": amount})
        assert bad.status == 400, amount
    assert await snapshot(coordinator) == before
    assert (await balance(coordinator, alice), await balance(coordinator, bob)) == (30, 20)


async def test_transfer_below_a_hundredth_is_refused_not_a_crash(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=50)
    await coordinator.create_account("bob")
    before = await snapshot(coordinator)
    reply = await requester(coordinator, alice).post("/v2/kudos/transfer", {"username": "bob", "amount": 0.001})
    assert reply.status == 400, reply.body
    assert await snapshot(coordinator) == before


async def test_idempotent_transfer_is_applied_once(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=50)
    bob = await coordinator.create_account("bob")
    api = requester(coordinator, alice)
    headers = {"Idempotency-Key": "payment-42"}
    replies = [
        await api.post("/v2/kudos/transfer", {"username": "bob", "amount": 10}, headers=headers) for _ in range(3)
    ]
    assert [r.body for r in replies] == [{"transferred": 10}] * 3
    assert (await balance(coordinator, alice), await balance(coordinator, bob)) == (40, 10)
    transfers = [r for r in await ledger_rows(coordinator) if r["kind"] == "transfer"]
    assert [r["reference"] for r in transfers] == ["transfer:payment-42"]  # the key is the public reference
    # Replayed concurrently, still once; a new key is a new transfer.
    concurrent = await asyncio.gather(
        *(
            api.post("/v2/kudos/transfer", {"username": "bob", "amount": 5}, headers={"Idempotency-Key": "payment-43"})
            for _ in range(5)
        )
    )
    assert all(r.status == 200 for r in concurrent)
    assert (await balance(coordinator, alice), await balance(coordinator, bob)) == (35, 15)
    # The same key from another account is that account's own key.
    bob_api = requester(coordinator, bob)
    back = await bob_api.post("/v2/kudos/transfer", {"username": "alice", "amount": 1}, headers=headers)
    assert back.status == 200
    assert (await balance(coordinator, alice), await balance(coordinator, bob)) == (36, 14)
    # Without a key each transfer gets a reference of its own; a one-letter key is a key.
    for key in (None, None, "z"):
        sent = await api.post(
            "/v2/kudos/transfer", {"username": "bob", "amount": 1}, headers={"Idempotency-Key": key} if key else None
        )
        assert sent.status == 200, sent.body
    references = [r["reference"] for r in await ledger_rows(coordinator) if r["kind"] == "transfer"][-3:]
    assert all(re.fullmatch(r"transfer:[0-9a-f-]{36}", ref) for ref in references[:2]), references
    assert references[0] != references[1] and references[2] == "transfer:z"


async def test_concurrent_transfers_never_overdraw(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    bob = await coordinator.create_account("bob")
    carol = await coordinator.create_account("carol")
    api = requester(coordinator, alice)
    replies = await asyncio.gather(
        *(api.post("/v2/kudos/transfer", {"username": "bob" if i % 2 else "carol", "amount": 10}) for i in range(20))
    )
    assert sorted(r.status for r in replies) == [200] * 10 + [400] * 10
    assert {r.rc for r in replies if r.status == 400} == {"KudosTransferNotEnough"}
    assert await balance(coordinator, alice) == 0
    assert await balance(coordinator, bob) + await balance(coordinator, carol) == 100
    entries = [LedgerEntry(**row) for row in await ledger_rows(coordinator)]
    derived = balances(entries)
    for account in (alice, bob, carol):
        assert derived.get(account.id, 0) == pytest.approx(await balance(coordinator, account))
    assert (await coordinator.broker.bank.audit()).ok


async def test_big_requests_need_kudos_up_front(coordinator: RunningCoordinator) -> None:
    poor = await coordinator.create_account("poor", kudos=5)
    before = await snapshot(coordinator)
    for params in ({"steps": 51}, {"width": 1088, "height": 1024}):
        body = {"prompt": "big", "params": params}
        refused = await requester(coordinator, poor).post("/v2/generate/async", body)
        assert refused.status == 403 and refused.rc == "KudosUpfront", params
        anonymous = await Api(coordinator.url).post("/v2/generate/async", body)
        assert anonymous.status == 403 and anonymous.rc == "KudosUpfront"
    assert await snapshot(coordinator) == before
    rich = await coordinator.create_account("rich", kudos=1000)
    accepted = await requester(coordinator, rich).post("/v2/generate/async", {"prompt": "big", "params": {"steps": 51}})
    assert accepted.status == 202


async def test_ledger_pages_and_signed_head(coordinator: RunningCoordinator) -> None:
    accounts = [await coordinator.create_account(f"user{i}", kudos=10 + i) for i in range(5)]
    api = Api(coordinator.url)
    first = await api.get("/v2/ledger?after=0&limit=2")
    assert first.status == 200
    assert [e["seq"] for e in first.body["entries"]] == [1, 2] and first.body["next_after"] == 2
    collected, after = [], 0
    while after is not None:
        page = await api.get(f"/v2/ledger?after={after}&limit=2")
        collected += page.body["entries"]
        after = page.body["next_after"]
    assert [e["seq"] for e in collected] == [1, 2, 3, 4, 5]
    entries = [LedgerEntry(**e) for e in collected]
    assert [(e.target, e.amount) for e in entries] == [(a.id, 10 + i) for i, a in enumerate(accounts)]
    chain = verify_chain(entries)
    assert chain.ok

    head = LedgerHead(**(await api.get("/v2/ledger/head")).body)
    info = await api.get("/v2/coordinator")
    pinned = PublicKey.from_text(info.body["public_key"])
    assert verify_head(head, pinned)
    assert (head.seq, head.hash) == (chain.head_seq, chain.head_hash)
    forged = head.model_copy(update={"seq": head.seq + 1})
    assert not verify_head(forged, pinned)
    empty = await api.get("/v2/ledger?after=5")
    assert empty.body == {"entries": [], "next_after": None}


async def test_audit_passes_then_catches_an_edited_ledger_row(
    coordinator: RunningCoordinator, database_url: str | None
) -> None:
    alice = await coordinator.create_account("alice", kudos=10)
    for i in range(3):
        await coordinator.create_account(f"user{i}", kudos=10)
    await requester(coordinator, alice).post("/v2/kudos/transfer", {"username": "user0", "amount": 3})
    assert (await coordinator.broker.bank.audit()).ok
    command = [sys.executable, "-m", "coordinator.cli", "--data-dir", str(coordinator.data_dir)]
    command += ["--db", database_url] if database_url else []
    honest = await asyncio.to_thread(subprocess.run, [*command, "audit"], capture_output=True, text=True, timeout=60)
    assert honest.returncode == 0, honest.stdout + honest.stderr
    assert "ledger OK" in honest.stdout

    # Someone with write access to the database edits an old entry's amount.
    if database_url is None:
        with sqlite3.connect(coordinator.config.database_url) as db:
            db.execute("UPDATE ledger SET amount = 1000 WHERE seq = 3")
    else:
        import asyncpg

        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute("UPDATE ledger SET amount = 1000 WHERE seq = 3")
        finally:
            await connection.close()
    report = await coordinator.broker.bank.audit()
    assert not report.ok
    assert any("seq 3" in problem for problem in report.problems), report.problems
    edited = await asyncio.to_thread(subprocess.run, [*command, "audit"], capture_output=True, text=True, timeout=60)
    assert edited.returncode == 1, edited.stdout + edited.stderr
    assert "ledger FAILED" in edited.stdout and "seq 3" in edited.stdout
    # The public copy of the ledger shows the break to anyone who re-walks it.
    entries = [LedgerEntry(**e) for e in (await Api(coordinator.url).get("/v2/ledger")).body["entries"]]
    assert not verify_chain(entries).ok


async def test_audit_catches_a_cached_balance_the_ledger_does_not_back(coordinator: RunningCoordinator) -> None:
    """The chain itself intact, but an account's cached balance edited behind the ledger's back: the audit's
    second half (cached balances against the ledger's sums) must name that account, and only it."""
    alice = await coordinator.create_account("alice", kudos=10)
    bob = await coordinator.create_account("bob", kudos=10)
    await requester(coordinator, alice).post("/v2/kudos/transfer", {"username": "bob", "amount": 3})
    honest = await coordinator.broker.bank.audit()
    assert honest.ok and (honest.entries, honest.head_seq) == (3, 3)  # two grants and the transfer
    assert honest.head_hash == (await ledger_rows(coordinator))[-1]["hash"]
    assert (
        await execute(
            coordinator, "UPDATE accounts SET kudos_hundredths = kudos_hundredths + 50000 WHERE id = ?", bob.id
        )
        == 1
    )
    assert (
        await execute(coordinator, "UPDATE accounts SET kudos_hundredths = kudos_hundredths - 1 WHERE id = ?", alice.id)
        == 1
    )
    report = await coordinator.broker.bank.audit()
    assert not report.ok
    assert sorted(report.problems) == sorted(
        [
            f"account {bob.id}: cached balance 513.0 but the ledger says 13.0",
            f"account {alice.id}: cached balance 6.99 but the ledger says 7.0",
        ]
    )


async def test_uptime_kudos_pay_an_online_nodes_owner_every_ten_minutes(
    tmp_path: Path, database_url: str | None
) -> None:
    """tests/conftest.py turns uptime kudos off for every other test (they would move balances under them):
    here they are on. A node seen lately earns its owner the configured amount per 10 minutes, once; a node
    that stopped popping earns nothing. Upkeep rounds are run here, by hand (two at once, as two processes
    sharing a database do), not by the coordinator's timer."""
    async with custom_coordinator(
        tmp_path, database_url, uptime_kudos_per_10_minutes=50, maintenance_interval=3600
    ) as coordinator:
        clock = FakeClock(time.time())
        coordinator.broker.services.clock = clock
        owner, absent = await coordinator.create_account("owner"), await coordinator.create_account("absent")
        stayer, leaver = node(coordinator, owner, "stayer"), node(coordinator, absent, "leaver")
        assert (await stayer.pop()).status == (await leaver.pop()).status == 200
        start = clock.now
        clock.now = start + 1
        await coordinator.broker.upkeep.pay_uptime()  # first seen: the period starts now
        clock.now = start + 400
        assert (await stayer.pop()).status == 200  # still here; `leaver` was last seen 400 s ago
        clock.now = start + 601
        upkeep = coordinator.broker.upkeep
        await asyncio.gather(upkeep.pay_uptime(), upkeep.pay_uptime())  # each period is paid once
        await upkeep.pay_uptime()
        assert (await balance(coordinator, owner), await balance(coordinator, absent)) == (50, 0)
        [entry] = [row for row in await ledger_rows(coordinator) if row["kind"] == "uptime"]
        stayer_id = (await fetch_one(coordinator, "SELECT id FROM workers WHERE name = 'stayer'") or {})["id"]
        assert (entry["source"], entry["target"], entry["amount"]) == (None, owner.id, 50)
        assert entry["reference"] == f"uptime:{stayer_id}"
        details = await Api(coordinator.url).get(f"/v2/workers/{stayer_id}")
        assert details.body["uptime"] == 600, details.body
        assert (await coordinator.broker.bank.audit()).ok


async def test_an_accounts_recent_ledger_entries_newest_first(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=50)
    bob = await coordinator.create_account("bob", kudos=5)
    api = requester(coordinator, alice)
    assert (await api.post("/v2/kudos/transfer", {"username": "bob", "amount": 7})).status == 200
    answer = await Api(coordinator.url).get(f"/v2/users/{alice.id}/ledger?limit=5")
    assert answer.status == 200, answer.body
    entries = [LedgerEntry(**entry) for entry in answer.body["entries"]]
    assert [entry.kind for entry in entries] == ["transfer", "admin"]
    assert entries[0].source == alice.id and entries[0].target == bob.id and entries[0].amount == 7
    assert all(alice.id in (entry.source, entry.target) for entry in entries)
    missing = await Api(coordinator.url).get("/v2/users/999999/ledger")
    assert (missing.status, missing.rc) == (404, "UserNotFound")
