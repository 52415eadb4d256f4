"""The shared engine: PostgreSQL through an asyncpg pool, for several coordinator processes
on one database.

Write transactions run at READ COMMITTED. The decisions processes race for are settled by
the database itself, not by an earlier read: a job is claimed with
`UPDATE ... WHERE state = 'waiting'` (the loser sees 0 rows), funds are debited with
`UPDATE ... WHERE kudos_hundredths >= ?`, and ledger appends hold a transaction-scoped advisory lock
(`Tx.lock_ledger`), so the hash chain has one writer at a time.

Processes tell each other about new jobs and changed requests with NOTIFY on one channel;
each process keeps one dedicated LISTEN connection that reconnects by itself.

While the server is unreachable or restarting, every operation raises StorageUnavailable
(the API answers 503 with rc StorageUnavailable); an interrupted transaction is rolled back
by the server, so nothing is half-written, and the pool reconnects when the server returns.
"""

import asyncio
import contextlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from coordinator.storage.base import Database, Listener, StorageUnavailable
from coordinator.storage.callers import ONE_STATEMENT, Credentials, Identities, from_one_statement, one_statement_args
from coordinator.storage.migrations import migration_scripts
from coordinator.storage.nonces import prune as record_prune
from coordinator.storage.pg_driver import (
    EVENT_CHANNEL,
    UNAVAILABLE,
    CountingConnection,
    PostgresDriver,
    RoundTrips,
    affected,
    event_message,
    is_unavailable,
    numbered,
)
from coordinator.storage.sql import Tx

log = logging.getLogger("horde.coordinator.postgres")

POOL_MIN = 1
POOL_MAX = 10
COMMAND_TIMEOUT = 15.0  # seconds a statement may run before the request fails with 503
ACQUIRE_TIMEOUT = 10.0  # seconds a request waits for a free pooled connection
CONNECT_TIMEOUT = 5.0
STARTUP_WAIT = 30.0  # seconds `open` waits for a server that is not up yet
# Arbitrary constants naming our advisory locks; 7301 (the ledger) is taken in sql.py.
MIGRATION_LOCK = 7300
LISTEN_BACKOFF = (0.1, 5.0)  # first and longest wait between reconnection attempts
LISTEN_PING_SECONDS = 15.0  # how often an idle LISTEN connection proves it is alive


