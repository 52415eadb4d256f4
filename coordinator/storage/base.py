"""The engine-neutral face of storage: a driver runs SQL, a database hands out transactions."""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from coordinator.nonces import NonceCache


class NameTaken(Exception):
    """A unique name (username, worker name, key) is already in use."""


class NotEnoughKudos(Exception):
    """A debit that must be covered by the balance was not."""


class StorageUnavailable(Exception):
    """The database cannot be reached right now; the request can be retried."""


Row = dict[str, Any]


class Driver(Protocol):
    """The few calls the SQL primitives need; `?` placeholders in every statement."""

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...


Listener = Callable[[str, str], Awaitable[None] | None]


class Database(ABC):
    """An open database: write transactions, read snapshots, and cross-process events."""

    dialect: str
    _nonces: NonceCache | None = None

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager["Tx"]:  # noqa: F821
        """A write transaction; committed when the block ends without an exception."""

    @abstractmethod
    def reader(self) -> AbstractAsyncContextManager["Tx"]:  # noqa: F821
        """Read-only access to committed data."""

    async def announce(self, channel: str, payload: str) -> None:
        """Tell other coordinator processes about an event (no-op for a single process)."""
        return None

    async def listen(self, listener: Listener) -> None:
        """Receive other processes' announcements (no-op for a single process)."""
        return None

    async def first_use(self, signer: str, nonce: str, now: float, window: float) -> bool:
        """True the first time a signed request's (signer, nonce) is seen within the `window`
        its `created` time must fall in. This process's memory is enough for an engine that
        only one process opens; an engine several processes share must remember them itself."""
        if self._nonces is None:
            self._nonces = NonceCache(window)
        return self._nonces.first_use(signer, nonce, now)

    async def iterate_ledger(self, batch: int = 1000) -> AsyncIterator[list[Row]]:
        after = 0
        while True:
            async with self.reader() as tx:
                rows = await tx.driver.fetchall(
                    "SELECT * FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?", (after, batch)
                )
            if not rows:
                return
            yield rows
            after = rows[-1]["seq"]
