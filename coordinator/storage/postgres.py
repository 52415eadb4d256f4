"""The shared engine: PostgreSQL through an asyncpg pool, for several coordinator processes
on one database.

Write transactions run at READ COMMITTED. The decisions processes race for are settled by
the database itself, not by an earlier read: a job is claimed with
`UPDATE ... WHERE state = 'waiting'` (the loser sees 0 rows), funds are debited with
`UPDATE ... WHERE kudos >= ?`, and ledger appends hold a transaction-scoped advisory lock
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
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import asyncpg

from coordinator.metrics import DB_ROUND_TRIPS, ENDPOINT
from coordinator.storage.base import Database, Listener, NameTaken, Row, StorageUnavailable
from coordinator.storage.batch import WriteBatch, rows_as_one
from coordinator.storage.migrations import migration_scripts
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
EVENT_CHANNEL = "horde_events"
LISTEN_BACKOFF = (0.1, 5.0)  # first and longest wait between reconnection attempts
LISTEN_PING_SECONDS = 15.0  # how often an idle LISTEN connection proves it is alive
NAME_TABLES = ("accounts", "workers")  # a unique violation there is a taken name

# Errors that mean "the server is not there right now", not "this statement is wrong".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # command_timeout, pool acquire, connect
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, CannotConnectNow, statement cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    # A deadlock victim or serialization failure was rolled back whole; a retry succeeds.
    asyncpg.exceptions.TransactionRollbackError,
)


class OneLineRetries(logging.Filter):
    """asyncpg logs a full traceback each time it fails to refill the pool while the server is
    away (every second, per process); the reason on one line says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_unavailable(record.exc_info[1]):
            record.msg, record.args = f"{record.getMessage()}: {record.exc_info[1]}", ()
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("asyncpg.pool").addFilter(OneLineRetries())


def is_unavailable(error: BaseException) -> bool:
    if isinstance(error, asyncpg.InterfaceError):
        return "closed" in str(error)  # "connection is closed"; other interface errors are bugs
    return isinstance(error, UNAVAILABLE)


@lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1..$n`, leaving quoted text and identifiers alone."""
    out: list[str] = []
    count = 0
    for part in re.split(r"('(?:[^']|'')*'|\"[^\"]*\")", sql):
        if part.startswith(("'", '"')):
            out.append(part)
            continue
        pieces = part.split("?")
        out.append(pieces[0])
        for piece in pieces[1:]:
            count += 1
            out.append(f"${count}{piece}")
    return "".join(out)


def affected(status: str) -> int:
    """Rows touched, from a command tag such as 'UPDATE 1' or 'INSERT 0 3'."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class RoundTrips(Counter[str]):
    """Round trips to the server, by the route that made them (`metrics.ENDPOINT`): this database's
    own tally (tests read it) and the process's `horde_db_round_trips` metric (benchmarks scrape it)."""

    def add(self) -> None:
        endpoint = ENDPOINT.get()
        self[endpoint] += 1
        DB_ROUND_TRIPS.labels(endpoint).inc()


class CountingConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection that counts each wait for the server: every statement, BEGIN, COMMIT,
    NOTIFY and reset goes through one of these calls, once. (A statement asyncpg has not prepared on
    this connection yet costs one more, the first time only: its statement cache keeps it.)"""

    trips: RoundTrips | None = None

    def _count(self) -> None:
        if self.trips is not None:
            self.trips.add()

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        self._count()
        return await super().execute(query, *args, timeout=timeout)

    async def executemany(self, command: str, args: Any, *, timeout: float | None = None) -> None:
        self._count()  # the rows go in one pipelined batch
        await super().executemany(command, args, timeout=timeout)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:
        self._count()
        return await super().fetch(query, *args, timeout=timeout, record_class=record_class)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:
        self._count()
        return await super().fetchrow(query, *args, timeout=timeout, record_class=record_class)

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        self._count()
        return await super().fetchval(query, *args, column=column, timeout=timeout)


# A statement that only reads committed rows: before a transaction's first write it runs outside it.
PLAIN_READ = re.compile(r"^\s*SELECT\b(?!.*\bFOR\s+(?:UPDATE|NO\s+KEY|SHARE|KEY\s+SHARE)\b)(?!.*pg_advisory)",
                        re.IGNORECASE | re.DOTALL)  # fmt: skip
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"


class PostgresDriver:
    """The Driver interface over one asyncpg connection, with as few round trips as its answers allow.

    In a write transaction (`in_transaction`):
    - BEGIN waits for the first statement that writes or locks: at READ COMMITTED each statement reads what
      was committed when it started, inside a transaction or not, so the reads before it are the same
      without it, and a transaction that writes nothing costs no BEGIN and no COMMIT. A first statement
      without parameters (the ledger's lock) goes in one message with BEGIN;
    - writes nobody needs an answer from (`write`, and `executemany`'s rows) wait in a `WriteBatch` and go
      as one statement with the next write that needs its row count, or on their own before the next read
      or the commit (storage/batch.py); a transaction whose only writes are one batch sends it alone, with
      no BEGIN and no COMMIT, since one statement is atomic by itself."""

    def __init__(self, connection: asyncpg.Connection, on_lost: Callable[[], None], in_transaction: bool = False
                 ) -> None:  # fmt: skip
        self.connection = connection
        self.on_lost = on_lost
        self.begin_pending = in_transaction
        self.began = False
        self.batch = WriteBatch() if in_transaction else None

    async def _enter(self, sql: str, together: bool = False) -> bool:
        """Before `sql`: BEGIN if it is due; with `together`, BEGIN and `sql` (no parameters) go in one
        message. True when `sql` has so been sent."""
        if not self.begin_pending or PLAIN_READ.match(sql):
            return False
        self.begin_pending, self.began = False, True
        await self.connection.execute(f"{BEGIN}; {sql}" if together else BEGIN)
        return together

    async def _send_batch(self) -> int:
        """The held writes as one statement; the last write's row count."""
        assert self.batch is not None
        statement, args = self.batch.statement()
        self.batch.clear()
        await self._enter(statement)
        row = await self.connection.fetchrow(numbered(statement), *args)
        return int(row[-1]) if row is not None else 0

    async def flush(self) -> None:
        """Send the held writes, if any."""
        if self.batch:
            with self.errors():
                await self._send_batch()

    async def write(self, sql: str, args: Sequence[Any] = ()) -> None:
        if self.batch is not None and not self.batch.takes(sql):
            await self.flush()
        if self.batch is not None and self.batch.takes(sql):
            self.batch.add(sql, list(args))
        else:
            await self.execute(sql, args)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        if self.batch:
            if self.batch.takes(sql):  # the held writes go with this one, in one round trip
                self.batch.add(sql, list(args))
                with self.errors():
                    return await self._send_batch()
            await self.flush()
        with self.errors():
            if await self._enter(sql, together=not args):
                return 0  # a script answers no row count; no parameterless statement of ours needs one
            return affected(await self.connection.execute(numbered(sql), *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.batch is not None and (one := rows_as_one(sql, [tuple(row) for row in rows])) is not None:
            await self.write(*one)
            return
        await self.flush()
        with self.errors():
            await self._enter(sql)
            await self.connection.executemany(numbered(sql), rows)

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        await self.flush()
        with self.errors():
            await self._enter(sql)
            record = await self.connection.fetchrow(numbered(sql), *args)
        return dict(record) if record is not None else None

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        await self.flush()
        with self.errors():
            await self._enter(sql)
            records = await self.connection.fetch(numbered(sql), *args)
        return [dict(record) for record in records]

    async def finish(self, commit: bool) -> None:
        """Send what is held and COMMIT, or drop it and ROLLBACK (each only if BEGIN was sent)."""
        if self.batch and commit:
            if self.begin_pending:
                self.begin_pending = False  # the held writes are the whole transaction: one statement is atomic
            await self._send_batch()
        if self.batch is not None:
            self.batch.clear()
        if self.began:
            self.began = False
            await self.connection.execute("COMMIT" if commit else "ROLLBACK")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except asyncpg.UniqueViolationError as error:
            # Two processes can both pass the "is this name free?" read; the index decides.
            if error.table_name in NAME_TABLES:
                raise NameTaken(error.detail or str(error)) from error
            raise
        except Exception as error:
            if is_unavailable(error):
                self.on_lost()
                raise StorageUnavailable(f"PostgreSQL: {error}") from error
            raise


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
            self.dsn, min_size=POOL_MIN, max_size=POOL_MAX, command_timeout=COMMAND_TIMEOUT,
            timeout=CONNECT_TIMEOUT, server_settings={"application_name": "horde-coordinator"},
            connection_class=CountingConnection, init=self._counted, reset=self._keep_session,
        )  # fmt: skip
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
            except (TimeoutError, *UNAVAILABLE):
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
            driver = PostgresDriver(connection, self._expire_connections, in_transaction=True)
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

    # --- events between processes -------------------------------------------------------------
    async def announce(self, channel: str, payload: str) -> None:
        """NOTIFY the other processes. Best effort: the caller's work is already committed,
        and a node that misses a wake-up still finds the job on its next pop."""
        message = json.dumps({"origin": self.origin, "channel": channel, "payload": payload})
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
                # Announcements sent while we were away are lost: wake every waiting node so
                # each re-checks the queue. (Requesters' long-polls end on their own timeout.)
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
