"""The embedded engine: one SQLite file in WAL mode, used from the event loop's own thread.

Every statement the coordinator runs is an indexed lookup or a short range scan that takes
microseconds to a few milliseconds: less than a hop to a worker thread and back (which is
what aiosqlite would cost per statement), and a write transaction that never waits on
another thread never holds the write lock while other requests queue behind it. So both
connections are plain `sqlite3` connections called directly:

- the writer runs one transaction at a time (an asyncio lock; SQLite serializes writers
  anyway) and never checkpoints the WAL itself, since that would fsync on the loop;
- the reader (query-only) sees every committed write, never an open transaction's;
- a background thread checkpoints the WAL every second.
"""

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from coordinator.storage.base import Database, Row, StorageUnavailable
from coordinator.storage.migrations import migration_scripts
from coordinator.storage.sql import Tx

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # NORMAL in WAL mode: a commit survives a process crash (kill -9); only an OS crash
    # or power loss can drop the last transactions.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA cache_size=-65536",
    # Another process (an admin command) may hold the write lock for a moment; waiting
    # happens on the loop, so briefly, and a longer wait answers 503.
    "PRAGMA busy_timeout=2000",
)
CHECKPOINT_INTERVAL = 1.0
WAL_SIZE_LIMIT = 64 * 1024 * 1024
CATCH_UP_PASSES = 4


class LoopDriver:
    """Statements on a plain sqlite3 connection, run where they are called: the event loop."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, args: Sequence[Any] = (), *, by_itself: bool = False) -> int:
        return self.connection.execute(sql, args).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.connection.executemany(sql, rows)

    async def write(self, sql: str, args: Sequence[Any] = ()) -> None:
        self.connection.execute(sql, args)  # in-process: nothing to gain by holding it back

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        row = self.connection.execute(sql, args).fetchone()
        return dict(row) if row is not None else None

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return [dict(row) for row in self.connection.execute(sql, args).fetchall()]

    def announce(self, channel: str, payload: str) -> None:
        return None  # one process: nobody else to tell


def connect(path: Path, *pragmas: str, same_thread: bool = True) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=same_thread)
    connection.row_factory = sqlite3.Row
    for pragma in (*PRAGMAS, *pragmas):
        connection.execute(pragma)
    return connection


def _checkpoint(connection: sqlite3.Connection) -> None:
    """Copy the WAL into the database without making anyone wait.

    A WAL only starts over once a checkpoint has caught up with it, which steady writes never
    allow (measured: 445 MB after 12 s of bench/broker.py). Past its size limit, the copying
    goes on until little is left, and then new writes are held back for the moment it takes
    to copy the rest, so the next write starts the WAL over.
    """
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    _busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames * page_size <= WAL_SIZE_LIMIT:
        return
    for _ in range(CATCH_UP_PASSES):
        if (frames - copied) * page_size <= WAL_SIZE_LIMIT // 16:
            break
        _busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    connection.execute("PRAGMA wal_checkpoint(RESTART)")


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.path)
        self._migrate(self._writer)
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        # A burst of writes grows the WAL faster than the checkpoints drain it; once drained, the
        # next write starts it over, and this cuts the file back instead of keeping its peak size.
        self._writer.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._reader = connect(self.path, "PRAGMA query_only=ON")
        self._checkpointer = asyncio.create_task(self._checkpoint_forever())

    def _migrate(self, connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        current = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        for version, script in migration_scripts("sqlite"):
            if version > current:
                connection.executescript(f"BEGIN;\n{script}\nINSERT INTO schema_version VALUES ({version});\nCOMMIT;")

    async def _checkpoint_forever(self) -> None:
        connection = await asyncio.to_thread(connect, self.path, same_thread=False)
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_INTERVAL)
                running = asyncio.ensure_future(asyncio.to_thread(_checkpoint, connection))
                try:
                    await asyncio.shield(running)
                except sqlite3.OperationalError:
                    pass  # busy: the next round will do
                except asyncio.CancelledError:
                    # Closing a connection another thread is using crashes the process: let it finish.
                    await asyncio.gather(running, return_exceptions=True)
                    raise
        finally:
            connection.close()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
        for connection in (self._reader, self._writer):
            if connection is not None:
                connection.close()  # the last connection to close checkpoints the WAL
        self._writer = self._reader = self._checkpointer = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._write_lock:
            if self._writer is None:
                raise StorageUnavailable("database is closed")
            try:
                self._writer.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:  # another process holds the write lock
                raise StorageUnavailable(str(error)) from error
            try:
                yield Tx(LoopDriver(self._writer), self.dialect)
            except BaseException:
                self._writer.rollback()
                raise
            self._writer.commit()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Tx]:
        if self._reader is None:
            raise StorageUnavailable("database is closed")
        yield Tx(LoopDriver(self._reader), self.dialect)
