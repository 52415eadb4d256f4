"""The spool keeps finished results across restarts and never mixes two results up."""

import hashlib
import json
from pathlib import Path

import pytest

from node.spool import QUARANTINE, REJECTED, Spool, SpoolEntry


def result(job_id: str, image: bytes = b"webp bytes") -> tuple[SpoolEntry, bytes]:
    return SpoolEntry(job_id, "ok", "42", image_sha256=hashlib.sha256(image).hexdigest()), image


def test_entries_survive_a_restart_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, image = result("job-1")
    first.created_at = 1.0
    spool.put(first, image)
    fault = SpoolEntry("job-2", "faulted", "7", gen_metadata=[{"type": "information", "value": "see_ref", "ref": "x"}])
    fault.created_at = 2.0
    spool.put(fault, None)

    reopened = Spool(tmp_path)  # a new process
    pending = reopened.pending()
    assert [entry.job_id for entry in pending] == ["job-1", "job-2"]
    assert pending[0] == first
    assert reopened.image(pending[0]) == image
    assert pending[1].gen_metadata[0]["ref"] == "x"
    reopened.remove(pending[0])
    assert reopened.job_ids() == ["job-2"]
    assert len(reopened) == 1


def test_the_same_job_id_twice_keeps_two_results(tmp_path: Path) -> None:
    # A coordinator may hand a faulted job out again under the same id.
    spool = Spool(tmp_path)
    old = SpoolEntry("job", "faulted", "1")
    new, image = result("job")
    spool.put(old, None)
    spool.put(new, image)
    spool.remove(old)
    assert spool.pending() == [new]
    assert spool.image(new) == image


def test_image_must_match_its_hash(tmp_path: Path) -> None:
    entry, _ = result("job")
    with pytest.raises(ValueError, match="image_sha256"):
        Spool(tmp_path).put(entry, b"other bytes")


def test_uncommitted_images_and_temp_files_are_swept(tmp_path: Path) -> None:
    (tmp_path / "job--abc.img").write_bytes(b"half written")
    (tmp_path / ".job--abc.json.tmp").write_bytes(b"{")
    spool = Spool(tmp_path)
    assert spool.pending() == []
    assert not any(tmp_path.glob("*.img")) and not any(tmp_path.glob(".*.tmp"))


def test_unreadable_entries_are_quarantined_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good, image = result("good")
    spool.put(good, image)
    (tmp_path / "broken--1.json").write_text("{not json")
    tampered, tampered_image = result("tampered")
    spool.put(tampered, tampered_image)
    (tmp_path / f"{tampered.key}.img").write_bytes(b"changed on disk")
    assert spool.pending() == [good]
    assert sorted(path.name for path in (tmp_path / QUARANTINE).iterdir()) == sorted(
        ["broken--1.json", f"{tampered.key}.json", f"{tampered.key}.img"]
    )


def test_hostile_job_ids_stay_inside_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry, image = result("../../etc/passwd")
    spool.put(entry, image)
    assert {path.parent for path in (tmp_path / "spool").iterdir()} == {tmp_path / "spool"}
    assert spool.pending()[0].job_id == "../../etc/passwd"
    data = json.loads((tmp_path / "spool" / f"{entry.key}.json").read_text())
    data["key"] = "../evil"
    (tmp_path / "spool" / f"{entry.key}.json").write_text(json.dumps(data))
    assert spool.pending() == []  # quarantined


def test_set_aside_and_upload_marker(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry, image = result("job")
    entry.r2_upload = "http://x/upload"
    spool.put(entry, image)
    spool.mark_uploaded(entry)
    assert Spool(tmp_path).pending()[0].uploaded is True
    spool.set_aside(entry)
    assert spool.pending() == []
    assert len(list((tmp_path / REJECTED).iterdir())) == 2
