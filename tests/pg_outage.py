"""Database outages for tests, without disturbing the shared test server.

`OutageProxy` is a TCP relay in front of PostgreSQL. `cut()` drops every relayed
connection and stops listening, so clients see exactly what a server restart or crash
shows them (dropped connections, then refused ones); `restore()` listens again on the
same port. `ClusterRestart` does the real thing with `pg_ctlcluster`, for machines where
restarting the server under other tests' feet is acceptable.
"""

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.pg import with_database


def with_address(dsn: str, host: str, port: int) -> str:
    parts = urlsplit(dsn)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{credentials}{host}:{port}", parts.path, parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def restart_proof_database(dsn: str) -> AsyncIterator[str]:
    """Like tests.pg.fresh_database, but with a new admin connection for the drop, since a
    server restart in between kills any connection held across it."""
    name = f"horde_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(dsn, name)
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class OutageProxy:
    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.dsn = dsn
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """The DSN, pointed at the proxy."""
        return with_address(self.dsn, "127.0.0.1", self.port)

    async def start(self) -> "OutageProxy":
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        pipes = [
            asyncio.ensure_future(self._pipe(client_reader, server_writer)),
            asyncio.ensure_future(self._pipe(server_reader, client_writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
                self._pipes.discard(task)
            for writer in (client_writer, server_writer):
                writer.transport.abort()
                self._writers.discard(writer)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


class ClusterRestart:
    """Stops and starts the real server (Debian's pg_ctlcluster); disrupts everyone using it."""

    def __init__(self, version: str = "15", cluster: str = "main") -> None:
        self.args = [version, cluster]

    async def cut(self) -> None:
        await asyncio.to_thread(self._ctl, "stop")

    async def restore(self) -> None:
        await asyncio.to_thread(self._ctl, "start")

    def _ctl(self, action: str) -> None:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *self.args, action], check=True, timeout=60)
