"""Escrow: a node's rewards are held until its verification window closes (docs/security.md, "Verified work").

Every reward a node earns (an image's, uptime) is first *held*: a ledger entry of kind `hold` moves it to
the network's escrow account, and an `escrow` row says whose it is and when it is due. When the window
closes with no failed check, a `release` entry moves it on to the node's owner; a failed check
`forfeit`s everything the node still holds to the network. All three name the node in their reference
(`hold:WORKER:WHAT`), so anyone reading the public ledger can follow a node's verified record, and the
audit sees the escrow account like any other: the sum of what it holds is its balance.

These run inside the caller's transaction, under the ledger's lock.
"""

from dataclasses import dataclass

from coordinator.storage import escrow as escrow_rows
from coordinator.storage.records import Account
from coordinator.storage.sql import Tx

# System accounts hold no apikey: their `apikey_hash` is a value no keyed hash (hex) can equal.
ESCROW, VERIFIER = "escrow", "verifier"
SYSTEM_NAMES = {ESCROW: "horde-escrow", VERIFIER: "horde-verifier"}


def system_hash(role: str) -> str:
    return f"system:{role}"


async def system_account(tx: Tx, role: str, now: float) -> Account:
    """The network's own account for `role`, created on first use (under the ledger's lock, so two
    processes cannot both create it). A user who took the name first only moves it aside."""
    await tx.lock_ledger()
    account = await tx.account_by("apikey_hash", system_hash(role))
    if account is not None:
        return account
    name = SYSTEM_NAMES[role]
    if await tx.account_by("username", name) is not None:
        name = f"{name}-{int(now)}"
    return await tx.create_account(name, system_hash(role), None, now)


@dataclass(frozen=True)
class Held:
    """What a node's owner has in escrow: in all, and the part due soonest."""

    amount: float
    entries: int
    next_release: float | None


async def hold(
    tx: Tx, worker_id: str, owner_id: int, amount: float, what: str, job_id: str | None, now: float, window: float
) -> None:
    """Mint `amount` into escrow for the node (a funded image's price was burned by its `spend`)."""
    escrow = await system_account(tx, ESCROW, now)
    reference = f"hold:{worker_id}:{what}"
    entry = await tx.move_kudos("hold", None, escrow.id, amount, reference, now)
    await escrow_rows.insert_hold(tx, worker_id, owner_id, job_id, entry.amount, what, now, now + window)


async def extend(tx: Tx, job_id: str, until: float) -> None:
    """Keep a checked image's reward held until its check can conclude."""
    await escrow_rows.hold_until(tx, job_id, until)


async def release_due(tx: Tx, now: float, limit: int = 500) -> int:
    """Release every hold whose window has closed: escrow → the node's owner."""
    rows = await escrow_rows.due_holds(tx, now, limit)
    if not rows:
        return 0
    escrow = await system_account(tx, ESCROW, now)
    for row in rows:
        await escrow_rows.set_hold_state(tx, row["id"], "released")
        reference = f"release:{row['worker_id']}:{row['reference']}"
        await tx.move_kudos("release", escrow.id, row["owner_id"], row["amount"], reference, now)
    return len(rows)


async def forfeit(tx: Tx, worker_id: str, verdict_id: int, now: float) -> float:
    """Everything the node still holds goes to the network: its window did not close clean."""
    rows = await escrow_rows.holds_of_worker(tx, worker_id)
    if not rows:
        return 0.0
    escrow = await system_account(tx, ESCROW, now)
    total = 0.0
    for row in rows:
        await escrow_rows.set_hold_state(tx, row["id"], "forfeited")
        reference = f"forfeit:{worker_id}:{row['reference']}:verdict:{verdict_id}"
        await tx.move_kudos("forfeit", escrow.id, None, row["amount"], reference, now)
        total += row["amount"]
    return round(total, 2)


async def held_by(tx: Tx, column: str, value: object) -> Held:
    """What is held for an owner (`owner_id`) or a node (`worker_id`)."""
    held = await escrow_rows.held_sum(tx, column, value)
    return Held(held.amount, held.entries, held.soonest)
