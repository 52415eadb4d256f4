"""How records become rows and back: the columns that queries filter on are columns, the rest of
each record is one JSON `info` column (so a record can grow without a migration)."""

import functools
import json
from dataclasses import fields
from typing import Any

from coordinator.storage.base import Row
from coordinator.storage.records import Account, JobRecord
from protocol.ledger import from_hundredths

WORKER_COLUMNS = ("id", "name", "owner_id", "public_key")
REQUEST_COLUMNS = ("id", "account_id", "created", "updated", "state", "sharedkey")  # sharedkey never changes
# `index` is the `idx` column; `requester` and `charge` never change after the insert.
JOB_COLUMNS = ("id", "request_id", "index", "state", "worker_id", "deadline", "requester", "charge")


def account_from_row(row: Row) -> Account:
    return Account(
        id=row["id"],
        username=row["username"],
        public_key=row["public_key"],
        kudos=from_hundredths(int(row["kudos_hundredths"])),  # the column counts whole hundredths
        trusted=bool(row["trusted"]),
        created=row["created"],
        moderator=bool(row["moderator"]),
    )


def split_record(record: Any, columns: tuple[str, ...]) -> tuple[list[Any], str]:
    """Values for the indexed columns, and the rest of the record as JSON."""
    # A shallow copy: json.dumps walks nested dicts and lists itself; `asdict` deep-copied them first (5× slower).
    data = {name: getattr(record, name) for name in _field_names(record.__class__)}
    info = {key: value for key, value in data.items() if key not in columns}
    return [data[column] for column in columns], json.dumps(info)


def join_record(cls: type, row: Row, columns: tuple[str, ...]) -> Any:
    data = json.loads(row["info"])
    data.update({column: row[column] for column in columns})
    known = _field_names(cls)
    return cls(**{key: value for key, value in data.items() if key in known})


def job_from_row(row: Row) -> JobRecord:
    row = dict(row)
    row["index"] = row.pop("idx")
    return join_record(JobRecord, row, JOB_COLUMNS)


@functools.cache
def _field_names(cls: Any) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))
