"""Shared keys' rows (migration 009): the record, and the statements both engines run on it."""

import json
from dataclasses import dataclass

from coordinator.storage.base import Row
from coordinator.storage.sql import Tx

UNLIMITED = -1


@dataclass
class SharedKey:
    key_hash: str  # the keyed hash of the key (coordinator/tokens.py); the key itself is never stored
    owner_id: int
    created: float
    kudos: int  # the most its images may be charged in all (-1: no limit but the owner's balance)
    expiry: float | None  # when it stops working (None: never)
    name: str | None = None
    utilized: float = 0.0  # kudos its delivered images were charged
    max_image_pixels: int = UNLIMITED
    max_image_steps: int = UNLIMITED
    max_text_tokens: int = UNLIMITED

    def info(self) -> str:
        return json.dumps(
            {
                "kudos": self.kudos,
                "expiry": self.expiry,
                "name": self.name,
                "max_image_pixels": self.max_image_pixels,
                "max_image_steps": self.max_image_steps,
                "max_text_tokens": self.max_text_tokens,
            }
        )


def from_row(row: Row) -> SharedKey:
    return SharedKey(
        key_hash=row["key_hash"],
        owner_id=row["owner_id"],
        created=row["created"],
        utilized=round(float(row["utilized"]), 2),
        **json.loads(row["info"]),
    )


async def insert_key(tx: Tx, key: SharedKey) -> None:
    await tx.driver.execute(
        "INSERT INTO shared_keys (key_hash, owner_id, created, utilized, info) VALUES (?, ?, ?, ?, ?)",
        (key.key_hash, key.owner_id, key.created, key.utilized, key.info()),
    )


async def key_by_hash(tx: Tx, key_hash: str) -> SharedKey | None:
    row = await tx.driver.fetchone("SELECT * FROM shared_keys WHERE key_hash = ?", (key_hash,))
    return from_row(row) if row else None


async def count_keys(tx: Tx, owner_id: int) -> int:
    row = await tx.driver.fetchone("SELECT COUNT(*) AS n FROM shared_keys WHERE owner_id = ?", (owner_id,))
    return int(row["n"]) if row else 0


async def save_settings(tx: Tx, key: SharedKey) -> None:
    await tx.driver.execute("UPDATE shared_keys SET info = ? WHERE key_hash = ?", (key.info(), key.key_hash))


async def delete_key(tx: Tx, key_hash: str) -> None:
    await tx.driver.execute("DELETE FROM shared_keys WHERE key_hash = ?", (key_hash,))


async def add_utilized(tx: Tx, key_hash: str, amount: float) -> None:
    """A delivered image's charge, counted against the key it was funded through (none left: deleted)."""
    await tx.driver.execute(
        "UPDATE shared_keys SET utilized = utilized + ? WHERE key_hash = ?", (round(amount, 2), key_hash)
    )


async def key_reserved(tx: Tx, key_hash: str) -> float:
    """What the key's unfinished funded images hold: the same reservation rule as an account's
    (`Tx.requester_load`), from the jobs themselves, so cancel, fault and expiry release it by themselves.
    A cancelled request's image still being made may yet be delivered and charged."""
    row = await tx.driver.fetchone(
        "SELECT COALESCE(SUM(j.charge), 0) AS reserved FROM requests AS r JOIN jobs AS j ON j.request_id = r.id "
        "WHERE r.sharedkey = ? AND r.state IN ('active', 'cancelled') AND j.state IN ('waiting', 'processing')",
        (key_hash,),
    )
    return round(float(row["reserved"]), 2) if row else 0.0
