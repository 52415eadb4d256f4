"""The queue's statements, mixed into `Tx` (storage/sql.py): a waiting job's rows (one per model it may
run on) with its demands, the candidates a pop looks at, and the queue's counts."""

import json
from typing import Any

from coordinator.capabilities import DEMAND_COLUMNS, sql_filters
from coordinator.storage.base import Driver, Row
from coordinator.storage.records import QueueEntry, WorkerCaps

# The job's demands are coordinator/capabilities.py's columns, in its order.
QUEUE_COLUMNS = ", ".join(
    ("job_id", "request_id", "model", "tier", "rank", *DEMAND_COLUMNS, "named", "worker_blacklist")
)
PIXELSTEPS = "CAST(pixels AS DOUBLE PRECISION) * steps"
# Candidates fetched per model before filtering in Python for the rarer constraints.
CANDIDATES_PER_MODEL = 8
MODELS_PER_STATEMENT = 250


def _demand_values(entry: QueueEntry) -> list[Any]:
    """The entry's demands as column values (booleans as 0/1, which both engines index alike)."""
    values = (getattr(entry, column) for column in DEMAND_COLUMNS)
    return [int(value) if isinstance(value, bool) else value for value in values]


class QueueStatements:
    driver: Driver
    dialect: str

    async def enqueue(self, entries: list[QueueEntry]) -> None:
        rows = [
            (
                e.job_id,
                e.request_id,
                model,
                e.tier,
                e.rank,
                *_demand_values(e),
                int(bool(e.workers)),
                int(e.worker_blacklist),
            )
            for e in entries
            for model in (e.models or [""])
        ]
        marks = ", ".join("?" * len(QUEUE_COLUMNS.split(", ")))
        await self.driver.executemany(
            f"INSERT INTO queue ({QUEUE_COLUMNS}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows
        )

    async def worker_lists(self, request_ids: set[str]) -> dict[str, list[str]]:
        """The `workers` list of each request, for its queue rows flagged `named`. The database pulls
        the list out of the request's JSON, so a pop checks it without parsing whole requests."""
        if not request_ids:
            return {}
        sqlite = self.dialect == "sqlite"
        extract = "json_extract(info, '$.body.workers')" if sqlite else "(info::json) -> 'body' ->> 'workers'"
        ids = sorted(request_ids)
        rows = await self.driver.fetchall(
            f"SELECT id, {extract} AS workers FROM requests WHERE id IN ({','.join('?' * len(ids))})", ids
        )
        return {row["id"]: json.loads(row["workers"]) if row["workers"] else [] for row in rows}

    async def dequeue_request(self, request_id: str) -> None:
        await self.driver.write("DELETE FROM queue WHERE request_id = ?", (request_id,))

    async def queue_candidates(self, caps: WorkerCaps, per_model: int = CANDIDATES_PER_MODEL) -> list[Row]:
        """The best waiting rows for each model the node serves, filtered by what indexes can check."""
        models = [*caps.models, ""]
        rows: list[Row] = []
        # SQLite caps a compound SELECT at 500 terms; a node may serve more models than that.
        for start in range(0, len(models), MODELS_PER_STATEMENT):
            parts, args = [], []
            for model in models[start : start + MODELS_PER_STATEMENT]:
                filters, filter_args = sql_filters(caps, model)  # per model: abilities can hang on its baseline
                parts.append(
                    f"SELECT * FROM (SELECT {QUEUE_COLUMNS} FROM queue WHERE model = ? AND {filters} "
                    "ORDER BY tier DESC, rank DESC LIMIT ?) AS m"
                )
                args += [model, *filter_args, per_model]
            rows += await self.driver.fetchall(" UNION ALL ".join(parts), args)
        return rows

    async def queue_head(self, limit: int) -> list[Row]:
        return await self.driver.fetchall(
            f"SELECT {QUEUE_COLUMNS} FROM queue ORDER BY tier DESC, rank DESC LIMIT ?", (limit,)
        )

    async def waiting_of_request(self, request_id: str, limit: int) -> list[Row]:
        return await self.driver.fetchall(
            "SELECT DISTINCT job_id FROM queue WHERE request_id = ? LIMIT ?", (request_id, limit)
        )

    async def queue_position(self, tier: int, rank: float) -> int:
        """Queue rows ahead of (tier, rank): two covering-index range counts.

        A job that may run on several models has a row per model and counts once for each;
        counting distinct jobs instead would sort every row ahead (450 ms at 100k waiting).
        """
        row = await self.driver.fetchone(
            "SELECT (SELECT COUNT(*) FROM queue WHERE tier > ?) AS higher, "
            "(SELECT COUNT(*) FROM queue WHERE tier = ? AND rank > ?) AS same",
            (tier, tier, rank),
        )
        return int(row["higher"]) + int(row["same"]) if row else 0

    async def queue_by_model(self) -> list[Row]:
        """Per model: waiting jobs and their pixel-steps (a job that may run on several models counts
        for each). A float product: pixels × steps can pass PostgreSQL's 32-bit INTEGER."""
        return await self.driver.fetchall(
            f"SELECT model, COUNT(*) AS jobs, SUM({PIXELSTEPS}) AS pixelsteps FROM queue GROUP BY model"
        )

    async def queued_pixelsteps(self) -> float:
        """Pixel-steps of every waiting job, each counted once whatever the number of its models."""
        row = await self.driver.fetchone(
            f"SELECT SUM({PIXELSTEPS}) AS pixelsteps FROM (SELECT DISTINCT job_id, pixels, steps FROM queue) AS waiting"
        )
        return float(row["pixelsteps"] or 0) if row else 0.0

    async def queued_requests(self) -> int:
        row = await self.driver.fetchone("SELECT COUNT(DISTINCT request_id) AS n FROM queue")
        return int(row["n"]) if row else 0
