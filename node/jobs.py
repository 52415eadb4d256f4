"""Turning a pop into per-image jobs, checking the coordinator's promises, and results into spool entries.

A pop may carry several ids (a batch from one request). Each id becomes its own `ImageJob`, run,
signed, spooled and submitted on its own, so one fault never costs the other images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from node.spool import SpoolEntry
from protocol.jobs import PopResponse
from protocol.keys import Identity, PublicKey
from protocol.provenance import JobDocument, ResultDocument, sha256_hex, sign_result, verify_job
from protocol.seeds import SEED_SPACE, seed_number

MAX_REASON_CHARS = 500


@dataclass
class ImageJob:
    """One image to make: the payload to run (its own seed, n_iter 1) and where the result goes."""

    job_id: str
    model: str
    payload: dict[str, object]
    source_processing: str = "txt2img"
    source_image: str | None = None
    source_mask: str | None = None
    r2_upload: str | None = None
    document: JobDocument | None = None
    signature: str | None = None
    document_error: str | None = None

    @property
    def seed(self) -> str:
        return str(self.payload.get("seed", "0"))

    def dimension(self, key: str) -> int:
        try:
            return int(self.payload.get(key) or 0)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return 0

    def describe(self) -> dict[str, object]:
        """The fields the console shows when the job starts."""
        return {
            "job": self.job_id,
            "model": self.model,
            "width": self.dimension("width"),
            "height": self.dimension("height"),
            "steps": self.dimension("ddim_steps"),
            "processing": self.source_processing,
        }


@dataclass
class PopUnit:
    """The jobs of one pop; they share the request's source images (fetched once)."""

    jobs: list[ImageJob]
    source_processing: str = "txt2img"
    source_image: str | None = None
    source_mask: str | None = None
    sources: dict[str, bytes] = field(default_factory=dict)


def split_pop(pop: PopResponse) -> PopUnit:
    ids = pop.ids or ([pop.id] if pop.id else [])
    uploads = pop.r2_uploads or ([pop.r2_upload] if pop.r2_upload and len(ids) == 1 else [])
    jobs = [_image_job(pop, index, job_id, uploads) for index, job_id in enumerate(ids)]
    return PopUnit(jobs, pop.source_processing, pop.source_image, pop.source_mask)


def _image_job(pop: PopResponse, index: int, job_id: str, uploads: list[str]) -> ImageJob:
    job = ImageJob(
        job_id=job_id,
        model=pop.model or "",
        payload=_nth_payload(pop.payload, index),
        source_processing=pop.source_processing,
        source_image=pop.source_image,
        source_mask=pop.source_mask,
        r2_upload=uploads[index] if index < len(uploads) else None,
    )
    if index < len(pop.jobs):
        signed = pop.jobs[index]
        job.signature = signed.signature
        try:
            job.document = JobDocument.model_validate(signed.document)
            # Run exactly what the coordinator signed: its payload carries this image's own seed.
            job.payload = {**job.document.payload, "n_iter": 1}
        except ValidationError as exc:
            job.document_error = f"the job document is malformed: {exc.errors()[0].get('msg')}"
    return job


def _nth_payload(payload: dict[str, object], index: int) -> dict[str, object]:
    # Unsigned batches (AI Horde) number their images' seeds up from the payload's seed.
    seed = (seed_number(payload.get("seed")) + index) % SEED_SPACE
    return {**payload, "seed": str(seed), "n_iter": 1}


# -- the coordinator's promises ---------------------------------------------------------------------


def refusal(job: ImageJob, key: PublicKey) -> str | None:
    """Why this job must not be run under the pinned coordinator key; None when it checks out."""
    if job.document_error:
        return job.document_error
    if job.document is None or not job.signature:
        return "the job carries no coordinator signature"
    if not verify_job(key, job.document, job.signature):
        return f"the job's coordinator signature does not verify with the pinned key {key.text()}"
    if job.document.job_id != job.job_id:
        return f"the signed job is {job.document.job_id!r}, not {job.job_id!r}"
    if job.document.model != job.model:
        return f"the signed model is {job.document.model!r}, not {job.model!r}"
    return None


def source_mismatch(job: ImageJob, field: str, data: bytes | None) -> str | None:
    """Whether a source (`field`: source_image or source_mask) is the one the signed document names by
    hash: a source it does not sign, or one it signs that the pop lacks, is a mismatch too."""
    if job.document is None:
        return None
    expected: str | None = getattr(job.document, f"{field}_sha256")
    label = field.replace("_", " ")
    if expected is None:
        return None if data is None else f"the coordinator signed no {label}"
    if data is None or sha256_hex(data) != expected.lower():
        return f"the {label} is not the one the coordinator signed"
    return None


def source_url_signed(job: ImageJob, field: str, url: str) -> bool:
    """Whether the signed document names `url` as where this source may be fetched from."""
    return job.document is not None and getattr(job.document, f"{field}_url") == url


# -- results ----------------------------------------------------------------------------------------


def ok_entry(
    job: ImageJob,
    image: bytes,
    seed: int | str,
    identity: Identity | None,
    *,
    censored: bool = False,
    metadata: list[dict[str, str]] | None = None,
) -> SpoolEntry:
    """A delivered image; a censored one (a placeholder) is submitted as AI Horde's workers do."""
    digest = sha256_hex(image)
    state = "censored" if censored else "ok"
    entry = SpoolEntry(job_id=job.job_id, state=state, seed=str(seed), image_sha256=digest, r2_upload=job.r2_upload)
    entry.censored = censored
    entry.gen_metadata = list(metadata or [])
    entry.model = job.model
    entry.signature = _sign(identity, entry)
    return entry


def fault_entry(
    job: ImageJob,
    reason: str,
    identity: Identity | None,
    *,
    kind: str = "information",
    value: str = "see_ref",
) -> SpoolEntry:
    """A faulted submit; gen_metadata says why, in AI Horde's {type, value, ref} shape."""
    entry = SpoolEntry(job_id=job.job_id, state="faulted", seed=job.seed, model=job.model)
    entry.gen_metadata = [{"type": kind, "value": value, "ref": reason[:MAX_REASON_CHARS]}]
    entry.signature = _sign(identity, entry)
    return entry


def _sign(identity: Identity | None, entry: SpoolEntry) -> str | None:
    if identity is None:
        return None
    doc = ResultDocument(job_id=entry.job_id, image_sha256=entry.image_sha256, seed=entry.seed, state=entry.state)
    return sign_result(identity, doc)