class OneLineRetries(logging.Filter):
    """asyncpg logs a full traceback each time it fails to refill the pool while the server is
    away (every second, per process); the reason on one line says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_unavailable(record.exc_info[1]):
            record.msg, record.args = f"{record.getMessage()}: {record.exc_info[1]}", ()
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("asyncpg.pool").addFilter(OneLineRetries())


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, dsn: str, startup_wait: float = STARTUP_WAIT) -> None:
        self.dsn = dsn
        self.startup_wait = startup_wait
        self.origin = uuid.uuid4().hex  # tags our notifications so we can skip our own echo
        self._pool: asyncpg.Pool | None = None
        self._listening: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.round_trips = RoundTrips()

    # --- opening and closing ------------------------------------------------------------
    async def open(self) -> None:
        """Connect and migrate, waiting up to `startup_wait` seconds for a server that is
        still starting (containers started together)."""
        deadline = time.monotonic() + self.startup_wait
        delay = LISTEN_BACKOFF[0]
        while True:
            try:
                await self._open_once()
                return
            except Exception as error:
                await self.close()
                if not is_unavailable(error):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailable(f"cannot reach PostgreSQL: {error}") from error
                log.warning("waiting for PostgreSQL: %s", error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_BACKOFF[1])

    async def _open_once(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            command_timeout=COMMAND_TIMEOUT,
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": "horde-coordinator"},
            connection_class=CountingConnection,
            init=self._counted,
            reset=self._keep_session,
        )
        await self._migrate()

    async def _counted(self, connection: CountingConnection) -> None:
        connection.trips = self.round_trips

    @staticmethod
    async def _keep_session(connection: asyncpg.Connection) -> None:
        """What the pool does to a connection it takes back, instead of asyncpg's reset query (a round trip
        per use, which was a third of ours): nothing. The session has nothing to reset: advisory locks
        are transaction-scoped, no cursor outlives its statement, no setting is changed, and LISTEN runs
        on a connection of its own. (An open transaction is still rolled back, by the pool itself.)"""

    async def _migrate(self) -> None:
        """Apply new migrations in one transaction; the advisory lock makes processes that
        start together take turns, so each migration runs once."""
        assert self._pool is not None
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
            current = await connection.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for version, script in migration_scripts("postgresql"):
                if version > current:
                    await connection.execute(script)
                    await connection.execute("INSERT INTO schema_version VALUES ($1)", version)
                    log.info("applied migration %s", version)

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5.0)
            except (TimeoutError, *UNAVAILABLE):  # type: ignore[misc]  # mypy reads a starred tuple as one item
                pool.terminate()

    # --- transactions ---------------------------------------------------------------------
    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise StorageUnavailable("database is closed")
        pool = self._pool
        try:
            connection = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
        except Exception as error:
            if is_unavailable(error):
                raise StorageUnavailable(f"PostgreSQL: {error}") from error
            raise
        try:
            yield connection
        finally:
            try:
                await pool.release(connection)
            except Exception as error:  # a broken connection is dropped by the pool; the work is done
                if not is_unavailable(error):
                    raise

    def _expire_connections(self) -> None:
        """After one dead connection, assume its idle siblings died with the same server."""
        if self._pool is not None:
            self._keep(asyncio.ensure_future(self._pool.expire_connections()))

    def _keep(self, task: "asyncio.Future[Any]") -> None:
        """Hold a reference to a fire-and-forget task until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._connection() as connection:
            driver = PostgresDriver(connection, self._expire_connections, in_transaction=True, origin=self.origin)
            try:
                yield Tx(driver, self.dialect)
                with driver.errors():
                    await driver.finish(commit=True)  # the held writes can fail here
            except BaseException:
                # If the connection is gone the server has already rolled back.
                with contextlib.suppress(Exception):
                    await driver.finish(commit=False)
                raise

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Tx]:
        # Autocommit reads of committed data, as the SQLite reader does.
        async with self._connection() as connection:
            yield Tx(PostgresDriver(connection, self._expire_connections), self.dialect)

    # --- replay protection shared by every process ------------------------------------------------
    @asynccontextmanager
    async def _nonce_statements(self) -> AsyncIterator[PostgresDriver]:
        # Autocommit statements on a pooled connection: no transaction round trips (Database.first_use).
        async with self._connection() as connection:
            yield PostgresDriver(connection, self._expire_connections)

    async def identities(self, credentials: Credentials, window: float = 300.0) -> Identities:
        # One statement instead of up to five (storage/callers.py); the prune, once a minute, is one more.
        async with self._nonce_statements() as driver:
            if (prune_before := self._prune_due(credentials.now, window)) is not None:
                await record_prune(driver, prune_before)
            row = await driver.fetchone(ONE_STATEMENT, one_statement_args(credentials))
        assert row is not None
        return from_one_statement(row)

    # --- events between processes -------------------------------------------------------------
    async def announce(self, channel: str, payload: str) -> None:
        """NOTIFY the other processes. Best effort: the caller's work is already committed,
        and a node that misses a wake-up still finds the job on its next pop."""
        message = event_message(self.origin, channel, payload)
        try:
            async with self._connection() as connection:
                await connection.execute("SELECT pg_notify($1, $2)", EVENT_CHANNEL, message)
        except StorageUnavailable as error:
            log.warning("could not announce %s: %s", channel, error)
        except Exception as error:
            if not is_unavailable(error):
                raise
            log.warning("could not announce %s: %s", channel, error)

    async def listen(self, listener: Listener) -> None:
        """Deliver other processes' announcements to `listener`; returns once LISTEN is active."""
        if self._listening is not None:
            raise RuntimeError("already listening")
        ready = asyncio.Event()
        self._listening = asyncio.create_task(self._listen_forever(listener, ready))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), CONNECT_TIMEOUT * 2)
        if not ready.is_set():
            log.warning("LISTEN is not active yet; still trying in the background")

    async def _listen_forever(self, listener: Listener, ready: asyncio.Event) -> None:
        delay = LISTEN_BACKOFF[0]
        while True:
            try:
                await self._listen_once(listener, ready)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not is_unavailable(error):
                    log.exception("LISTEN connection failed")
                else:
                    log.warning("LISTEN connection lost: %s; reconnecting in %.1fs", error, delay)
            else:
                delay = LISTEN_BACKOFF[0]  # it was up and then ended: start the backoff over
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_BACKOFF[1])

    async def _listen_once(self, listener: Listener, ready: asyncio.Event) -> None:
        connection = await asyncpg.connect(
            self.dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": "horde-coordinator-listen"}
        )
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(EVENT_CHANNEL, self._on_notification(listener))
            if ready.is_set():
                # Announcements sent while we were away are lost: wake every waiting node and
                # long-polled check, so each looks again (EventHub.jobs_announced).
                self._deliver(listener, "jobs", "reconnected")
            ready.set()
            log.info("listening for other coordinator processes")
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTEN_PING_SECONDS)
                if not lost.is_set():
                    await connection.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
        finally:
            connection.terminate()

    def _on_notification(self, listener: Listener) -> Callable[[Any, int, str, str], None]:
        def on_notification(_connection: Any, _pid: int, _channel: str, message: str) -> None:
            try:
                event = json.loads(message)
                if event["origin"] == self.origin:
                    return
                channel, payload = str(event["channel"]), str(event["payload"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed notification: %.200s", message)
                return
            self._deliver(listener, channel, payload)

        return on_notification

    def _deliver(self, listener: Listener, channel: str, payload: str) -> None:
        try:
            result = listener(channel, payload)
        except Exception:
            log.exception("event listener failed on %s", channel)
            return
        if inspect.isawaitable(result):
            self._keep(asyncio.ensure_future(result))


__all__ = ["PostgresDatabase", "affected", "numbered"]  # the last two for tests
