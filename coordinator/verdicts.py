"""Verdicts: what a spot check concluded about one node's image, as a document the coordinator signs.

A verdict names the image (its job, and the SHA-256 its node signed), the node, the outcome, and the
evidence: which nodes' images of the same job it was compared with, their hardware classes and the
distance. Anyone holding the coordinator's public key can check it offline; a failure's forfeits name
its id in the public ledger (`forfeit:WORKER:WHAT:verdict:ID`).
"""

import json
from typing import Any

from coordinator.storage.records import JobRecord, Worker
from coordinator.storage.sql import Tx
from protocol.canonical import canonical_json
from protocol.keys import Identity, b64url_encode


def verdict_document(job: JobRecord, worker: Worker, outcome: str, evidence: list[dict[str, Any]], now: float
                     ) -> dict[str, Any]:  # fmt: skip
    return {
        "job_id": job.id, "image_sha256": job.image_sha256, "worker_id": worker.id, "worker_name": worker.name,
        "hardware": worker.hardware, "outcome": outcome, "compared_with": evidence, "created": int(now),
    }  # fmt: skip


def sign_verdict(identity: Identity, document: dict[str, Any]) -> str:
    return b64url_encode(identity.sign(canonical_json(document)))


async def record_verdict(
    tx: Tx, identity: Identity, job: JobRecord, worker: Worker, outcome: str, evidence: list[dict[str, Any]],
    now: float,
) -> int:  # fmt: skip
    """Store a signed verdict; its id."""
    document = verdict_document(job, worker, outcome, evidence, now)
    info = json.dumps({"document": document, "signature": sign_verdict(identity, document)})
    row = await tx.driver.fetchone(
        "INSERT INTO verdicts (job_id, worker_id, outcome, created, info) VALUES (?, ?, ?, ?, ?) RETURNING id",
        (job.id, worker.id, outcome, now, info),
    )
    assert row is not None
    return int(row["id"])


async def verdicts_of(tx: Tx, job_id: str) -> list[dict[str, Any]]:
    """The signed verdicts about one image: [{document, signature}]."""
    rows = await tx.driver.fetchall("SELECT info FROM verdicts WHERE job_id = ? ORDER BY id", (job_id,))
    return [json.loads(row["info"]) for row in rows]
