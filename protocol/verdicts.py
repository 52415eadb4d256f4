"""Verdicts of spot checks (docs/security.md, "Verified work"): what the coordinator concluded about one node's
image after other nodes re-ran its job, signed so anyone holding its key can check them offline."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict

from protocol.canonical import canonical_json
from protocol.keys import Identity, PublicKey, b64url_decode, b64url_encode


class Comparison(BaseModel):
    """Another node's image of the same job, as the verdict weighed it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    worker_id: str
    worker_name: str
    hardware: str
    distance: float | None  # 16×16 greyscale mean difference out of 255 (coordinator/likeness.py)


class VerdictDocument(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    image_sha256: str | None
    worker_id: str
    worker_name: str
    hardware: str
    outcome: str  # pass | fail
    compared_with: list[Comparison]
    created: int
    # rerun: other nodes re-ran the job (compared_with: their images); cached: the image is a copy of another
    # job's (compared_with: that job's image, distance 0), found with no inference (coordinator/cached.py)
    rule: str = "rerun"


class SignedVerdict(BaseModel):
    document: VerdictDocument
    signature: str


class CheckRound(BaseModel):
    """One check of an image: its round (1: a second node; 2: a third) and where it stands."""

    round: int
    state: str  # pending | agreed | decided | disputed | expired | void | lapsed | no image to compare | ...
    created: float


class ImageChecks(BaseModel):
    """`GET /v2/verdicts/{job_id}` (ours): whether an image was checked, how, and by whom."""

    job_id: str
    pending: bool = False  # a check of it is queued or running
    verdicts: list[SignedVerdict] = []
    checks: list[CheckRound] = []


def sign_verdict(identity: Identity, document: VerdictDocument) -> str:
    return b64url_encode(identity.sign(canonical_json(document)))


def verify_verdict(key: PublicKey, verdict: SignedVerdict) -> bool:
    try:
        raw = b64url_decode(verdict.signature)
    except (ValueError, TypeError):
        return False
    return key.verify(canonical_json(verdict.document), raw)


def verdict_reference(document: VerdictDocument) -> str:
    """The verdict's public ledger entry's reference: `verdict:JOB:WORKER:OUTCOME:SHA256`, the last the hash of
    the document's RFC 8785 JSON, so the entry pins the signed document `GET /v2/verdicts/JOB` serves."""
    digest = hashlib.sha256(canonical_json(document)).hexdigest()
    return f"verdict:{document.job_id}:{document.worker_id}:{document.outcome}:{digest}"
