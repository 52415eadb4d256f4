"""Balances are counted in exact hundredths everywhere: the cached balance (an integer column since
migration 015), the ledger's sums and the audit, on both engines. Float arithmetic would disagree
with the ledger in each case below."""

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from coordinator.storage.base import Database
from coordinator.storage.migrations import migration_scripts
from coordinator.storage.postgres import PostgresDatabase
from coordinator.storage.sqlite import SqliteDatabase
from protocol.ledger import LedgerEntry, balance_hundredths, balances, hundredths, round_kudos
from tests.api_support import execute, fetch_all, requester
from tests.conftest import POSTGRES_DSN, RunningCoordinator
from tests.helpers import Api

# A balance where a float's last bit is about 1/80 of a hundredth: adding 0.01 a thousand times in floats
# drifts by a whole hundredth (each addition rounds the same way), while the ledger's sum does not.
BIG = 1_000_000_000_000.0


# The integer column's migration (015) and the float balances written before it, as the old arithmetic left
# them: the float nearest each exact balance, and one a float sum had drifted off (0.1 + 0.2).
BALANCES_MIGRATION = 15
OLD_BALANCES = {"small": 1.0, "drifted": 0.1 + 0.2, "big": BIG + 0.01, "odd": 87.65, "none": 0.0}
MIGRATED = {"small": 100, "drifted": 30, "big": 100_000_000_000_001, "odd": 8765, "none": 0}


async def cached_column(coordinator: RunningCoordinator, account_id: int) -> int:
    rows = await fetch_all(coordinator, "SELECT kudos_hundredths FROM accounts WHERE id = ?", account_id)
    return rows[0]["kudos_hundredths"]


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
    assert await cached_column(coordinator, small.id) == 100

    rich = await coordinator.create_account("rich", kudos=BIG)
    async with coordinator.broker.services.database.transaction() as tx:
        for index in range(1000):
            await tx.move_kudos("admin", None, rich.id, 0.01, f"cent {index}", 1.0)
    assert await cached_column(coordinator, rich.id) == hundredths(BIG) + 1000
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
    off = hundredths(BIG + 0.02)
    await execute(coordinator, "UPDATE accounts SET kudos_hundredths = ? WHERE id = ?", off, alice.id)
    report = await coordinator.broker.bank.audit()
    assert not report.ok
    assert report.problems == [f"account {alice.id}: cached balance {BIG + 0.02} but the ledger says {BIG + 0.01}"]


def test_hundredths_read_the_decimal_text() -> None:
    assert hundredths(0.1) == 10 and hundredths(0.29) == 29 and hundredths(12.345) == 1235 and hundredths(0.125) == 13
    assert hundredths(BIG + 0.01) == 100_000_000_000_001
    assert round_kudos(0.1 + 0.2) == 0.3 and round_kudos(12.345678) == 12.35


def old_accounts() -> list[tuple[str, str, float]]:
    return [(name, f"hash-{name}", kudos) for name, kudos in OLD_BALANCES.items()]


async def migrated_balances(database: Database) -> dict[str, int]:
    await database.open()
    try:
        async with database.reader() as tx:
            cached = await tx.cached_hundredths()
            accounts = {name: await tx.account_by("username", name) for name in OLD_BALANCES}
    finally:
        await database.close()
    assert {name: account.kudos for name, account in accounts.items() if account} == {
        name: count / 100 for name, count in MIGRATED.items()
    }
    return {name: cached[account.id] for name, account in accounts.items() if account}


async def test_sqlite_balances_migrate_to_exact_hundredths(tmp_path: Path) -> None:
    path = tmp_path / "horde.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        for version, script in migration_scripts("sqlite"):
            if version < BALANCES_MIGRATION:
                connection.executescript(script)
                connection.execute("INSERT INTO schema_version VALUES (?)", (version,))
        connection.executemany(
            "INSERT INTO accounts (username, apikey_hash, kudos, created) VALUES (?, ?, ?, 0)", old_accounts()
        )
    connection.close()
    assert await migrated_balances(SqliteDatabase(path)) == MIGRATED


async def test_postgres_balances_migrate_to_exact_hundredths() -> None:
    if not POSTGRES_DSN:
        pytest.skip("set HORDE_TEST_POSTGRES_DSN")
    from tests.pg import fresh_database

    async with fresh_database(POSTGRES_DSN) as url:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
            for version, script in migration_scripts("postgresql"):
                if version < BALANCES_MIGRATION:
                    await connection.execute(script)
                    await connection.execute("INSERT INTO schema_version VALUES ($1)", version)
            await connection.executemany(
                "INSERT INTO accounts (username, apikey_hash, kudos, created) VALUES ($1, $2, $3, 0)", old_accounts()
            )
        finally:
            await connection.close()
        assert await migrated_balances(PostgresDatabase(url)) == MIGRATED
