"""The database a benchmark runs on (SQLite in its data dir, or a fresh PostgreSQL database) and the
accounts it starts with."""

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def is_postgres(url: str | None) -> bool:
    return url is not None and url.startswith(("postgresql://", "postgres://"))


@contextlib.asynccontextmanager
async def bench_database(url: str | None) -> AsyncIterator[str | None]:
    """None for SQLite in the data dir; for a postgresql:// URL, a fresh database on that server, dropped after."""
    if not is_postgres(url):
        yield url
        return
    import asyncpg

    assert url is not None
    name = f"horde_bench_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(url)
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def create_accounts(data_dir: Path, db: str | None, names: Iterable[str], kudos: float) -> dict[str, str]:
    """Accounts with kudos, made through the coordinator's own Bank before the server starts (as
    `coordinator.cli user add NAME --kudos N` does, without a process per account). Returns name → apikey."""
    from coordinator.app import open_services
    from coordinator.bank import Bank
    from coordinator.config import CoordinatorConfig

    services = await open_services(CoordinatorConfig(data_dir=data_dir, database=db))
    bank = Bank(services)
    keys = {}
    try:
        for name in names:
            account, apikey = await bank.open_account(name)
            if kudos:
                await bank.grant(account.id, kudos)
            keys[name] = apikey
    finally:
        await services.database.close()
    return keys
