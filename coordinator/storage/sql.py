"""The SQL primitives both engines share (the queue's are storage/queue.py's, a job's hand-over to a node and
its settlement storage/handover.py's, the statistics' storage/stats.py's, mixed into `Tx`). Every statement
uses `?` placeholders; the PostgreSQL driver rewrites them. Rules (who may do what, prices, retries) live in the
broker; this module only reads and writes rows.
"""

from typing import Any

from coordinator.metrics import TimedDriver
from coordinator.storage.base import Driver, NameTaken, NotEnoughKudos, Row
from coordinator.storage.handover import LEDGER_HEAD, HandoverStatements, ledger_head_of
from coordinator.storage.queue import QueueStatements
from coordinator.storage.records import Account, JobRecord, RequestRecord, Worker
from coordinator.storage.rows import (
    JOB_COLUMNS,
    REQUEST_COLUMNS,
    WORKER_COLUMNS,
    account_from_row,
    job_from_row,
    join_record,
    split_record,
)
from coordinator.storage.stats import StatsStatements
from protocol.ledger import Kind, LedgerEntry, from_hundredths, hundredths, round_kudos

# Add a count of hundredths (the first parameter, negative to take) to one account's cached balance.
ADD_TO_BALANCE = "UPDATE accounts SET kudos_hundredths = kudos_hundredths + ? WHERE id = ?"
# A request's row (`request_id` NULL), then its jobs' rows, in one result: the columns of both tables side by side.
REQUEST_AND_JOBS = (
    f"SELECT {', '.join(REQUEST_COLUMNS)}, info, NULL AS request_id, NULL AS idx, NULL AS worker_id, "
    "NULL AS deadline, NULL AS requester, NULL AS charge FROM requests WHERE id = ? "
    # A job's own id and state line up under the request's; the request's other columns are NULL for it.
    f"UNION ALL SELECT {', '.join(c if c in ('id', 'state') else 'NULL' for c in REQUEST_COLUMNS)}, info, "
    "request_id, idx, worker_id, deadline, requester, charge FROM jobs WHERE request_id = ? ORDER BY idx NULLS FIRST"
)
# A worker's name in any case, as each engine indexes it (SQLite's column is NOCASE: lower(name) scanned every row).
WORKER_NAME_IS = {"sqlite": "name = ?", "postgresql": "lower(name) = lower(?)"}
# Another worker with this name or key as two lookups (SQLite scanned every worker for `a OR b`, per pop's save).
NAME_OR_KEY_TAKEN = (
    "SELECT id FROM workers WHERE {} AND id <> ? UNION ALL SELECT id FROM workers WHERE public_key = ? AND id <> ?"
)
# Workers whose automatic maintenance has run out, each engine's way, in the words of its partial index
# `workers_maintenance_until` (migration 016): the query must name the index's condition to read it.
MAINTENANCE_OVER = {
    "sqlite": "SELECT id FROM workers WHERE json_extract(info, '$.maintenance') "
    "AND json_extract(info, '$.maintenance_until') <= ?",
    "postgresql": "SELECT id FROM workers WHERE (info::jsonb ->> 'maintenance')::boolean "
    "AND (info::jsonb ->> 'maintenance_until')::double precision <= ?",
}


