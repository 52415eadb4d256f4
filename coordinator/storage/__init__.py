"""Storage: the broker's only way to the database.

`open_database(url)` picks the engine: a file path means SQLite (the default), a
`postgresql://` URL means PostgreSQL. Both engines run the same SQL primitives in
`storage.sql.Tx`, so the broker's rules exist once.
"""

from coordinator.storage.base import Database, NameTaken, NotEnoughKudos, StorageUnavailable


async def open_database(url: str) -> Database:
    if url.startswith(("postgresql://", "postgres://")):
        from coordinator.storage.postgres import PostgresDatabase

        database: Database = PostgresDatabase(url)
    else:
        from coordinator.storage.sqlite import SqliteDatabase

        database = SqliteDatabase(url)
    await database.open()
    return database


__all__ = ["Database", "NameTaken", "NotEnoughKudos", "StorageUnavailable", "open_database"]
