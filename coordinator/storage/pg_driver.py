"""The PostgreSQL driver: statements over one asyncpg connection, with as few round trips as their answers
allow, and every round trip counted (storage/postgres.py holds the pool, the migrations and the events)."""

import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import asyncpg

from coordinator.metrics import DB_ROUND_TRIPS, ENDPOINT
from coordinator.storage.base import NameTaken, Row, StorageUnavailable
from coordinator.storage.batch import WriteBatch, rows_as_one

NAME_TABLES = ("accounts", "workers")  # a unique violation there is a taken name
EVENT_CHANNEL = "horde_events"  # the one NOTIFY channel between coordinator processes

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


def event_message(origin: str, channel: str, payload: str) -> str:
    """An announcement to the other processes, tagged with its sender's `origin` so it skips its own echo."""
    return json.dumps({"origin": origin, "channel": channel, "payload": payload})


def notify_statement(message: str) -> str:
    """NOTIFY of `message` with the message as a literal: it goes in a script with COMMIT, and a script takes
    no parameters. (`json.dumps` wrote it in ASCII; an escape string reads the same under any setting.)"""
    literal = message.replace("\\", "\\\\").replace("'", "''")
    return f"SELECT pg_notify('{EVENT_CHANNEL}', E'{literal}')"


@lru_cache(maxsize=256)  # endpoints are the routes' templates (metrics.route_name): a bounded set
def _round_trips_of(endpoint: str) -> Any:
    """The metric's child for `endpoint`, looked up once (`labels` costs a lock and a dict each time)."""
    return DB_ROUND_TRIPS.labels(endpoint)


class RoundTrips(Counter[str]):
    """Round trips to the server, by the route that made them (`metrics.ENDPOINT`): this database's
    own tally (tests read it) and the process's `horde_db_round_trips` metric (benchmarks scrape it)."""

    def add(self) -> None:
        endpoint = ENDPOINT.get()
        self[endpoint] += 1
        _round_trips_of(endpoint).inc()


class CountingConnection(asyncpg.Connection):
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
PLAIN_READ = re.compile(
    r"^\s*SELECT\b(?!.*\bFOR\s+(?:UPDATE|NO\s+KEY|SHARE|KEY\s+SHARE)\b)(?!.*pg_advisory)", re.IGNORECASE | re.DOTALL
)
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"


@lru_cache(maxsize=2048)  # statements are the code's few texts, and every one is asked about
def is_plain_read(sql: str) -> bool:
    return PLAIN_READ.match(sql) is not None


class PostgresDriver:
    """The Driver interface over one asyncpg connection, with as few round trips as its answers allow.

    In a write transaction (`in_transaction`):
    - BEGIN waits for the first statement that writes or locks: at READ COMMITTED each statement reads what
      was committed when it started, inside a transaction or not, so the reads before it are the same
      without it, and a transaction that writes nothing costs no BEGIN and no COMMIT. A first parameterless
      SELECT (the ledger's lock) goes in one message with BEGIN;
    - writes nobody needs an answer from (`write`, and `executemany`'s rows) wait in a `WriteBatch` and go
      as one statement with the next write that needs its row count, or on their own before the next read
      or the commit (storage/batch.py); a transaction whose only writes are one batch sends it alone, with
      no BEGIN and no COMMIT, since one statement is atomic by itself; so does a write its caller says commits
      `by_itself` (a pop's claim of one job), with the writes held for it;
    - announcements (`announce`) go in one message with the COMMIT, so the other processes hear of the change
      when it is committed, never before and never if it is not, at no round trip of their own."""

    def __init__(
        self,
        connection: asyncpg.Connection,
        on_lost: Callable[[], None],
        in_transaction: bool = False,
        origin: str = "",
    ) -> None:
        self.connection = connection
        self.on_lost = on_lost
        self.begin_pending = in_transaction
        self.began = False
        self.batch = WriteBatch() if in_transaction else None
        self.origin = origin
        self.notices: list[str] = []

    async def _enter(self, sql: str, together: bool = False, by_itself: bool = False) -> bool:
        """Before `sql`: BEGIN if it is due (not for a statement that commits `by_itself`, `Driver.execute`);
        with `together`, BEGIN and `sql` (no parameters) go in one message. True when `sql` has so been sent."""
        if not self.begin_pending or by_itself or is_plain_read(sql):
            return False
        self.begin_pending, self.began = False, True
        await self.connection.execute(f"{BEGIN}; {sql}" if together else BEGIN)
        return together

    async def _send_batch(self, by_itself: bool = False) -> int:
        """The held writes as one statement; the last write's row count."""
        assert self.batch is not None
        statement, args = self.batch.statement()
        self.batch.clear()
        await self._enter(statement, by_itself=by_itself)
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

    async def execute(self, sql: str, args: Sequence[Any] = (), *, by_itself: bool = False) -> int:
        by_itself = by_itself and not self.began  # else it is part of what began
        if self.batch:
            if self.batch.takes(sql):  # the held writes go with this one, in one round trip
                self.batch.add(sql, list(args))
                with self.errors():
                    return await self._send_batch(by_itself)
            await self.flush()
        with self.errors():
            # A parameterless SELECT (the ledger's lock) goes with BEGIN: a script answers no row count, which
            # only a write's caller reads.
            if await self._enter(sql, not args and sql.lstrip()[:6].upper() == "SELECT", by_itself):
                return 0
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

    def announce(self, channel: str, payload: str) -> None:
        if self.batch is None:
            raise RuntimeError("announce belongs in a transaction: it is sent with the COMMIT")
        self.notices.append(notify_statement(event_message(self.origin, channel, payload)))

    async def finish(self, commit: bool) -> None:
        """Send what is held and COMMIT with the announcements, or drop both and ROLLBACK (each only if BEGIN
        was sent; without BEGIN the announcements go alone)."""
        if self.batch and commit:
            if self.begin_pending:
                self.begin_pending = False  # the held writes are the whole transaction: one statement is atomic
            await self._send_batch()
        if self.batch is not None:
            self.batch.clear()
        notices, self.notices = (self.notices if commit else []), []
        if self.began:
            self.began = False
            await self.connection.execute("; ".join([*notices, "COMMIT"]) if commit else "ROLLBACK")
        elif notices:
            await self.connection.execute("; ".join(notices))

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
