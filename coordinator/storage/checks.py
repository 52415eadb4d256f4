"""Spot checks', verdicts' and canaries' rows (migration 010): the statements both engines run on them, on the
caller's transaction (coordinator/verification.py, verdicts.py, canaries.py)."""

import json
from typing import Any

from coordinator.storage.base import Row
from coordinator.storage.sql import Tx

PENDING = "pending"


# --- checks --------------------------------------------------------------------------
async def insert_check(tx: Tx, job_id: str, subject_job: str, round_: int, now: float, info: dict[str, Any]) -> None:
    await tx.driver.execute(
        "INSERT INTO checks (job_id, subject_job, round, state, created, info) VALUES (?, ?, ?, 'pending', ?, ?)",
        (job_id, subject_job, round_, now, json.dumps(info)),
    )


async def pending_check(tx: Tx, job_id: str) -> Row | None:
    """The open check whose check job is `job_id` (its `info` decoded)."""
    row = await tx.driver.fetchone("SELECT * FROM checks WHERE job_id = ? AND state = 'pending'", (job_id,))
    return {**row, "info": json.loads(row["info"])} if row else None


async def set_check_state(tx: Tx, job_id: str, state: str) -> None:
    await tx.driver.execute("UPDATE checks SET state = ? WHERE job_id = ?", (state, job_id))


async def lapsed_checks(tx: Tx) -> list[Row]:
    """Open checks whose job will never be delivered: cancelled (its request expired or was cancelled) or
    faulted. (job_id, job_state)"""
    return await tx.driver.fetchall(
        "SELECT c.job_id, j.state AS job_state FROM checks c JOIN jobs j ON j.id = c.job_id "
        "WHERE c.state = 'pending' AND j.state IN ('cancelled', 'faulted')"
    )


async def checks_of_subject(tx: Tx, subject_job: str) -> list[Row]:
    """Every check of one image, oldest first: (job_id, round, state, created)."""
    return await tx.driver.fetchall(
        "SELECT job_id, round, state, created FROM checks WHERE subject_job = ? ORDER BY created, round",
        (subject_job,),
    )


async def canaries_pending(tx: Tx) -> set[str]:
    """The nodes with a canary still open (one at a time per node)."""
    rows = await tx.driver.fetchall("SELECT info FROM checks WHERE state = 'pending' AND round = 1")
    return {canary for row in rows if (canary := json.loads(row["info"]).get("canary"))}


async def workers_of(tx: Tx, owners: list[int]) -> list[str]:
    """Every node of these owners."""
    if not owners:
        return []
    marks = ",".join("?" * len(owners))
    rows = await tx.driver.fetchall(f"SELECT id FROM workers WHERE owner_id IN ({marks})", owners)
    return [row["id"] for row in rows]


# --- verdicts ------------------------------------------------------------------------
async def insert_verdict(tx: Tx, job_id: str, worker_id: str, outcome: str, now: float, info: str) -> int:
    row = await tx.driver.fetchone(
        "INSERT INTO verdicts (job_id, worker_id, outcome, created, info) VALUES (?, ?, ?, ?, ?) RETURNING id",
        (job_id, worker_id, outcome, now, info),
    )
    assert row is not None
    return int(row["id"])


async def verdicts_of(tx: Tx, job_id: str) -> list[str]:
    """The signed verdicts (JSON) about one image, oldest first."""
    rows = await tx.driver.fetchall("SELECT info FROM verdicts WHERE job_id = ? ORDER BY id", (job_id,))
    return [row["info"] for row in rows]


# --- canaries' reference set -----------------------------------------------------------
async def add_reference(tx: Tx, job_id: str, now: float, keep: int) -> None:
    """A reference image joins the set; the oldest leave beyond `keep`."""
    await tx.driver.execute(
        "INSERT INTO canaries (job_id, created) VALUES (?, ?) ON CONFLICT DO NOTHING", (job_id, now)
    )
    await tx.driver.execute(
        "DELETE FROM canaries WHERE job_id NOT IN (SELECT job_id FROM canaries ORDER BY created DESC LIMIT ?)",
        (keep,),
    )


async def newest_references(tx: Tx, limit: int) -> list[str]:
    rows = await tx.driver.fetchall(
        "SELECT c.job_id FROM canaries c JOIN jobs j ON j.id = c.job_id ORDER BY c.created DESC LIMIT ?", (limit,)
    )
    return [row["job_id"] for row in rows]


# --- the free check: delivered images' pixel hashes (migration 014) ----------------------------
async def earlier_image(tx: Tx, pixels_sha256: str, recipe: str) -> Row | None:
    """An earlier delivered image with these pixels but another recipe (job_id, worker_id), if any."""
    return await tx.driver.fetchone(
        "SELECT job_id, worker_id FROM image_prints WHERE pixels_sha256 = ? AND recipe <> ? LIMIT 1",
        (pixels_sha256, recipe),
    )


async def insert_print(tx: Tx, job_id: str, pixels_sha256: str, recipe: str, worker_id: str, now: float) -> None:
    await tx.driver.execute(
        "INSERT INTO image_prints (job_id, pixels_sha256, recipe, worker_id, created) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (job_id, pixels_sha256, recipe, worker_id, now),
    )
