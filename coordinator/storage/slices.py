"""The workers table read a slice at a time (coordinator/roster.py): each worker is read again every so
often for what other components and processes changed, without one read of every worker at once."""

from coordinator.storage.records import Worker
from coordinator.storage.rows import WORKER_COLUMNS, join_record
from coordinator.storage.sql import Tx


async def worker_slice(tx: Tx, after: str, limit: int) -> list[Worker]:
    """At most `limit` workers whose id follows `after`, in id order (the primary key's)."""
    rows = await tx.driver.fetchall("SELECT * FROM workers WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
    return [join_record(Worker, row, WORKER_COLUMNS) for row in rows]
