"""Verdicts: what a spot check concluded about one node's image, as a document the coordinator signs
(protocol/verdicts.py).

A verdict names the image (its job, and the SHA-256 its node signed), the node, the outcome, and the
evidence: which nodes' images of the same job it was compared with, their hardware classes and the
distance. Anyone holding the coordinator's public key can check it offline; a failure's forfeits name
its id in the public ledger (`forfeit:WORKER:JOB:verdict:ID`), and every verdict is a ledger entry of its own
(kind `verdict`, amount 0: `verdict:JOB:WORKER:OUTCOME:SHA256 of the document`).
"""

from coordinator.storage import checks as check_rows
from coordinator.storage.records import JobRecord, Worker
from coordinator.storage.sql import Tx
from protocol.keys import Identity
from protocol.verdicts import (
    CheckRound,
    Comparison,
    ImageChecks,
    SignedVerdict,
    VerdictDocument,
    sign_verdict,
    verdict_reference,
)


async def record_verdict(
    tx: Tx,
    identity: Identity,
    job: JobRecord,
    worker: Worker,
    outcome: str,
    evidence: list[Comparison],
    now: float,
    rule: str = "rerun",
) -> int:
    """Store a signed verdict; its id."""
    document = VerdictDocument(
        job_id=job.id,
        image_sha256=job.image_sha256,
        worker_id=worker.id,
        worker_name=worker.name,
        hardware=worker.hardware,
        outcome=outcome,
        compared_with=evidence,
        created=int(now),
        rule=rule,
    )
    signed = SignedVerdict(document=document, signature=sign_verdict(identity, document))
    # On the public ledger too (an entry that moves nothing), so a node's record is in the hash chain.
    await tx.move_kudos("verdict", None, worker.owner_id, 0, verdict_reference(document), now)
    return await check_rows.insert_verdict(tx, job.id, worker.id, outcome, now, signed.model_dump_json())


async def image_checks(tx: Tx, job_id: str) -> ImageChecks:
    """The verdicts about one image, and whether a check of it is still open."""
    verdicts = [SignedVerdict.model_validate_json(info) for info in await check_rows.verdicts_of(tx, job_id)]
    checks = await check_rows.checks_of_subject(tx, job_id)
    pending = any(check["state"] == check_rows.PENDING for check in checks)
    rounds = [CheckRound(round=c["round"], state=c["state"], created=c["created"]) for c in checks]
    return ImageChecks(job_id=job_id, pending=pending, verdicts=verdicts, checks=rounds)
