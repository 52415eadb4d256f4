"""Accounts and kudos: registration, transfers, operator grants, and the ledger audit.

Every balance change is a ledger entry written in the same transaction as the cached
balance it touches; the audit re-walks the chain and compares.
"""

import uuid
from dataclasses import dataclass, field

from coordinator.economy import requester_key
from coordinator.errors import HordeError, bad_request, not_found
from coordinator.escrow import Held, held_by
from coordinator.services import Services
from coordinator.storage import NameTaken, NotEnoughKudos
from coordinator.storage.records import Account
from coordinator.storage.sql import Tx
from coordinator.tokens import new_apikey
from protocol.errors import RC
from protocol.ledger import (
    LedgerEntry,
    LedgerHead,
    balance_hundredths,
    from_hundredths,
    hundredths,
    round_kudos,
    sign_head,
    verify_chain,
)

MAX_IDEMPOTENCY_KEY = 100


@dataclass
class AuditReport:
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problems: list[str] = field(default_factory=list)


class Bank:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def open_account(self, username: str, public_key: str | None = None) -> tuple[Account, str]:
        """A new account and its apikey, which is shown once and stored only as a keyed hash."""
        apikey = new_apikey()
        try:
            async with self.services.database.transaction() as tx:
                account = await tx.create_account(
                    username, self.services.tokens.apikey_hash(apikey), public_key, self.services.clock()
                )
        except NameTaken as error:
            raise HordeError(400, RC.NAME_EXISTS, await self._taken(username, public_key)) from error
        return account, apikey

    async def _taken(self, username: str, public_key: str | None) -> str:
        """Which of the two unique things clashed, so the message names the right one."""
        if public_key is not None:
            async with self.services.database.reader() as tx:
                holder = await tx.account_by("public_key", public_key)
            if holder is not None:
                return (
                    f"This key is already registered, as {holder.display_name}: one key has one account. "
                    "Use that account, or register a new key."
                )
        return f"The username {username} is already taken; choose another."

    async def find(self, column: str, value: object) -> Account:
        async with self.services.database.reader() as tx:
            account = await tx.account_by(column, value)
        if account is None:
            raise not_found("user", RC.USER_NOT_FOUND)
        return account

    async def recipient(self, username: str) -> Account:
        """A transfer's target: AI Horde's `name#id`, which must match both (a wrong id is not a typo
        to guess around: kudos go to exactly the account named), or a bare name."""
        name, hash_mark, number = username.rpartition("#")
        if not hash_mark:
            return await self.find("username", username)
        account = None
        if number.isascii() and number.isdigit() and len(number) <= 18:  # within a 64-bit id column
            async with self.services.database.reader() as tx:
                account = await tx.account_by("id", int(number))
        if account is None or account.username.lower() != name.lower():
            raise not_found(f"user {username} (the name and the id must both match one account)", RC.USER_NOT_FOUND)
        return account

    async def transfer(self, source: Account, username: str, amount: float, idempotency_key: str | None) -> float:
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            # The key becomes the transfer's public ledger reference: unbounded, it would grow the ledger.
            raise bad_request(
                RC.VALIDATION,
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters.",
                {"Idempotency-Key": "length"},
            )
        amount = round_kudos(amount)
        if amount <= 0:
            raise bad_request(RC.KUDOS_VALIDATION, "Kudos move in hundredths; this amount rounds to nothing.")
        target = await self.recipient(username)
        if target.id == source.id:
            raise bad_request(RC.KUDOS_TRANSFER_TO_SELF, "You cannot send kudos to yourself.")
        reference = f"transfer:{idempotency_key or uuid.uuid4()}"
        try:
            async with self.services.database.transaction() as tx:
                # Take the ledger's lock before looking up the key, so a concurrent replay waits and then
                # finds this transfer instead of making (and failing on) a second one.
                await tx.lock_ledger()
                if idempotency_key and (done := await tx.transfer_by_key(source.id, idempotency_key)):
                    return float(done["amount"])
                await self._check_available(tx, source.id, amount)
                entry = await tx.move_kudos(
                    "transfer", source.id, target.id, amount, reference, self.services.clock(), require_funds=True
                )
                if idempotency_key:
                    await tx.remember_transfer(source.id, idempotency_key, entry.seq, entry.amount)
        except NotEnoughKudos as error:
            raise bad_request(
                RC.KUDOS_TRANSFER_NOT_ENOUGH,
                "Not enough kudos for this transfer (kudos held for your unfinished requests stay with them).",
            ) from error
        return entry.amount

    @staticmethod
    async def _check_available(tx: Tx, account_id: int, amount: float) -> None:
        """Kudos promised to the account's unfinished funded images stay put: a transfer may only move
        what is available, so a delivered image's charge never overdraws its requester."""
        _queued, reserved = await tx.requester_load(requester_key(account_id, ""))
        account = await tx.account_by("id", account_id)
        if account is None or hundredths(account.kudos) - hundredths(reserved) < hundredths(amount):
            raise NotEnoughKudos(account_id)

    async def grant(self, account_id: int, amount: float, reference: str = "operator grant") -> LedgerEntry:
        async with self.services.database.transaction() as tx:
            if amount >= 0:
                return await tx.move_kudos("admin", None, account_id, amount, reference, self.services.clock())
            return await tx.move_kudos("admin", account_id, None, -amount, reference, self.services.clock())

    async def held(self, account_id: int) -> Held:
        """What the account's nodes earned that escrow still holds (coordinator/escrow.py)."""
        async with self.services.database.reader() as tx:
            return await held_by(tx, "owner_id", account_id)

    async def ledger_page(self, after: int, limit: int) -> list[LedgerEntry]:
        async with self.services.database.reader() as tx:
            return await tx.ledger_entries(after, limit)

    async def recent_entries(self, account_id: int, limit: int = 20) -> list[LedgerEntry]:
        async with self.services.database.reader() as tx:
            return await tx.account_ledger(account_id, limit)

    async def signed_head(self) -> LedgerHead:
        async with self.services.database.reader() as tx:
            seq, digest = await tx.ledger_head()
        return sign_head(self.services.identity, seq, digest, int(self.services.clock()))

    async def audit(self) -> AuditReport:
        """Re-walk the whole chain, then check every cached balance against the ledger's sums."""
        entries = [entry async for batch in self.services.database.iterate_ledger() for entry in batch]
        report = verify_chain(entries)
        problems = list(report.problems)
        derived = balance_hundredths(entries)  # the protocol's own sum, the one anyone re-walking the chain does
        async with self.services.database.reader() as tx:
            cached = await tx.cached_hundredths()
        for account_id, count in cached.items():
            expected = derived.get(account_id, 0)
            if count != expected:  # exact: both sides are whole hundredths
                problems.append(
                    f"account {account_id}: cached balance {from_hundredths(count)} "
                    f"but the ledger says {from_hundredths(expected)}"
                )
        return AuditReport(not problems, report.checked, report.head_seq, report.head_hash, problems)
