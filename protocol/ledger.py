"""The kudos ledger's hash chain: each entry commits to the one before it, and the coordinator
signs the head, so anyone holding a copy of the ledger can detect an edited, removed or
reordered entry without trusting the database it came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.canonical import canonical_json
from protocol.keys import Identity, KeyFormatError, PublicKey, b64url_decode, b64url_encode

KINDS = ("reward", "spend", "transfer", "uptime", "admin", "hold", "release", "forfeit", "verdict")
# hold: a node's reward (or uptime) put in escrow until its verification window closes; release: escrow →
# the node's owner, the window closed clean; forfeit: escrow → the network, a check failed
# (coordinator/escrow.py). Each names the node in its reference, so a node's verified record is public.
# verdict: what a spot check concluded about one node's image (protocol/verdicts.py `verdict_reference`), on the
# node's owner's ledger; it moves nothing, so its amount is 0, the one kind whose amount may be (and must be).
Kind = Literal["reward", "spend", "transfer", "uptime", "admin", "hold", "release", "forfeit", "verdict"]
RECORD_KINDS = ("verdict",)  # entries that record, not move: amount 0
GENESIS_HASH = "0" * 64


def hundredths(amount: float | int | Decimal | str) -> int:
    """Kudos as a whole number of hundredths, the unit every balance is counted in.

    Read through the amount's decimal text (0.1 is 10, 12.345 is 1235: halves round away from zero),
    never through `amount * 100`, whose binary error would round some amounts the wrong way."""
    exact = Decimal(str(amount)).scaleb(2).to_integral_value(rounding=ROUND_HALF_UP)
    return int(exact)


def from_hundredths(count: int) -> float:
    """The float the wire carries for a count of hundredths: the nearest one to the exact decimal."""
    return count / 100  # int / int is correctly rounded, so 30 gives 0.3, not 0.30000000000000004


def round_kudos(amount: float | int | Decimal | str) -> float:
    """An amount rounded to the hundredth kudos are counted in."""
    return from_hundredths(hundredths(amount))


def entry_hash(
    seq: int,
    created: float,
    kind: str,
    source: int | None,
    target: int | None,
    amount: float,
    reference: str,
    prev_hash: str,
) -> str:
    fields = {
        "seq": seq,
        "created": created,
        "kind": kind,
        "source": source,
        "target": target,
        "amount": amount,
        "reference": reference,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(fields)).hexdigest()


class LedgerEntry(BaseModel):
    """One movement of kudos. source None mints from the network; target None burns to it."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)
    created: float
    kind: Kind
    source: int | None
    target: int | None
    amount: float = Field(ge=0)
    reference: str
    prev_hash: str
    hash: str

    @model_validator(mode="after")
    def _amount_fits_kind(self) -> LedgerEntry:
        """Every movement moves something; a record (a verdict) moves nothing."""
        if (self.kind in RECORD_KINDS) != (self.amount == 0):
            raise ValueError(f"a {self.kind} entry's amount must be {'0' if self.kind in RECORD_KINDS else '> 0'}")
        return self

    def compute_hash(self) -> str:
        return entry_hash(**self.model_dump(exclude={"hash"}))

    @classmethod
    def new(
        cls,
        prev: LedgerEntry | None,
        *,
        created: float,
        kind: Kind,
        source: int | None,
        target: int | None,
        amount: float,
        reference: str = "",
    ) -> LedgerEntry:
        """The entry that follows prev (or starts the chain), with its hash filled in."""
        head = (0, GENESIS_HASH) if prev is None else (prev.seq, prev.hash)
        return cls.after(
            head, created=created, kind=kind, source=source, target=target, amount=amount, reference=reference
        )

    @classmethod
    def after(
        cls,
        head: tuple[int, str],
        *,
        created: float,
        kind: Kind,
        source: int | None,
        target: int | None,
        amount: float,
        reference: str = "",
    ) -> LedgerEntry:
        """The entry that follows the chain's head `(seq, hash)` ((0, GENESIS_HASH) for an empty chain),
        with its amount rounded to hundredths and its hash filled in: the one way an entry is made."""
        if source is None and target is None:
            raise ValueError("a ledger entry needs a source or a target account")
        if source is not None and source == target:
            raise ValueError("a ledger entry cannot move kudos from an account to itself")
        seq, prev_hash = head[0] + 1, head[1]
        unsealed = cls(
            seq=seq,
            created=created,
            kind=kind,
            source=source,
            target=target,
            amount=round_kudos(amount),
            reference=reference,
            prev_hash=prev_hash,
            hash="",
        )
        # Hash the validated values, so whatever coercion pydantic applied is what gets sealed.
        return unsealed.model_copy(update={"hash": unsealed.compute_hash()})


