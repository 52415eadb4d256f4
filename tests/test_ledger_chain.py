import hashlib
import itertools

import pytest
from pydantic import ValidationError

from protocol.canonical import canonical_json
from protocol.keys import Identity, b64url_decode
from protocol.ledger import (
    GENESIS_HASH,
    KINDS,
    LedgerEntry,
    LedgerHead,
    balances,
    entry_hash,
    round_kudos,
    sign_head,
    verify_chain,
    verify_head,
)

COORDINATOR = Identity.generate()
MOVES: list[tuple[str, int | None, int | None, float]] = [
    ("admin", None, 1, 100.0),  # minted
    ("reward", None, 2, 12.345),
    ("spend", 1, 2, 10.0),
    ("transfer", 2, 3, 5.5),
    ("uptime", None, 2, 1.1),
    ("spend", 1, None, 2.2),  # burned
    ("reward", None, 3, 0.1),
    ("transfer", 3, 1, 0.2),
    ("spend", 1, 2, 7.77),
    ("admin", 2, None, 0.01),
]


def build_chain() -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    for index, (kind, source, target, amount) in enumerate(MOVES):
        prev = entries[-1] if entries else None
        entries.append(
            LedgerEntry.new(
                prev,
                created=1_700_000_000.25 + index,
                kind=kind,
                source=source,
                target=target,
                amount=amount,
                reference=f"ref-{index}",
            )
        )
    return entries


def test_chain_of_ten_verifies() -> None:
    entries = build_chain()
    assert [entry.seq for entry in entries] == list(range(1, 11))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(entries))
    report = verify_chain(entries)
    assert report.ok and report.problems == []
    assert (report.checked, report.head_seq, report.head_hash) == (10, 10, entries[-1].hash)


def test_entry_hash_is_sha256_of_canonical_json_without_hash() -> None:
    entry = build_chain()[3]
    fields = entry.model_dump(exclude={"hash"})
    assert entry.hash == hashlib.sha256(canonical_json(fields)).hexdigest()
    assert entry.hash == entry.compute_hash() == entry_hash(**fields)
    assert len(entry.hash) == 64


def test_edited_amount_is_detected_at_its_seq() -> None:
    entries = build_chain()
    entries[4] = entries[4].model_copy(update={"amount": 1000.0})
    report = verify_chain(entries)
    assert not report.ok
    assert len(report.problems) == 1 and report.problems[0].startswith("seq 5:")
    assert (report.checked, report.head_seq, report.head_hash) == (4, 4, entries[3].hash)


def test_edit_with_recomputed_hash_is_detected_at_the_next_seq() -> None:
    entries = build_chain()
    edited = entries[4].model_copy(update={"amount": 1000.0})
    entries[4] = edited.model_copy(update={"hash": edited.compute_hash()})
    report = verify_chain(entries)
    assert not report.ok and report.problems[0].startswith("seq 6:") and "prev_hash" in report.problems[0]


def test_removed_entry_is_a_gap() -> None:
    entries = build_chain()
    del entries[4]
    report = verify_chain(entries)
    assert not report.ok
    assert report.problems[0].startswith("seq 5:") and "gap" in report.problems[0]


def test_reordered_entries_are_detected() -> None:
    entries = build_chain()
    entries[2], entries[3] = entries[3], entries[2]
    assert verify_chain(entries).problems[0].startswith("seq 3:")


def test_verifying_a_tail_from_a_known_head() -> None:
    entries = build_chain()
    report = verify_chain(entries[5:], start_prev_hash=entries[4].hash, start_seq=6)
    assert report.ok and report.checked == 5 and report.head_seq == 10
    assert not verify_chain(entries[5:], start_prev_hash=GENESIS_HASH, start_seq=6).ok


def test_empty_chain() -> None:
    report = verify_chain([])
    assert report.ok and (report.checked, report.head_seq, report.head_hash) == (0, 0, GENESIS_HASH)