class Tx(QueueStatements, HandoverStatements, StatsStatements):
    """One unit of work on one connection."""

    def __init__(self, driver: Driver, dialect: str) -> None:
        self.driver = TimedDriver(driver)  # every statement's latency, for /metrics
        self.dialect = dialect
        # The ledger's head as this transaction last wrote it: a second append (a result pays the
        # node and charges the requester) needs no second read, since the lock is held until commit.
        self._ledger_head: tuple[int, str] | None = None
        self._ledger_locked = False

    def announce(self, channel: str, payload: str) -> None:
        """Tell the other coordinator processes once this transaction commits (`Driver.announce`)."""
        self.driver.announce(channel, payload)

    async def lock_ledger(self) -> None:
        """Serialize ledger appends across processes (SQLite's write lock already does). Held until
        commit, so taken once per transaction."""
        if self.dialect == "postgresql" and not self._ledger_locked:
            await self.driver.execute("SELECT pg_advisory_xact_lock(7301)")
            self._ledger_locked = True

    # --- accounts -------------------------------------------------------------------
    async def create_account(self, username: str, apikey_hash: str, public_key: str | None, now: float) -> Account:
        taken = await self.driver.fetchone(
            "SELECT id FROM accounts WHERE lower(username) = lower(?) OR public_key = ?",
            (username, public_key),
        )
        if taken:
            raise NameTaken(username)
        row = await self.driver.fetchone(
            "INSERT INTO accounts (username, apikey_hash, public_key, kudos_hundredths, trusted, created) "
            "VALUES (?, ?, ?, 0, 0, ?) RETURNING *",
            (username, apikey_hash, public_key, now),
        )
        assert row is not None
        return account_from_row(row)

    async def account_by(self, column: str, value: Any) -> Account | None:
        assert column in ("id", "apikey_hash", "public_key", "username")
        where = "lower(username) = lower(?)" if column == "username" else f"{column} = ?"
        row = await self.driver.fetchone(f"SELECT * FROM accounts WHERE {where}", (value,))
        return account_from_row(row) if row else None

    async def set_account_trusted(self, account_id: int, trusted: bool) -> None:
        await self.driver.execute("UPDATE accounts SET trusted = ? WHERE id = ?", (int(trusted), account_id))

    async def set_account_moderator(self, account_id: int, moderator: bool) -> None:
        await self.driver.execute("UPDATE accounts SET moderator = ? WHERE id = ?", (int(moderator), account_id))

    async def list_accounts(self, offset: int, limit: int, order: str) -> list[Account]:
        """A page of accounts by kudos (`order` "kudos", the most first) or by age ("age", the oldest first)."""
        by = "kudos_hundredths DESC, id" if order == "kudos" else "id"
        rows = await self.driver.fetchall(f"SELECT * FROM accounts ORDER BY {by} LIMIT ? OFFSET ?", (limit, offset))
        return [account_from_row(row) for row in rows]

    async def cached_hundredths(self) -> dict[int, int]:
        """Every account's cached balance, in the whole hundredths the ledger counts in."""
        rows = await self.driver.fetchall("SELECT id, kudos_hundredths FROM accounts")
        return {row["id"]: int(row["kudos_hundredths"]) for row in rows}

    # --- ledger ---------------------------------------------------------------------
    async def ledger_head(self) -> tuple[int, str]:
        row = await self.driver.fetchone(LEDGER_HEAD) or {}
        return ledger_head_of(row.get("seq"), row.get("hash"))

    async def move_kudos(
        self,
        kind: Kind,
        source: int | None,
        target: int | None,
        amount: float,
        reference: str,
        now: float,
        *,
        require_funds: bool = False,
    ) -> LedgerEntry:
        """Append one ledger entry and update the cached balances it touches, atomically. The balances go
        first and the chain's head is read after them, so the pending writes ride on those statements
        (pg_driver's batching) instead of costing round trips of their own."""
        await self.lock_ledger()
        # The cache counts whole hundredths, as the ledger does: integer addition, exact however many
        # entries touch an account.
        count = hundredths(amount)  # the entry's own amount
        if source is not None:
            guard = " AND kudos_hundredths >= ?" if require_funds else ""
            args: tuple[Any, ...] = (-count, source, count) if require_funds else (-count, source)
            if await self.driver.execute(f"{ADD_TO_BALANCE}{guard}", args) != 1:
                raise NotEnoughKudos(source)
        if target is not None:
            await self.driver.write(ADD_TO_BALANCE, (count, target))
        entry = LedgerEntry.after(
            self._ledger_head or await self.ledger_head(),
            created=now,
            kind=kind,
            source=source,
            target=target,
            amount=amount,
            reference=reference,
        )
        await self.driver.write(
            "INSERT INTO ledger (seq, created, kind, source, target, amount, reference, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.seq,
                entry.created,
                entry.kind,
                entry.source,
                entry.target,
                entry.amount,
                entry.reference,
                entry.prev_hash,
                entry.hash,
            ),
        )
        self._ledger_head = (entry.seq, entry.hash)
        return entry

    async def ledger_entries(self, after: int, limit: int) -> list[LedgerEntry]:
        rows = await self.driver.fetchall("SELECT * FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [LedgerEntry(**row) for row in rows]

    async def account_ledger(self, account_id: int, limit: int) -> list[LedgerEntry]:
        rows = await self.driver.fetchall(
            "SELECT * FROM ledger WHERE source = ? OR target = ? ORDER BY seq DESC LIMIT ?",
            (account_id, account_id, limit),
        )
        return [LedgerEntry(**row) for row in rows]

    async def transfer_by_key(self, source: int, key: str) -> Row | None:
        return await self.driver.fetchone(
            "SELECT * FROM transfers WHERE source = ? AND idempotency_key = ?", (source, key)
        )

    async def remember_transfer(self, source: int, key: str, seq: int, amount: float) -> None:
        await self.driver.write(
            "INSERT INTO transfers (source, idempotency_key, ledger_seq, amount) VALUES (?, ?, ?, ?)",
            (source, key, seq, amount),
        )

    # --- workers --------------------------------------------------------------------
    async def worker_by(self, column: str, value: Any) -> Worker | None:
        assert column in ("id", "name", "public_key")
        where = WORKER_NAME_IS[self.dialect] if column == "name" else f"{column} = ?"
        row = await self.driver.fetchone(f"SELECT * FROM workers WHERE {where}", (value,))
        return join_record(Worker, row, WORKER_COLUMNS) if row else None

    async def save_worker(self, worker: Worker) -> None:
        clash = await self.driver.fetchone(
            NAME_OR_KEY_TAKEN.format(WORKER_NAME_IS[self.dialect]),
            (worker.name, worker.id, worker.public_key, worker.id),
        )
        if clash:
            raise NameTaken(worker.name)
        values, info = split_record(worker, WORKER_COLUMNS)
        await self.driver.execute(
            "INSERT INTO workers (id, name, owner_id, public_key, info) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, public_key = excluded.public_key, "
            "info = excluded.info",
            (*values, info),
        )

    async def save_worker_state(self, worker: Worker) -> None:
        """Save what changes as a node works (counters, maintenance), never its name or key:
        no uniqueness to check, unlike `save_worker`."""
        _values, info = split_record(worker, WORKER_COLUMNS)
        await self.driver.write("UPDATE workers SET info = ? WHERE id = ?", (info, worker.id))

    async def count_workers(self, owner_id: int) -> int:
        """The account's workers, online or not. On PostgreSQL the account's row stays locked until
        commit, so two first pops of new names by one account count one after the other (SQLite has
        one writer at a time anyway)."""
        if self.dialect == "postgresql":
            await self.driver.execute("SELECT id FROM accounts WHERE id = ? FOR UPDATE", (owner_id,))
        row = await self.driver.fetchone("SELECT COUNT(*) AS n FROM workers WHERE owner_id = ?", (owner_id,))
        return int(row["n"]) if row else 0

    async def list_workers(self, owner_id: int | None = None) -> list[Worker]:
        """Every worker by name, or one account's."""
        where, args = ("WHERE owner_id = ? ", (owner_id,)) if owner_id is not None else ("", ())
        rows = await self.driver.fetchall(f"SELECT * FROM workers {where}ORDER BY name", args)
        return [join_record(Worker, row, WORKER_COLUMNS) for row in rows]

    async def maintenance_over_ids(self, now: float) -> list[str]:
        """The workers whose automatic maintenance has run its clean period (`roster.maintenance_over`), found by
        the database: upkeep asks every few seconds, and reading every worker was O(nodes) each time."""
        rows = await self.driver.fetchall(MAINTENANCE_OVER[self.dialect], (now,))
        return [row["id"] for row in rows]

    async def delete_worker(self, worker_id: str) -> None:
        await self.driver.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    # --- requests and jobs ------------------------------------------------------------
    async def insert_request(self, request: RequestRecord) -> None:
        values, info = split_record(request, REQUEST_COLUMNS)
        await self.driver.write(
            "INSERT INTO requests (id, account_id, created, updated, state, sharedkey, info) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*values, info),
        )

    async def update_request(self, request: RequestRecord) -> None:
        _values, info = split_record(request, REQUEST_COLUMNS)
        await self.driver.write(
            "UPDATE requests SET updated = ?, state = ?, info = ? WHERE id = ?",
            (request.updated, request.state, info, request.id),
        )

    async def set_request_state(self, request: RequestRecord) -> None:
        """Save only the request's state and time (its body and the rest are unchanged)."""
        await self.driver.write(
            "UPDATE requests SET updated = ?, state = ? WHERE id = ?", (request.updated, request.state, request.id)
        )

    async def get_request(self, request_id: str) -> RequestRecord | None:
        row = await self.driver.fetchone("SELECT * FROM requests WHERE id = ?", (request_id,))
        return join_record(RequestRecord, row, REQUEST_COLUMNS) if row else None

    async def insert_jobs(self, jobs: list[JobRecord]) -> None:
        rows = []
        for job in jobs:
            values, info = split_record(job, JOB_COLUMNS)
            rows.append((*values, info))
        await self.driver.executemany(
            "INSERT INTO jobs (id, request_id, idx, state, worker_id, deadline, requester, charge, info) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    async def save_job(self, job: JobRecord) -> None:
        _values, info = split_record(job, JOB_COLUMNS)
        await self.driver.write(
            "UPDATE jobs SET state = ?, worker_id = ?, deadline = ?, info = ? WHERE id = ?",
            (job.state, job.worker_id, job.deadline, info, job.id),
        )

    async def request_and_jobs(self, request_id: str) -> tuple[RequestRecord | None, list[JobRecord]]:
        """A request and its jobs in index order, in one statement (a check or a status)."""
        rows = await self.driver.fetchall(REQUEST_AND_JOBS, (request_id, request_id))
        if not rows or rows[0]["request_id"] is not None:  # the request's own row comes first
            return None, []
        request = join_record(RequestRecord, rows[0], REQUEST_COLUMNS)
        return request, [job_from_row(row) for row in rows[1:]]

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = await self.driver.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return job_from_row(row) if row else None

    async def jobs_of(self, request_id: str) -> list[JobRecord]:
        rows = await self.driver.fetchall("SELECT * FROM jobs WHERE request_id = ? ORDER BY idx", (request_id,))
        return [job_from_row(row) for row in rows]

    async def requester_load(self, requester: str) -> tuple[int, float]:
        """A requester's unfinished images and the kudos reserved for them (the funded ones' prices).

        Computed from the jobs themselves, so a delivery, cancel, fault or expiry releases its share
        with no bookkeeping of its own."""
        row = await self.driver.fetchone(
            "SELECT COUNT(*) AS n, COALESCE(SUM(charge), 0) AS reserved FROM jobs "
            "WHERE requester = ? AND state IN ('waiting', 'processing')",
            (requester,),
        )
        return (int(row["n"]), round_kudos(row["reserved"])) if row else (0, 0.0)

    async def requester_funds(self, requester: str, account_id: int | None) -> tuple[int, float, float | None]:
        """`requester_load` and the account's balance (None: no such account, or anonymous), in one statement."""
        row = await self.driver.fetchone(
            "SELECT COUNT(*) AS n, COALESCE(SUM(charge), 0) AS reserved, "
            "(SELECT kudos_hundredths FROM accounts WHERE id = ?) AS balance FROM jobs "
            "WHERE requester = ? AND state IN ('waiting', 'processing')",
            (account_id, requester),
        )
        assert row is not None  # an aggregate always answers one row
        balance = from_hundredths(int(row["balance"])) if row["balance"] is not None else None
        return int(row["n"]), round(float(row["reserved"]), 2), balance

    async def jobs_by_ids(self, job_ids: list[str]) -> list[JobRecord]:
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        rows = await self.driver.fetchall(f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY idx", job_ids)
        return [job_from_row(row) for row in rows]

    async def jobs_in_progress(self, limit: int) -> list[JobRecord]:
        """Jobs nodes hold now (the partial index `jobs_in_flight`), for the wait forecast."""
        rows = await self.driver.fetchall(
            "SELECT * FROM jobs WHERE state = 'processing' ORDER BY deadline LIMIT ?", (limit,)
        )
        return [job_from_row(row) for row in rows]

    async def overdue_jobs(self, now: float, limit: int = 500) -> list[JobRecord]:
        rows = await self.driver.fetchall(
            "SELECT * FROM jobs WHERE state = 'processing' AND deadline < ? LIMIT ?", (now, limit)
        )
        return [job_from_row(row) for row in rows]

    async def stale_requests(self, before: float, limit: int = 500) -> list[RequestRecord]:
        rows = await self.driver.fetchall(
            "SELECT * FROM requests WHERE state = 'active' AND updated < ? LIMIT ?", (before, limit)
        )
        return [join_record(RequestRecord, row, REQUEST_COLUMNS) for row in rows]

    async def finished_requests(self, before: float, limit: int = 500) -> list[RequestRecord]:
        rows = await self.driver.fetchall(
            "SELECT * FROM requests WHERE state <> 'active' AND updated < ? LIMIT ?", (before, limit)
        )
        return [join_record(RequestRecord, row, REQUEST_COLUMNS) for row in rows]

    async def delete_request(self, request_id: str) -> None:
        await self.driver.execute("DELETE FROM queue WHERE request_id = ?", (request_id,))
        await self.driver.execute("DELETE FROM jobs WHERE request_id = ?", (request_id,))
        await self.driver.execute("DELETE FROM requests WHERE id = ?", (request_id,))

    async def jobs_by_state(self) -> dict[str, int]:
        rows = await self.driver.fetchall("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}
