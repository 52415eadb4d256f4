"""The engine-neutral face of storage: a driver runs SQL, a database hands out transactions (whose
SQL is `storage/sql.py`'s `Tx`). No SQL here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from coordinator.storage.nonces import PRUNE_SECONDS, record_nonce

if TYPE_CHECKING:  # sql.py builds on this module; the name is only needed for annotations
    from coordinator.storage.callers import Credentials, Identities
    from coordinator.storage.sql import Tx
    from protocol.ledger import LedgerEntry


class NameTaken(Exception):
    """A unique name (username, worker name, key) is already in use."""


class NotEnoughKudos(Exception):
    """A debit that must be covered by the balance was not."""


class StorageUnavailable(Exception):
    """The database cannot be reached right now; the request can be retried."""


Row = dict[str, Any]


class Driver(Protocol):
    """The few calls the SQL primitives need; `?` placeholders in every statement."""

    async def execute(self, sql: str, args: Sequence[Any] = (), *, by_itself: bool = False) -> int:
        """A statement's row count. `by_itself`: when nothing was written in this transaction yet, the statement
        (with the writes held for it) may commit on its own, at once: the caller needs it atomic with nothing
        before or after it (PostgreSQL then sends no BEGIN; SQLite's transaction is one lock either way)."""

    async def write(self, sql: str, args: Sequence[Any] = ()) -> None:
        """A write whose row count nobody reads: within a transaction it may be sent later, with the
        transaction's next statement (PostgreSQL, storage/batch.py), but always before its next read."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    def announce(self, channel: str, payload: str) -> None:
        """Tell the other coordinator processes when this transaction commits, and only if it does
        (PostgreSQL sends it with the COMMIT: no round trip of its own; one process: nothing to tell)."""


Listener = Callable[[str, str], Awaitable[None] | None]


class Database(ABC):
    """An open database: write transactions, read snapshots, and cross-process events."""

    dialect: str
    _nonces_pruned_at: float = 0.0

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction; committed when the block ends without an exception."""

    @abstractmethod
    def reader(self) -> AbstractAsyncContextManager[Tx]:
        """Read-only access to committed data."""

    async def announce(self, channel: str, payload: str) -> None:
        """Tell other coordinator processes about an event (no-op for a single process)."""
        return None

    async def listen(self, listener: Listener) -> None:
        """Receive other processes' announcements (no-op for a single process)."""
        return None

    async def first_use(self, signer: str, nonce: str, now: float, window: float = 300.0) -> bool:
        """True the first time a signed request's (signer, nonce) is seen within twice the
        `window` its `created` time must fall in (a signature verifies for that long after it is
        first seen). Recorded in the database on every engine, so a restart forgets nothing and,
        on PostgreSQL, a request accepted by one process is a replay to every other."""
        async with self._nonce_statements() as driver:
            return await record_nonce(driver, signer, nonce, now, prune_before=self._prune_due(now, window))

    def _prune_due(self, now: float, window: float) -> float | None:
        """The time before which nonces are forgotten, when it is time to forget them again (else None)."""
        if now - self._nonces_pruned_at <= PRUNE_SECONDS:
            return None
        self._nonces_pruned_at = now
        return now - 2 * window

    async def identities(self, credentials: Credentials, window: float = 300.0) -> Identities:
        """Whom a signed request's apikey and key name, and whether its nonce is new (`first_use`), which is
        recorded only when someone is identified or `credentials.record_unknown` (storage/callers.py)."""
        from coordinator.storage.callers import read_identities  # callers.py builds on sql.py, which builds on this

        async with self.reader() as tx:
            found = await read_identities(tx, credentials)
        if found.identified() or credentials.record_unknown:
            found.first_use = await self.first_use(credentials.signer, credentials.nonce, credentials.now, window)
        return found

    @asynccontextmanager
    async def _nonce_statements(self) -> AsyncIterator[Driver]:
        """Where first_use's statements run: by default a write transaction of their own, committed
        before the request they protect does anything (a replay after a crash finds the nonce)."""
        async with self.transaction() as tx:
            yield tx.driver

    async def iterate_ledger(self, batch: int = 1000) -> AsyncIterator[list[LedgerEntry]]:
        """The whole ledger in order, a batch per short read (the audit walks it without one long snapshot)."""
        after = 0
        while True:
            async with self.reader() as tx:
                entries = await tx.ledger_entries(after, batch)
            if not entries:
                return
            yield entries
            after = entries[-1].seq
