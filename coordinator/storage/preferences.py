"""Statements for a node's pop preferences (coordinator/preferences.py): its favoured requesters' waiting
rows, and the requests behind a few queue rows."""

from typing import Any

from coordinator.capabilities import sql_filters
from coordinator.storage.base import Row
from coordinator.storage.queue import QUEUE_COLUMNS
from coordinator.storage.records import RequestRecord, WorkerCaps
from coordinator.storage.rows import REQUEST_COLUMNS, join_record
from coordinator.storage.sql import Tx

PREFERRED_ROWS = 8  # as many as the pop query fetches per model


async def favoured_rows(tx: Tx, caps: WorkerCaps, requesters: tuple[str, ...]) -> list[Row]:
    """The best waiting rows of these requesters ("account:ID") that the node can honour, by the queue's
    order: their waiting jobs (indexed by requester), then those jobs' queue rows."""
    filters, filter_args = sql_filters(caps)
    people = ", ".join("?" * len(requesters))
    models = ", ".join("?" * len(caps.models))
    model_term = f"(model = '' OR model IN ({models}))" if caps.models else "model = ''"
    sql = (
        f"SELECT {QUEUE_COLUMNS} FROM queue WHERE job_id IN "
        f"(SELECT id FROM jobs WHERE requester IN ({people}) AND state = 'waiting') "
        f"AND {model_term} AND {filters} ORDER BY tier DESC, rank DESC LIMIT ?"
    )
    args: list[Any] = [*requesters, *caps.models, *filter_args, PREFERRED_ROWS]
    return await tx.driver.fetchall(sql, args)


async def requests_by_ids(tx: Tx, request_ids: list[str]) -> list[RequestRecord]:
    if not request_ids:
        return []
    marks = ",".join("?" * len(request_ids))
    rows = await tx.driver.fetchall(f"SELECT * FROM requests WHERE id IN ({marks})", request_ids)
    return [join_record(RequestRecord, row, REQUEST_COLUMNS) for row in rows]
