"""Escrow rows (migration 010): what each held reward is, whose, and when it is due (coordinator/escrow.py).
The statements both engines run on it, on the caller's transaction."""

from dataclasses import dataclass

from coordinator.storage.base import Row
from coordinator.storage.records import HoldState
from coordinator.storage.sql import Tx


@dataclass(frozen=True)
class HeldSum:
    amount: float
    entries: int
    soonest: float | None


async def insert_hold(
    tx: Tx,
    worker_id: str,
    owner_id: int,
    job_id: str | None,
    amount: float,
    reference: str,
    now: float,
    release_at: float,
) -> None:
    await tx.driver.execute(
        "INSERT INTO escrow (worker_id, owner_id, job_id, amount, reference, created, release_at, state) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'held')",
        (worker_id, owner_id, job_id, amount, reference, now, release_at),
    )


async def hold_until(tx: Tx, job_id: str, until: float) -> None:
    """Keep the job's held reward until `until` at least (never shortens a hold)."""
    await tx.driver.execute(
        "UPDATE escrow SET release_at = ? WHERE job_id = ? AND state = 'held' AND release_at < ?",
        (until, job_id, until),
    )


async def due_holds(tx: Tx, now: float, limit: int) -> list[Row]:
    return await tx.driver.fetchall(
        "SELECT * FROM escrow WHERE state = 'held' AND release_at <= ? ORDER BY release_at LIMIT ?", (now, limit)
    )


async def holds_of_worker(tx: Tx, worker_id: str) -> list[Row]:
    return await tx.driver.fetchall("SELECT * FROM escrow WHERE worker_id = ? AND state = 'held'", (worker_id,))


async def set_hold_state(tx: Tx, hold_id: int, state: HoldState) -> None:
    await tx.driver.execute("UPDATE escrow SET state = ? WHERE id = ?", (state, hold_id))


async def held_sum(tx: Tx, column: str, value: object) -> HeldSum:
    """What is held for an owner (`owner_id`) or a node (`worker_id`)."""
    assert column in ("owner_id", "worker_id")
    row = await tx.driver.fetchone(
        f"SELECT COALESCE(SUM(amount), 0) AS amount, COUNT(*) AS n, MIN(release_at) AS soonest FROM escrow "
        f"WHERE {column} = ? AND state = 'held'",
        (value,),
    )
    if row is None:
        return HeldSum(0.0, 0, None)
    return HeldSum(round(float(row["amount"]), 2), int(row["n"]), row["soonest"])
