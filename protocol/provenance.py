"""Job and result signatures: anyone holding the image, the two documents, their signatures and two
public keys can check offline that a coordinator issued the job and a worker produced that image.

Each signature is Ed25519 over the document's RFC 8785 canonical JSON, as unpadded base64url. The
documents forbid extra fields, so their canonical bytes never coincide with another signed
document type (whose key sets differ).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from protocol.canonical import canonical_json
from protocol.keys import Identity, PublicKey, b64url_decode, b64url_encode


class JobDocument(BaseModel):
    """What the coordinator promises a worker: the job, its inputs (by hash), and its deadline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    # The request by digest (`request_digest`), never its id: a request's id is its requester's capability
    # (anyone holding it may read or cancel the request, as in AI Horde), so nodes never learn it. Whoever
    # holds the id checks that a job was made for that request.
    request_sha256: str
    model: str
    payload: dict[str, Any]
    source_image_sha256: str | None
    source_mask_sha256: str | None
    ttl: int
    worker_id: str
    issued_at: int
    # Where the node may fetch a source from when that is not the coordinator's own origin (a bucket's
    # presigned URL): a node fetches from nowhere else. Left out of the document when absent, so
    # documents signed before these fields existed still verify.
    source_image_url: str | None = None
    source_mask_url: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_urls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("source_image_url", "source_mask_url"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class ResultDocument(BaseModel):
    """What the worker attests: which job, which output image (by hash), with which seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    image_sha256: str | None
    seed: str
    state: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request_digest(request_id: str) -> str:
    """What a job document says of its request: the SHA-256 of the request id's UTF-8."""
    return sha256_hex(request_id.encode())


def _sign(identity: Identity, doc: BaseModel) -> str:
    return b64url_encode(identity.sign(canonical_json(doc)))


def _verify(public_key: PublicKey, doc: BaseModel, signature: str) -> bool:
    try:
        raw = b64url_decode(signature)
    except (ValueError, TypeError):
        return False
    return public_key.verify(canonical_json(doc), raw)


def sign_job(identity: Identity, doc: JobDocument) -> str:
    return _sign(identity, doc)


def verify_job(public_key: PublicKey, doc: JobDocument, signature: str) -> bool:
    return _verify(public_key, doc, signature)


def sign_result(identity: Identity, doc: ResultDocument) -> str:
    return _sign(identity, doc)


def verify_result(public_key: PublicKey, doc: ResultDocument, signature: str) -> bool:
    return _verify(public_key, doc, signature)


def verify_provenance(
    image: bytes,
    job: JobDocument,
    job_signature: str,
    coordinator_key: PublicKey,
    result: ResultDocument,
    result_signature: str,
    worker_key: PublicKey,
) -> list[str]:
    """Every reason the image's provenance does not hold; an empty list means it is verified."""
    problems: list[str] = []
    if not verify_job(coordinator_key, job, job_signature):
        problems.append(f"The job signature does not verify with coordinator key {coordinator_key}.")
    if not verify_result(worker_key, result, result_signature):
        problems.append(f"The result signature does not verify with worker key {worker_key}.")
    if result.job_id != job.job_id:
        problems.append(f"The result is for job {result.job_id!r}, not job {job.job_id!r}.")
    actual = sha256_hex(image)
    if result.image_sha256 is None:
        problems.append("The result does not attest to any image hash.")
    elif result.image_sha256.lower() != actual:
        problems.append(f"The image's SHA-256 is {actual}, but the result attests {result.image_sha256}.")
    return problems
