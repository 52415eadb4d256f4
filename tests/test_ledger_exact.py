"""Balances are counted in exact hundredths everywhere: the cached balance, the ledger's sums and
the audit, on both engines. Float arithmetic would disagree with the ledger in each case below."""

from protocol.ledger import LedgerEntry, balance_hundredths, balances, hundredths, round_kudos
from tests.api_support import execute, fetch_all, requester
from tests.conftest import RunningCoordinator
from tests.helpers import Api

# A balance where a float's last bit is about 1/80 of a hundredth: adding 0.01 a thousand times in floats
# drifts by a whole hundredth (each addition rounds the same way), while the ledger's sum does not.
BIG = 1_000_000_000_000.0


async def cached_column(coordinator: RunningCoordinator, account_id: int) -> float:
    rows = await fetch_all(coordinator, "SELECT kudos FROM accounts WHERE id = ?", account_id)
    return rows[0]["kudos"]


async def public_ledger(coordinator: RunningCoordinator) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    after = 0
    while True:
        page = (await Api(coordinator.url).get(f"/v2/ledger?after={after}&limit=500")).body
        entries += [LedgerEntry(**entry) for entry in page["entries"]]
        if not page["entries"]:
            return entries
        after = entries[-1].seq


async def test_many_small_entries_keep_the_cached_balance_exact(coordinator: RunningCoordinator) -> None:
    small = await coordinator.create_account("small")
    for _ in range(10):
        await coordinator.grant(small.id, 0.1)
    # Ten float additions of 0.1 give 0.9999999999999999; the cache holds exactly the ledger's 1.0.
    assert await cached_column(coordinator, small.id) == 1.0

    rich = await coordinator.create_account("rich", kudos=BIG)
    async with coordinator.broker.services.database.transaction() as tx:
        for index in range(1000):
            await tx.move_kudos("admin", None, rich.id, 0.01, f"cent {index}", 1.0)
    assert await cached_column(coordinator, rich.id) == BIG + 10.0
    me = (await requester(coordinator, rich).get("/v2/find_user")).body
    assert me["kudos"] == BIG + 10.0

    entries = await public_ledger(coordinator)
    assert balances(entries)[rich.id] == BIG + 10.0
    assert balance_hundredths(entries)[small.id] == 100
    report = await coordinator.broker.bank.audit()
    assert report.ok, report.problems
    assert report.entries == len(entries) == 10 + 1 + 1000


async def test_the_audit_compares_whole_hundredths(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=BIG)
    await coordinator.grant(alice.id, 0.01)
    assert (await coordinator.broker.bank.audit()).ok
    # One hundredth off at a balance where floats can't tell 0.01 from nothing within 0.005 of drift.
    await execute(coordinator, "UPDATE accounts SET kudos = ? WHERE id = ?", BIG + 0.02, alice.id)
    report = await coordinator.broker.bank.audit()
    assert not report.ok
    assert report.problems == [f"account {alice.id}: cached balance {BIG + 0.02} but the ledger says {BIG + 0.01}"]


def test_hundredths_read_the_decimal_text() -> None:
    assert hundredths(0.1) == 10 and hundredths(0.29) == 29 and hundredths(12.345) == 1235 and hundredths(0.125) == 13
    assert hundredths(BIG + 0.01) == 100_000_000_000_001
    assert round_kudos(0.1 + 0.2) == 0.3 and round_kudos(12.345678) == 12.35
