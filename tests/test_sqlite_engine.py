"""The embedded engine's own housekeeping: its WAL stays bounded under a sustained burst of writes."""

import sqlite3
from pathlib import Path

import pytest

from coordinator.storage import sqlite as engine
from coordinator.storage.sqlite import SqliteDatabase


async def test_the_wal_is_cut_back_after_a_burst_outgrows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "WAL_SIZE_LIMIT", 256 * 1024)
    database = SqliteDatabase(tmp_path / "horde.db")
    await database.open()
    wal = tmp_path / "horde.db-wal"
    checkpointer = sqlite3.connect(tmp_path / "horde.db", isolation_level=None)
    try:
        for index in range(200):  # ~1 MB of WAL: no checkpoint has run
            async with database.transaction() as tx:
                await tx.create_account(f"user{index}", f"hash{index}" * 20, None, 0.0)
        assert wal.stat().st_size > 4 * engine.WAL_SIZE_LIMIT
        engine._checkpoint(checkpointer)
        async with database.transaction() as tx:  # the first write after the checkpoint starts the WAL over
            await tx.create_account("after", "hash-after", None, 0.0)
        assert wal.stat().st_size <= engine.WAL_SIZE_LIMIT
        async with database.reader() as tx:
            assert (await tx.account_by("username", "user199")) is not None
            assert (await tx.account_by("username", "after")) is not None
    finally:
        checkpointer.close()
        await database.close()
