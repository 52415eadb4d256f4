"""Who a signed request's credentials name, and whether its nonce is new, read in one go (issue 19).

A node signs every call, most with its owner's apikey too: the apikey's account, the key's node or
account, the node's owner, and the replay record were three round trips to PostgreSQL on every
call. `Database.identities` answers them all; PostgreSQL in one statement (`ONE_STATEMENT`), SQLite
with its in-process reads (`read_identities`). The checks on the answer (which account wins, which
refusal) are coordinator/auth.py's: this module only reads rows and records the nonce."""

import json
from dataclasses import dataclass

from coordinator.storage.base import Row
from coordinator.storage.records import Account, Worker
from coordinator.storage.rows import WORKER_COLUMNS, account_from_row, join_record
from coordinator.storage.sharedkeys import SharedKey, from_row, key_by_hash
from coordinator.storage.sql import Tx


@dataclass(frozen=True)
class Credentials:
    apikey_hash: str | None  # the keyed hash of the `apikey` header; None when none (or the anonymous one) was sent
    shared_allowed: bool  # the apikey may be a shared key
    signer: str  # the signing key's text, as `workers.public_key` and `accounts.public_key` hold it
    nonce: str
    now: float
    # Record the nonce even when the credentials name nobody (a key being registered). Otherwise a request
    # nobody is identified by leaves no row: a stranger with a fresh key cannot fill the table.
    record_unknown: bool


@dataclass
class Identities:
    by_apikey: Account | None = None
    shared: SharedKey | None = None  # the apikey as a shared key, looked up only where allowed and no account has it
    shared_owner: Account | None = None
    worker: Worker | None = None  # the node holding the signing key
    worker_owner: Account | None = None
    key_account: Account | None = None  # the account holding the signing key
    first_use: bool = False  # the nonce was recorded now (False: a replay, or nobody identified)

    def identified(self) -> bool:
        return any(x is not None for x in (self.by_apikey, self.shared_owner, self.worker, self.key_account))


async def read_apikey(tx: Tx, apikey_hash: str, shared_allowed: bool) -> Identities:
    """Whom an apikey names: its account, or (where allowed, and no account has it) a shared key and its owner."""
    found = Identities(by_apikey=await tx.account_by("apikey_hash", apikey_hash))
    if found.by_apikey is None and shared_allowed and (shared := await key_by_hash(tx, apikey_hash)) is not None:
        found.shared, found.shared_owner = shared, await tx.account_by("id", shared.owner_id)
    return found


async def read_identities(tx: Tx, credentials: Credentials) -> Identities:
    """The rows, read one by one (the nonce is the caller's: `Database.identities`)."""
    found = Identities()
    if credentials.apikey_hash is not None:
        found = await read_apikey(tx, credentials.apikey_hash, credentials.shared_allowed)
    found.worker = await tx.worker_by("public_key", credentials.signer)
    if found.worker is not None:
        owner = found.by_apikey
        found.worker_owner = owner if owner and owner.id == found.worker.owner_id else None
        found.worker_owner = found.worker_owner or await tx.account_by("id", found.worker.owner_id)
    else:
        found.key_account = await tx.account_by("public_key", credentials.signer)
    return found


# Every row `read_identities` reads, and the nonce recorded when someone is identified, as one statement.
# Each row comes back as JSON (one column per role); the data-modifying CTE runs whether or not it is read.
ONE_STATEMENT = """
WITH by_apikey AS (SELECT * FROM accounts WHERE apikey_hash = $1::text),
shared AS (
    SELECT * FROM shared_keys WHERE $2::boolean AND key_hash = $1::text AND NOT EXISTS (SELECT FROM by_apikey)
),
shared_owner AS (SELECT a.* FROM accounts AS a JOIN shared AS s ON a.id = s.owner_id),
worker AS (SELECT * FROM workers WHERE public_key = $3::text),
worker_owner AS (SELECT a.* FROM accounts AS a JOIN worker AS w ON a.id = w.owner_id),
key_account AS (SELECT * FROM accounts WHERE public_key = $3::text AND NOT EXISTS (SELECT FROM worker)),
fresh AS (
    INSERT INTO signature_nonces (signer, nonce, seen) SELECT $3::text, $4::text, $5::double precision
    WHERE $6::boolean OR EXISTS (SELECT FROM by_apikey) OR EXISTS (SELECT FROM shared_owner)
        OR EXISTS (SELECT FROM worker) OR EXISTS (SELECT FROM key_account)
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT to_jsonb(t) FROM by_apikey AS t) AS by_apikey, (SELECT to_jsonb(t) FROM shared AS t) AS shared,
    (SELECT to_jsonb(t) FROM shared_owner AS t) AS shared_owner, (SELECT to_jsonb(t) FROM worker AS t) AS worker,
    (SELECT to_jsonb(t) FROM worker_owner AS t) AS worker_owner,
    (SELECT to_jsonb(t) FROM key_account AS t) AS key_account, EXISTS (SELECT FROM fresh) AS fresh
"""


def one_statement_args(credentials: Credentials) -> tuple[object, ...]:
    c = credentials
    return (c.apikey_hash, c.shared_allowed, c.signer, c.nonce, c.now, c.record_unknown)


def from_one_statement(row: Row) -> Identities:
    def account(column: str) -> Account | None:
        return account_from_row(json.loads(row[column])) if row[column] is not None else None

    worker = join_record(Worker, json.loads(row["worker"]), WORKER_COLUMNS) if row["worker"] is not None else None
    return Identities(
        by_apikey=account("by_apikey"),
        shared=from_row(json.loads(row["shared"])) if row["shared"] is not None else None,
        shared_owner=account("shared_owner"),
        worker=worker,
        worker_owner=account("worker_owner"),
        key_account=account("key_account"),
        first_use=bool(row["fresh"]),
    )
