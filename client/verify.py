"""Offline checks: an image against its sidecar's signatures, and the kudos ledger against its signed head."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from client.errors import UserError
from client.sidecar import SIDECAR_FORMAT
from protocol.keys import KeyFormatError, PublicKey
from protocol.ledger import LedgerEntry, LedgerHead, verify_chain, verify_head
from protocol.provenance import JobDocument, ResultDocument, request_digest, sha256_hex, verify_provenance
from protocol.verdicts import ImageChecks, verify_verdict

Doc = TypeVar("Doc", JobDocument, ResultDocument)


@dataclass
class ImageReport:
    image: Path
    sidecar: Path
    problems: list[str] = field(default_factory=list)
    coordinator_key: str | None = None
    worker_key: str | None = None
    worker_name: str | None = None
    job_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "image": str(self.image),
            "sidecar": str(self.sidecar),
            "job_id": self.job_id,
            "worker_name": self.worker_name,
            "worker_key": self.worker_key,
            "coordinator_key": self.coordinator_key,
            "problems": self.problems,
        }


def locate(path: Path) -> tuple[Path, Path]:
    """(image, sidecar) for a path naming either one; the sidecar is `<stem>.json` beside the image."""
    if path.suffix == ".json":
        sidecar = path
        image = path.with_name(str(_read_sidecar(sidecar).get("file") or path.stem))
        return image, sidecar
    return path, path.with_suffix(".json")


def verify_image(path: Path, *, pinned_key: str | None = None) -> ImageReport:
    """Every reason the image is not what its sidecar claims; raises UserError if the files are unusable."""
    image_path, sidecar_path = locate(path)
    sidecar = _read_sidecar(sidecar_path)
    report = ImageReport(image=image_path, sidecar=sidecar_path)
    image = _read_bytes(image_path, "image")
    signed = _signed_bytes(image_path, image, sidecar, report.problems)
    job, job_signature = _document(sidecar, "job", JobDocument)
    result, result_signature = _document(sidecar, "result", ResultDocument)
    coordinator_key = _key(_text(sidecar.get("coordinator"), "public_key"), "coordinator")
    worker_key = _key(_text(sidecar.get("node"), "public_key"), "node")
    report.coordinator_key, report.worker_key = coordinator_key.text(), worker_key.text()
    report.worker_name = _text(sidecar.get("node"), "worker_name", required=False)
    report.job_id = job.job_id
    if pinned_key is not None and _key(pinned_key, "pinned coordinator") != coordinator_key:
        report.problems.append(f"The sidecar's coordinator key {coordinator_key} is not the pinned {pinned_key}.")
    report.problems += verify_provenance(
        signed, job, job_signature, coordinator_key, result, result_signature, worker_key
    )
    report.problems += _claims(sidecar, job, result)
    return report


def _signed_bytes(image_path: Path, image: bytes, sidecar: dict[str, Any], problems: list[str]) -> bytes:
    """The bytes the node signed: the file itself, or for a converted copy the kept original."""
    signed_name = sidecar.get("signed_file") or sidecar.get("file")
    if not isinstance(signed_name, str) or signed_name == image_path.name:
        return image
    original_path = image_path.with_name(signed_name)
    original = _read_bytes(original_path, "signed original image")
    if sha256_hex(image) != sidecar.get("file_sha256"):
        problems.append(f"{image_path.name} has changed since it was saved (SHA-256 differs from the sidecar).")
    elif not _same_pixels(image, original):
        problems.append(f"{image_path.name} does not hold the same pixels as the signed {signed_name}.")
    return original


def _same_pixels(left: bytes, right: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(left)) as a, Image.open(io.BytesIO(right)) as b:
            return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def _claims(sidecar: dict[str, Any], job: JobDocument, result: ResultDocument) -> list[str]:
    """The sidecar's plain fields must agree with the signed documents, or a reader could be misled."""
    problems = []
    request_id = sidecar.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or request_digest(request_id) != job.request_sha256):
        problems.append(f"The sidecar's request {request_id!r} is not the one the job was issued for.")
    signed = {
        "generation_id": job.job_id,
        "model": job.model,
        "seed": result.seed,
    }
    for name, value in signed.items():
        if name in sidecar and sidecar[name] != value:
            problems.append(f"The sidecar says {name} is {sidecar[name]!r}, but the signed documents say {value!r}.")
    worker_id = _text(sidecar.get("node"), "worker_id", required=False)
    if worker_id is not None and worker_id != job.worker_id:
        problems.append(f"The sidecar's worker {worker_id!r} is not {job.worker_id!r}, whom the job was issued to.")
    return problems


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_bytes(path, "sidecar"))
    except ValueError as exc:
        raise UserError(f"sidecar {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{path} is not a horde image sidecar (expected format {SIDECAR_FORMAT!r})")
    return data


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _document(sidecar: dict[str, Any], name: str, model: type[Doc]) -> tuple[Doc, str]:
    section = sidecar.get(name)
    if not isinstance(section, dict) or not isinstance(section.get("signature"), str):
        raise UserError(f"the sidecar has no signed {name} document (was it saved by an older coordinator?)")
    try:
        return model.model_validate(section.get("document")), section["signature"]
    except ValidationError as exc:
        raise UserError(f"the sidecar's {name} document is malformed: {exc.errors()[0]['msg']}") from None


