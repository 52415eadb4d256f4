"""The free check on every image (docs/security.md, "Verified work"): a node that answers a job with an image it
already delivered for another job (a cached picture) is caught at once, with no inference.

Each delivered txt2img image's decoded-pixel hash (coordinator/likeness.py, so a re-encoding is the same image)
is stored with its recipe: the hash of its model, prompt and seed. Two jobs of one recipe may honestly give
the same pixels (the same request twice, a spot check, a canary); two of different recipes never do, as
diffusion from another seed or prompt moves every pixel. So when an image's pixels equal an earlier image of
another recipe, one of the two is not its job's image. If the same owner's node made both, that owner
delivered a copy: the new image fails at once. If another owner's node made the earlier one, either may be
the false one (a node that answers with another seed's image makes an image an honest node of that seed
makes later), so the new image is spot-checked for certain instead (the earlier one was checked, or not, when
it came). One indexed lookup and one insert per image. Images of a single flat colour
are left out: a broken model (NaNs) gives those for any seed, and that is a fault, not a copy.
"""

import hashlib
from dataclasses import dataclass

from coordinator.likeness import Fingerprint
from coordinator.storage import checks as check_rows
from coordinator.storage.records import JobRecord, RequestRecord, Worker
from coordinator.storage.sql import Tx
from protocol.canonical import canonical_json
from protocol.verdicts import Comparison


def recipe(job: JobRecord) -> str:
    """What the image was asked to be: its model, prompt and seed."""
    payload = (job.job_document or {}).get("payload", {})
    asked = {"model": job.model or "", "prompt": payload.get("prompt", ""), "seed": str(payload.get("seed", job.seed))}
    return hashlib.sha256(canonical_json(asked)).hexdigest()


def free_checkable(job: JobRecord, request: RequestRecord) -> bool:
    """Delivered, uncensored txt2img images (a source image can honestly come back unchanged)."""
    return job.result_state == "ok" and not job.censored and job.image is not None and request.source_image is None


@dataclass(frozen=True)
class Copy:
    """An earlier image of another recipe with the same pixels, as a verdict's evidence."""

    earlier: Comparison
    same_owner: bool  # made by a node of the same owner: a copy for sure


async def copied_from(tx: Tx, job: JobRecord, worker: Worker, print_: Fingerprint, now: float) -> Copy | None:
    """The earlier image of another recipe with this one's pixels; None if none. Records this image either
    way (a copy too: a third copy is caught against either)."""
    if print_.flat:
        return None
    own = recipe(job)
    earlier = await check_rows.earlier_image(tx, print_.pixels_sha256, own)
    await check_rows.insert_print(tx, job.id, print_.pixels_sha256, own, worker.id, now)
    if earlier is None:
        return None
    maker = await tx.worker_by("id", earlier["worker_id"])
    evidence = Comparison(
        job_id=earlier["job_id"],
        worker_id=earlier["worker_id"],
        worker_name=maker.name if maker else "",
        hardware=maker.hardware if maker else "",
        distance=0.0,
    )
    return Copy(evidence, maker is not None and maker.owner_id == worker.owner_id)
