"""A job's hand-over, mixed into `Tx` (storage/sql.py): the job a pop chose read with what its claim needs, the
claim itself, and a result's settlement read in one statement with everything it pays against."""

from dataclasses import dataclass

from coordinator.storage.base import Driver, Row
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
from protocol.ledger import GENESIS_HASH

# A job's row and its request's (the request's columns prefixed `r_`), for `job_to_claim` and `settling`.
JOB_AND_REQUEST = "j.id, j.request_id, j.idx, j.state, j.worker_id, j.deadline, j.requester, j.charge, j.info, " + (
    ", ".join(f"r.{column} AS r_{column}" for column in (*REQUEST_COLUMNS, "info"))
)
JOB_WITH_REQUEST = "jobs AS j LEFT JOIN requests AS r ON r.id = j.request_id"
# ... with how many jobs the node holds already.
JOB_TO_CLAIM = (
    f"SELECT {JOB_AND_REQUEST}, (SELECT COUNT(*) FROM jobs WHERE state = 'processing' AND worker_id = ?) AS held"
    f" FROM {JOB_WITH_REQUEST} WHERE j.id = ?"
)
ACCOUNT_READ = ("id", "username", "public_key", "kudos_hundredths", "trusted", "created", "moderator")
# ... with the node it is assigned to (`w_`), the requester's account (`a_`), how many of the request's images
# are unfinished, and the ledger's head.
LEDGER_HEAD = "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1"
JOINED = ("r_", "w_", "a_")  # the prefixes of the joined rows' columns; a job's own have none
SETTLING = (
    f"SELECT {JOB_AND_REQUEST}, "
    + ", ".join(f"w.{column} AS w_{column}" for column in (*WORKER_COLUMNS, "info"))
    + ", "
    + ", ".join(f"a.{column} AS a_{column}" for column in ACCOUNT_READ)
    + ", (SELECT COUNT(*) FROM jobs WHERE request_id = j.request_id AND state IN ('waiting', 'processing'))"
    + " AS unfinished, head.seq AS ledger_seq, head.hash AS ledger_hash"
    + f" FROM {JOB_WITH_REQUEST} LEFT JOIN workers AS w ON w.id = j.worker_id"
    + f" LEFT JOIN accounts AS a ON a.id = r.account_id LEFT JOIN ({LEDGER_HEAD}) AS head ON TRUE WHERE j.id = ?"
)


@dataclass
class Settling:
    """A job a result settles, read in one statement: its request, its node, the requester's account, and the
    request's images still waiting or being made (this one among them)."""

    job: JobRecord
    request: RequestRecord
    node: Worker | None
    payer: Account | None
    unfinished: int


def ledger_head_of(seq: int | None, hash_: str | None) -> tuple[int, str]:
    """The ledger's head as `LEDGER_HEAD` read it; an empty ledger's is the genesis."""
    return (seq, hash_) if seq is not None and hash_ is not None else (0, GENESIS_HASH)


def _prefixed(row: Row, prefix: str) -> Row | None:
    """The columns of `row` named `prefix…`, unprefixed; None when the joined row was missing."""
    part = {key[len(prefix) :]: value for key, value in row.items() if key.startswith(prefix)}
    return part if part["id"] is not None else None


def _job_of(row: Row) -> JobRecord:
    """The job from a row of `JOB_AND_REQUEST` and its joins (their own extra columns taken out first)."""
    return job_from_row({key: value for key, value in row.items() if not key.startswith(JOINED)})


class HandoverStatements:
    driver: Driver
    dialect: str
    _ledger_head: tuple[int, str] | None
    _ledger_locked: bool

    async def claim_job(self, job: JobRecord, by_itself: bool = False) -> bool:
        """Move a waiting job to its worker; False when another pop got there first. `by_itself`: the claim is
        the whole transaction (one job, nothing written before it), so it needs no BEGIN (`Driver.execute`)."""
        _values, info = split_record(job, JOB_COLUMNS)
        # Queue rows before the job row: cancelling and faulting also go queue → jobs, so on
        # PostgreSQL the two wait for each other instead of deadlocking. A job that is not
        # waiting has no business in the queue, so the delete is right even if the claim fails.
        await self.driver.write("DELETE FROM queue WHERE job_id = ?", (job.id,))
        claimed = await self.driver.execute(
            "UPDATE jobs SET state = ?, worker_id = ?, deadline = ?, info = ? WHERE id = ? AND state = 'waiting'",
            (job.state, job.worker_id, job.deadline, info, job.id),
            by_itself=by_itself,
        )
        return claimed == 1

    async def job_to_claim(self, job_id: str, worker_id: str) -> tuple[JobRecord, RequestRecord, int] | None:
        """A job a pop chose, its request, and how many jobs the node holds already (given to it, not yet
        delivered, faulted or reissued), in one statement; None without job or request."""
        row = await self.driver.fetchone(JOB_TO_CLAIM, (worker_id, job_id))
        request = _prefixed(row, "r_") if row is not None else None
        if row is None or request is None:
            return None
        held = int(row.pop("held"))
        return _job_of(row), join_record(RequestRecord, request, REQUEST_COLUMNS), held

    async def settling(self, job_id: str) -> Settling | None:
        """A job with all a result settles against, in one statement (`Settling`); None without job or request.
        Under the ledger's lock (`lock_ledger` first), so the ledger's head it read is this transaction's to
        append to (`move_kudos` reads it no more)."""
        assert self._ledger_locked or self.dialect == "sqlite", "the ledger's head is ours only under its lock"
        row = await self.driver.fetchone(SETTLING, (job_id,))
        request = _prefixed(row, "r_") if row is not None else None
        if row is None or request is None:
            return None
        self._ledger_head = self._ledger_head or ledger_head_of(row.pop("ledger_seq"), row.pop("ledger_hash"))
        unfinished = int(row.pop("unfinished"))
        node, payer = _prefixed(row, "w_"), _prefixed(row, "a_")
        return Settling(
            job=_job_of(row),
            request=join_record(RequestRecord, request, REQUEST_COLUMNS),
            node=join_record(Worker, node, WORKER_COLUMNS) if node is not None else None,
            payer=account_from_row(payer) if payer is not None else None,
            unfinished=unfinished,
        )
