"""Writes held back and sent together: several INSERT/UPDATE/DELETE statements as one PostgreSQL statement.

A write nobody needs an answer from (`Driver.write`) waits in a `WriteBatch` until the transaction needs the
server for something else; then the batch goes as the data-modifying CTEs of that one statement, in the
order the writes were made:

    WITH w1 AS (UPDATE jobs ... RETURNING 1), w2 AS (INSERT INTO stats ... RETURNING 1), ...
    SELECT (SELECT count(*) FROM w1) AS n1, (SELECT count(*) FROM w2) AS n2, ...

Each `count(*)` runs its CTE to completion when the select list reaches it, so the writes happen in order
(the order locks are taken in, which the callers rely on to avoid deadlocks), and the last one's count is
the answer to an `execute` that closes the batch. All parts of one statement read the same snapshot, so a
write must not depend on another in its batch: a table written by an UPDATE, a DELETE or an upsert takes no
second write in the same batch (a row updated twice in one statement keeps one update), and a table that
received plain INSERTs takes more INSERTs only. Writes that read other tables (none of ours do) must not be
batched at all.
"""

import re
from functools import lru_cache
from typing import Any

# The statement's verb and table; anything else is not batched.
WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)", re.IGNORECASE)
# An INSERT with one row of placeholders, which `executemany` repeats (`rows_as_one`).
ONE_ROW = re.compile(r"^(\s*INSERT\s+INTO\s+\w+\s*\([^)]*\)\s*VALUES\s*)(\([^)]*\))(.*)$", re.IGNORECASE | re.DOTALL)
# asyncpg prepares and caches statements up to 15 KiB; a longer one would cost a second round trip.
MAX_STATEMENT_CHARS = 12_000


@lru_cache(maxsize=2048)  # statements are the code's few texts; every write asks, several times
def _kind(sql: str) -> tuple[str, bool] | None:
    """(table, plain insert) of a batchable write, else None."""
    match = WRITE.match(sql)
    if match is None or re.search(r"\bRETURNING\b", sql, re.IGNORECASE):
        return None
    plain = match.group(1).upper().startswith("INSERT") and not re.search(r"\bON\s+CONFLICT\b", sql, re.IGNORECASE)
    return match.group(2).lower(), plain


def rows_as_one(sql: str, rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]] | None:
    """`executemany`'s INSERT of `rows` as one multi-row INSERT, or None when it does not fit one statement."""
    match = ONE_ROW.match(sql)
    if match is None:
        return None
    head, row, tail = match.groups()
    statement = head + ", ".join([row] * len(rows)) + tail
    if len(statement) > MAX_STATEMENT_CHARS:
        return None
    return statement, [value for values in rows for value in values]


class WriteBatch:
    """The writes of one transaction not sent yet, with `?` placeholders."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[Any]]] = []
        self.tables: dict[str, bool] = {}  # table → only plain INSERTs so far

    def __bool__(self) -> bool:
        return bool(self.statements)

    def takes(self, sql: str) -> bool:
        """Whether `sql` can join the batch (else: send the batch first, or send `sql` on its own)."""
        kind = _kind(sql)
        if kind is None:
            return False
        table, plain = kind
        if table in self.tables and not (plain and self.tables[table]):
            return False
        chars = sum(len(statement) for statement, _ in self.statements)
        return chars + len(sql) <= MAX_STATEMENT_CHARS

    def add(self, sql: str, args: list[Any]) -> None:
        """Add a write that `takes` accepted."""
        kind = _kind(sql)
        assert kind is not None
        table, plain = kind
        self.tables[table] = self.tables.get(table, True) and plain
        self.statements.append((sql, args))

    def statement(self) -> tuple[str, list[Any]]:
        """The batch as one statement (`?` placeholders, in order); its last column counts the last write's rows."""
        parts = [f"w{index} AS ({sql} RETURNING 1)" for index, (sql, _) in enumerate(self.statements)]
        counts = [f"(SELECT count(*) FROM w{index}) AS n{index}" for index in range(len(self.statements))]
        args = [value for _, values in self.statements for value in values]
        return f"WITH {', '.join(parts)} SELECT {', '.join(counts)}", args

    def clear(self) -> None:
        self.statements.clear()
        self.tables.clear()