def _text(section: Any, name: str, *, required: bool = True) -> str | None:
    value = section.get(name) if isinstance(section, dict) else None
    if required and not isinstance(value, str):
        raise UserError(f"the sidecar has no {name!r} text where one is required")
    return value if isinstance(value, str) else None


def _key(text: str | None, whose: str) -> PublicKey:
    try:
        return PublicKey.from_text(text or "")
    except KeyFormatError as exc:
        raise UserError(f"the {whose} public key is not valid: {exc}") from None


@dataclass
class LedgerReport:
    ok: bool
    checked: int
    head: LedgerHead
    problems: list[str]

    def as_json(self) -> dict[str, Any]:
        head = self.head.model_dump()
        return {"ok": self.ok, "checked": self.checked, "head": head, "problems": self.problems}


def check_ledger(entries: Iterable[LedgerEntry], head: LedgerHead, key: PublicKey) -> LedgerReport:
    """Re-walk the chain up to the signed head and check the head's signature and position."""
    upto = [entry for entry in entries if entry.seq <= head.seq]
    chain = verify_chain(upto)
    problems = list(chain.problems)
    if not verify_head(head, key):
        problems.append(f"The ledger head is not signed by the coordinator key {key}.")
    if chain.ok and chain.head_seq != head.seq:
        problems.append(f"The signed head is at seq {head.seq}, but the downloaded chain ends at {chain.head_seq}.")
    elif chain.ok and chain.head_hash != head.hash:
        problems.append(f"The signed head hash {head.hash} does not match the chain's {chain.head_hash}.")
    return LedgerReport(ok=not problems, checked=chain.checked, head=head, problems=problems)


def describe_checks(checks: ImageChecks, coordinator_key: str | None) -> tuple[list[str], list[str]]:
    """(lines, problems) for an image's spot checks: each verdict, by whom, its signature checked against the
    key that signed the image's job (a verdict signed by any other key is a problem)."""
    lines: list[str] = []
    problems: list[str] = []
    try:
        key = PublicKey.from_text(coordinator_key or "")
    except KeyFormatError:
        key = None
    for verdict in checks.verdicts:
        doc = verdict.document
        if key is None or not verify_verdict(key, verdict):
            problems.append(f"the verdict on node {doc.worker_name} does not verify with the coordinator's key")
        others = ", ".join(
            f"{c.worker_name} ({c.hardware or 'no class'}, distance {c.distance})" for c in doc.compared_with
        )
        lines.append(f"check: node {doc.worker_name} {doc.outcome.upper()} against {others}")
    if not checks.verdicts:
        lines.append(_unjudged(checks))
    return lines, problems


def _unjudged(checks: ImageChecks) -> str:
    """What an image without verdicts says: a check under way, one that lapsed, or none at all."""
    if checks.pending:
        return "check: a spot check is under way"
    states = {check.state for check in checks.checks}
    if "expired" in states:
        return "check: a spot check of this image expired before a node ran it"
    if "void" in states:
        return "check: a spot check of this image failed on the checking node; the image was not judged"
    if states:
        return f"check: a spot check ended without a verdict ({', '.join(sorted(states))})"
    return "check: this image was not checked"