def test_amounts_are_rounded_and_must_be_positive() -> None:
    assert round_kudos(12.345678) == 12.35
    assert build_chain()[1].amount == 12.35
    with pytest.raises(ValidationError):
        LedgerEntry.new(None, created=1.0, kind="reward", source=None, target=1, amount=0)
    with pytest.raises(ValidationError):
        LedgerEntry.new(None, created=1.0, kind="reward", source=None, target=1, amount=0.001)
    with pytest.raises(ValidationError):
        LedgerEntry.new(None, created=1.0, kind="bribe", source=None, target=1, amount=1)  # type: ignore[arg-type]


def test_entries_need_distinct_accounts() -> None:
    with pytest.raises(ValueError):
        LedgerEntry.new(None, created=1.0, kind="admin", source=None, target=None, amount=1)
    with pytest.raises(ValueError):
        LedgerEntry.new(None, created=1.0, kind="transfer", source=4, target=4, amount=1)


def test_kinds() -> None:
    assert KINDS == ("reward", "spend", "transfer", "uptime", "admin", "hold", "release", "forfeit", "verdict")


def test_a_verdict_moves_nothing_and_only_a_verdict_may() -> None:
    verdict = LedgerEntry.new(None, created=1.0, kind="verdict", source=None, target=1, amount=0, reference="v")
    assert verdict.amount == 0 and verify_chain([verdict]).ok and balances([verdict]) == {1: 0.0}
    with pytest.raises(ValidationError):  # a verdict is a record, not a payment
        LedgerEntry.new(None, created=1.0, kind="verdict", source=None, target=1, amount=1)
    with pytest.raises(ValidationError):  # and no movement of kudos may be of nothing
        LedgerEntry.new(None, created=1.0, kind="forfeit", source=1, target=None, amount=0)


def test_balances() -> None:
    # 1: 100 - 10 - 2.2 + 0.2 - 7.77; 2: 12.35 + 10 - 5.5 + 1.1 + 7.77 - 0.01; 3: 5.5 + 0.1 - 0.2
    assert balances(build_chain()) == {1: 80.23, 2: 25.71, 3: 5.4}


def test_an_account_debited_before_any_credit_goes_negative() -> None:
    """An operator's negative grant can reach an account that was never credited: its balance is below zero,
    not counted from some other starting point."""
    debit = LedgerEntry.new(None, created=1_700_000_000, kind="admin", source=5, target=None, amount=2.5)
    assert balances([debit]) == {5: -2.5}


def test_the_head_signature_covers_the_documented_fields() -> None:
    """The browser's verify.js and any offline verifier rebuild the signed bytes from the four fields
    docs/api.md names, as RFC 8785 JSON: renaming one in Python alone would break them all."""
    head = sign_head(COORDINATOR, 10, "ab" * 32, 1_700_000_100)
    documented = {
        "seq": 10,
        "hash": "ab" * 32,
        "created": 1_700_000_100,
        "coordinator_key": COORDINATOR.public_key.text(),
    }
    assert COORDINATOR.public_key.verify(canonical_json(documented), b64url_decode(head.signature))


def test_signed_head_verifies() -> None:
    entries = build_chain()
    head = sign_head(COORDINATOR, entries[-1].seq, entries[-1].hash, 1_700_000_100)
    assert head.coordinator_key == COORDINATOR.public_key.text()
    assert verify_head(head)
    assert verify_head(head, COORDINATOR.public_key)
    assert verify_head(LedgerHead.model_validate_json(head.model_dump_json()), COORDINATOR.public_key)


def test_forged_heads_fail() -> None:
    head = sign_head(COORDINATOR, 10, "ab" * 32, 1_700_000_100)
    assert not verify_head(head.model_copy(update={"seq": 11}))
    assert not verify_head(head.model_copy(update={"hash": "cd" * 32}))
    assert not verify_head(head.model_copy(update={"created": 1_700_000_101}))
    assert not verify_head(head, Identity.generate().public_key)
    impostor = Identity.generate()
    forged = sign_head(impostor, 10, "ab" * 32, 1_700_000_100)
    assert verify_head(forged) and not verify_head(forged, COORDINATOR.public_key)
    assert not verify_head(forged.model_copy(update={"coordinator_key": COORDINATOR.public_key.text()}))
    assert not verify_head(head.model_copy(update={"signature": "garbage!"}))
    assert not verify_head(head.model_copy(update={"coordinator_key": "ed25519:short"}))