@dataclass
class ChainReport:
    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    problems: list[str] = field(default_factory=list)


def _problem(entry: LedgerEntry, seq: int, prev_hash: str) -> str | None:
    if entry.seq != seq:
        return f"seq {seq}: gap or reorder, found seq {entry.seq} where {seq} was expected"
    if entry.prev_hash != prev_hash:
        return f"seq {seq}: prev_hash {entry.prev_hash} does not match the previous hash {prev_hash}"
    if entry.compute_hash() != entry.hash:
        return f"seq {seq}: stored hash does not match the entry's contents (edited entry)"
    return None


def verify_chain(
    entries: Iterable[LedgerEntry], *, start_prev_hash: str = GENESIS_HASH, start_seq: int = 1
) -> ChainReport:
    """Walk the chain and stop at the first bad entry; head_* describe the last good one."""
    seq, prev_hash, checked = start_seq, start_prev_hash, 0
    for entry in entries:
        problem = _problem(entry, seq, prev_hash)
        if problem:
            return ChainReport(False, checked, seq - 1, prev_hash, [problem])
        seq, prev_hash, checked = seq + 1, entry.hash, checked + 1
    return ChainReport(True, checked, seq - 1, prev_hash, [])


def balance_hundredths(entries: Iterable[LedgerEntry]) -> dict[int, int]:
    """Credits minus debits per account, in hundredths: integers, so no float error can creep in."""
    counts: dict[int, int] = {}
    for entry in entries:
        amount = hundredths(entry.amount)
        if entry.source is not None:
            counts[entry.source] = counts.get(entry.source, 0) - amount
        if entry.target is not None:
            counts[entry.target] = counts.get(entry.target, 0) + amount
    return counts


def balances(entries: Iterable[LedgerEntry]) -> dict[int, float]:
    """Credits minus debits per account, in kudos (summed exactly, see `balance_hundredths`)."""
    return {account: from_hundredths(count) for account, count in balance_hundredths(entries).items()}


class LedgerHead(BaseModel):
    """The coordinator's signed statement of the chain's latest entry."""

    model_config = ConfigDict(frozen=True)

    seq: int
    hash: str
    created: int
    coordinator_key: str
    signature: str


def _head_bytes(seq: int, hash: str, created: int, coordinator_key: str) -> bytes:
    return canonical_json({"seq": seq, "hash": hash, "created": created, "coordinator_key": coordinator_key})


def sign_head(identity: Identity, seq: int, hash: str, created: int) -> LedgerHead:
    key_text = identity.public_key.text()
    signature = identity.sign(_head_bytes(seq, hash, created, key_text))
    return LedgerHead(seq=seq, hash=hash, created=created, coordinator_key=key_text, signature=b64url_encode(signature))


def verify_head(head: LedgerHead, expected_key: PublicKey | None = None) -> bool:
    """True if the head is signed by the key it names (and that key is expected_key, if given)."""
    try:
        key = PublicKey.from_text(head.coordinator_key)
        signature = b64url_decode(head.signature)
    except (KeyFormatError, ValueError):
        return False
    if expected_key is not None and key != expected_key:
        return False
    return key.verify(_head_bytes(head.seq, head.hash, head.created, head.coordinator_key), signature)


class LedgerPage(BaseModel):
    """`GET /v2/ledger` and `/v2/users/{id}/ledger`: entries, and the cursor of the next page (None at the end)."""

    entries: list[LedgerEntry]
    next_after: int | None
