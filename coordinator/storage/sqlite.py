"""The embedded engine: one SQLite file in WAL mode.

One connection writes (transactions are serialized by an asyncio lock, as SQLite
serializes writers anyway) and a second one reads committed data, so long status
queries never wait behind a write.
"""

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from coordinator.storage.base import Database, Row, StorageUnavailable
from coordinator.storage.migrations import migration_scripts
from coordinator.storage.sql import Tx

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # NORMAL in WAL mode: a commit survives a process crash (kill -9); only an OS crash
    # or power loss can drop the last transactions.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
    "PRAGMA cache_size=-65536",
)


class SqliteDriver:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        cursor = await self.connection.execute(sql, args)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.connection.executemany(sql, rows)

    # A read runs and is read to the end in one call on the connection's thread: a cursor left open across an
    # await would hold the shared reader's snapshot, so other reads on it would miss newer commits (a request just
    # accepted answered 404); it also takes one thread hop instead of three.
    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = await self.connection.execute_fetchall(sql, args)
        return dict(rows[0]) if rows else None

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        rows = await self.connection.execute_fetchall(sql, args)
        return [dict(row) for row in rows]


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._migrate(self._writer)
        self._reader = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(self.path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            await connection.execute(pragma)
        return connection

    async def _migrate(self, connection: aiosqlite.Connection) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        async with connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version") as cursor:
            row = await cursor.fetchone()
        current = row[0] if row else 0
        for version, script in migration_scripts("sqlite"):
            if version > current:
                await connection.executescript(
                    f"BEGIN;\n{script}\nINSERT INTO schema_version VALUES ({version});\nCOMMIT;"
                )

    async def close(self) -> None:
        for connection in (self._writer, self._reader):
            if connection is not None:
                await connection.close()
        self._writer = self._reader = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        if self._writer is None:
            raise StorageUnavailable("database is closed")
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(SqliteDriver(self._writer), self.dialect)
            except BaseException:
                await self._writer.rollback()
                raise
            await self._writer.commit()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Tx]:
        if self._reader is None:
            raise StorageUnavailable("database is closed")
        yield Tx(SqliteDriver(self._reader), self.dialect)
