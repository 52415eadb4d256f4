"""client.sidecar and client.verify, with signatures made locally (no coordinator needed)."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from client.errors import UserError
from client.sidecar import CoordinatorRecord, ImageFormat, SavedImage, save_generation
from client.verify import check_ledger, verify_image
from protocol.generation import Generation
from protocol.keys import Identity
from protocol.ledger import LedgerEntry, sign_head
from protocol.provenance import JobDocument, ResultDocument, request_digest, sha256_hex, sign_job, sign_result

COORDINATOR = Identity.generate()
WORKER = Identity.generate()


def webp_bytes(color: str = "teal") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, format="WEBP", quality=80)
    return out.getvalue()


def signed_generation(image: bytes, *, job_id: str = "job-1", seed: str = "1234") -> Generation:
    job = JobDocument(
        job_id=job_id,
        request_sha256=request_digest("req-1"),
        model="tiny-sd",
        payload={"prompt": "a fox", "ddim_steps": 8, "seed": seed},
        source_image_sha256=None,
        source_mask_sha256=None,
        ttl=150,
        worker_id="worker-1",
        issued_at=1_700_000_000,
    )
    result = ResultDocument(job_id=job_id, image_sha256=sha256_hex(image), seed=seed, state="ok")
    return Generation(
        id=job_id,
        img="https://example.invalid/img.webp",
        seed=seed,
        worker_id="worker-1",
        worker_name="node-a",
        model="tiny-sd",
        state="ok",
        censored=False,
        worker_key=WORKER.public_key.text(),
        signature=sign_result(WORKER, result),
        image_sha256=sha256_hex(image),
        job=job.model_dump(mode="json"),
        job_signature=sign_job(COORDINATOR, job),
    )


def save(tmp_path: Path, image: bytes, fmt: ImageFormat = "webp", generation: Generation | None = None) -> SavedImage:
    return save_generation(
        tmp_path,
        "req-1_0",
        generation or signed_generation(image),
        image,
        fmt=fmt,
        request_id="req-1",
        request={"prompt": "a fox", "source_image": "QUJD"},
        coordinator=CoordinatorRecord("http://127.0.0.1:7001", COORDINATOR.public_key.text()),
    )


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def test_saved_image_verifies(tmp_path: Path) -> None:
    image = webp_bytes()
    saved = save(tmp_path, image)
    assert saved.image == tmp_path / "req-1_0.webp" and saved.image.read_bytes() == image
    sidecar = json.loads(saved.sidecar.read_text())
    assert sidecar["node"]["public_key"] == WORKER.public_key.text()
    assert sidecar["coordinator"]["public_key"] == COORDINATOR.public_key.text()
    assert sidecar["request"] == {"prompt": "a fox", "source_image_sha256": sha256_hex(b"ABC")}
    assert sidecar["image_sha256"] == sha256_hex(image)
    report = verify_image(saved.image)
    assert report.ok, report.problems
    assert verify_image(saved.sidecar).ok  # naming the sidecar works too


def test_one_changed_byte_fails(tmp_path: Path) -> None:
    saved = save(tmp_path, webp_bytes())
    flip_byte(saved.image)
    problems = verify_image(saved.image).problems
    assert any("SHA-256" in problem for problem in problems)


def test_png_copy_verifies_against_the_signed_original(tmp_path: Path) -> None:
    saved = save(tmp_path, webp_bytes(), fmt="png")
    assert saved.image.suffix == ".png" and saved.signed_original == tmp_path / "req-1_0.webp"
    assert verify_image(saved.image).ok
    flip_byte(saved.image, offset=40)
    assert not verify_image(saved.image).ok


def test_edited_sidecar_claims_fail(tmp_path: Path) -> None:
    saved = save(tmp_path, webp_bytes())
    sidecar = json.loads(saved.sidecar.read_text())
    sidecar["seed"] = "999"
    saved.sidecar.write_text(json.dumps(sidecar))
    assert any("seed" in problem for problem in verify_image(saved.image).problems)


def test_forged_node_signature_fails(tmp_path: Path) -> None:
    image = webp_bytes()
    generation = signed_generation(image)
    forged = ResultDocument(job_id="job-1", image_sha256=sha256_hex(image), seed="1234", state="ok")
    generation.signature = sign_result(Identity.generate(), forged)
    problems = verify_image(save(tmp_path, image, generation=generation).image).problems
    assert any("result signature" in problem for problem in problems)


def test_pinned_coordinator_key_must_match(tmp_path: Path) -> None:
    saved = save(tmp_path, webp_bytes())
    assert verify_image(saved.image, pinned_key=COORDINATOR.public_key.text()).ok
    other = Identity.generate().public_key.text()
    assert any("pinned" in problem for problem in verify_image(saved.image, pinned_key=other).problems)


def test_missing_or_foreign_sidecar_is_a_user_error(tmp_path: Path) -> None:
    image = tmp_path / "lonely.webp"
    image.write_bytes(webp_bytes())
    with pytest.raises(UserError, match="cannot read sidecar"):
        verify_image(image)
    image.with_suffix(".json").write_text('{"hello": 1}')
    with pytest.raises(UserError, match="not a horde image sidecar"):
        verify_image(image)


def test_unsigned_generation_cannot_be_verified(tmp_path: Path) -> None:
    image = webp_bytes()
    generation = signed_generation(image)
    generation.job, generation.job_signature = None, None
    with pytest.raises(UserError, match="no signed job"):
        verify_image(save(tmp_path, image, generation=generation).image)


def chain(count: int) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    for index in range(count):
        previous = entries[-1] if entries else None
        entries.append(
            LedgerEntry.new(
                previous,
                created=1_700_000_000 + index,
                kind="reward",
                source=None,
                target=1 + index % 2,
                amount=1.5 + index,
            )
        )
    return entries


def test_ledger_check_passes_and_ignores_entries_past_the_head() -> None:
    entries = chain(5)
    head = sign_head(COORDINATOR, entries[3].seq, entries[3].hash, 1_700_000_100)
    report = check_ledger(entries, head, COORDINATOR.public_key)
    assert report.ok and report.checked == 4


def test_ledger_check_catches_edits_wrong_keys_and_short_chains() -> None:
    entries = chain(4)
    head = sign_head(COORDINATOR, entries[-1].seq, entries[-1].hash, 1_700_000_100)
    edited = [*entries[:2], entries[2].model_copy(update={"amount": 99.0}), entries[3]]
    assert not check_ledger(edited, head, COORDINATOR.public_key).ok
    assert any("not signed" in p for p in check_ledger(entries, head, WORKER.public_key).problems)
    assert any("ends at" in p for p in check_ledger(entries[:2], head, COORDINATOR.public_key).problems)


def test_empty_ledger_verifies() -> None:
    head = sign_head(COORDINATOR, 0, "0" * 64, 1_700_000_100)
    assert check_ledger([], head, COORDINATOR.public_key).ok
