"""Replay protection's record: the (signer, nonce) pairs of signed requests, kept in the database on
every engine, so a restart forgets nothing and, on PostgreSQL, a request accepted by one process is a
replay to every other."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # base.py calls this module
    from coordinator.storage.base import Driver

# How often a process deletes signature nonces older than twice the clock window.
PRUNE_SECONDS = 60.0


async def record_nonce(driver: Driver, signer: str, nonce: str, now: float, *, prune_before: float | None) -> bool:
    """Record the pair; True if it was not there yet. `prune_before`: first forget pairs seen before then."""
    if prune_before is not None:
        await prune(driver, prune_before)
    inserted = await driver.execute(
        "INSERT INTO signature_nonces (signer, nonce, seen) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (signer, nonce, now),
    )
    return inserted == 1


async def prune(driver: Driver, before: float) -> None:
    """Forget the pairs seen before `before`."""
    await driver.execute("DELETE FROM signature_nonces WHERE seen < ?", (before,))
