"""Styles' rows (migration 009): the record, and the statements both engines run on it."""

import json
from dataclasses import dataclass, field
from typing import Any

from coordinator.storage.base import NameTaken, Row
from coordinator.storage.sql import Tx

COLUMNS = ("id", "name", "owner_id", "public", "use_count", "created", "updated")
LISTED_MAX = 10_000  # public styles a list query looks through (tags and models are filtered in Python)


@dataclass
class StyleRecord:
    id: str
    name: str
    owner_id: int
    public: bool
    created: float
    updated: float
    prompt: str
    use_count: int = 0
    info: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # only the params its creator set
    nsfw: bool = False
    tags: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)

    def extra(self) -> str:
        return json.dumps(
            {
                "prompt": self.prompt,
                "info": self.info,
                "params": self.params,
                "nsfw": self.nsfw,
                "tags": self.tags,
                "models": self.models,
                "policy": self.policy,
            }
        )


def _from_row(row: Row) -> StyleRecord:
    data = {column: row[column] for column in COLUMNS}
    data["public"] = bool(data["public"])
    return StyleRecord(**data, **json.loads(row["info"]))


async def insert_style(tx: Tx, style: StyleRecord) -> None:
    if await style_by(tx, "name", style.name):
        raise NameTaken(style.name)
    await tx.driver.execute(
        "INSERT INTO styles (id, name, owner_id, public, use_count, created, updated, info) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            style.id,
            style.name,
            style.owner_id,
            int(style.public),
            style.use_count,
            style.created,
            style.updated,
            style.extra(),
        ),
    )


async def save_style(tx: Tx, style: StyleRecord) -> None:
    other = await style_by(tx, "name", style.name)
    if other is not None and other.id != style.id:
        raise NameTaken(style.name)
    await tx.driver.execute(
        "UPDATE styles SET name = ?, public = ?, updated = ?, info = ? WHERE id = ?",
        (style.name, int(style.public), style.updated, style.extra(), style.id),
    )


async def style_by(tx: Tx, column: str, value: str) -> StyleRecord | None:
    assert column in ("id", "name")
    where = "lower(name) = lower(?)" if column == "name" else "id = ?"
    row = await tx.driver.fetchone(f"SELECT * FROM styles WHERE {where}", (value,))
    return _from_row(row) if row else None


async def count_styles(tx: Tx, owner_id: int) -> int:
    row = await tx.driver.fetchone("SELECT COUNT(*) AS n FROM styles WHERE owner_id = ?", (owner_id,))
    return int(row["n"]) if row else 0


async def public_styles(tx: Tx, order: str) -> list[StyleRecord]:
    """Public styles, the most used (`popular`) or the newest (`age`) first."""
    by = "use_count DESC, created" if order == "popular" else "created DESC"
    rows = await tx.driver.fetchall(f"SELECT * FROM styles WHERE public = 1 ORDER BY {by} LIMIT {LISTED_MAX}")
    return [_from_row(row) for row in rows]


async def delete_style(tx: Tx, style_id: str) -> None:
    await tx.driver.execute("DELETE FROM styles WHERE id = ?", (style_id,))


async def count_use(tx: Tx, style_id: str) -> None:
    await tx.driver.execute("UPDATE styles SET use_count = use_count + 1 WHERE id = ?", (style_id,))
