import pytest
from pydantic import ValidationError

from protocol.keys import Identity
from protocol.provenance import (
    JobDocument,
    ResultDocument,
    request_digest,
    sha256_hex,
    sign_job,
    sign_result,
    verify_job,
    verify_provenance,
    verify_result,
)

COORDINATOR = Identity.generate()
WORKER = Identity.generate()
IMAGE = bytes(range(256)) * 40


def make_job(**changes: object) -> JobDocument:
    fields: dict[str, object] = {
        "job_id": "job-1",
        "request_sha256": request_digest("req-1"),
        "model": "stable_diffusion",
        "payload": {"prompt": "a red fox", "steps": 30, "cfg_scale": 7.5, "seed": "42"},
        "source_image_sha256": None,
        "source_mask_sha256": None,
        "ttl": 150,
        "worker_id": "worker-1",
        "issued_at": 1_700_000_000,
    }
    return JobDocument(**{**fields, **changes})


def make_result(**changes: object) -> ResultDocument:
    fields: dict[str, object] = {
        "job_id": "job-1",
        "image_sha256": sha256_hex(IMAGE),
        "seed": "42",
        "state": "ok",
    }
    return ResultDocument(**{**fields, **changes})


def test_sha256_hex_known_vector() -> None:
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_job_signature_round_trip_and_tamper() -> None:
    job = make_job()
    signature = sign_job(COORDINATOR, job)
    assert "=" not in signature and len(signature) == 86
    assert verify_job(COORDINATOR.public_key, job, signature)
    assert not verify_job(WORKER.public_key, job, signature)
    assert not verify_job(COORDINATOR.public_key, make_job(ttl=151), signature)
    assert not verify_job(COORDINATOR.public_key, make_job(payload={"prompt": "a blue fox"}), signature)


def test_signature_ignores_field_and_key_order() -> None:
    job = make_job()
    reordered = JobDocument.model_validate(dict(reversed(list(job.model_dump().items()))))
    assert verify_job(COORDINATOR.public_key, reordered, sign_job(COORDINATOR, job))


def test_result_signature_round_trip_and_tamper() -> None:
    result = make_result()
    signature = sign_result(WORKER, result)
    assert verify_result(WORKER.public_key, result, signature)
    assert not verify_result(WORKER.public_key, make_result(seed="43"), signature)
    assert not verify_result(COORDINATOR.public_key, result, signature)


@pytest.mark.parametrize("signature", ["", "not base64!", "AAAA", "=" * 10])
def test_garbage_signatures_are_false_not_errors(signature: str) -> None:
    assert not verify_job(COORDINATOR.public_key, make_job(), signature)
    assert not verify_result(WORKER.public_key, make_result(), signature)


def test_documents_are_frozen_and_strict() -> None:
    job = make_job()
    with pytest.raises(ValidationError):
        job.ttl = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        make_job(extra_field="sneaky")
    with pytest.raises(ValidationError):
        make_result(extra_field="sneaky")


def provenance(
    image: bytes = IMAGE,
    job: JobDocument | None = None,
    result: ResultDocument | None = None,
    job_signature: str | None = None,
    result_signature: str | None = None,
) -> list[str]:
    job = job or make_job()
    result = result or make_result()
    return verify_provenance(
        image,
        job,
        job_signature or sign_job(COORDINATOR, job),
        COORDINATOR.public_key,
        result,
        result_signature or sign_result(WORKER, result),
        WORKER.public_key,
    )


def test_provenance_verifies() -> None:
    assert provenance() == []


def test_one_flipped_image_byte_is_reported() -> None:
    image = bytearray(IMAGE)
    image[1234] ^= 0x80
    problems = provenance(image=bytes(image))
    assert len(problems) == 1
    assert "SHA-256" in problems[0] and sha256_hex(bytes(image)) in problems[0]


def test_result_for_another_job_is_reported() -> None:
    problems = provenance(result=make_result(job_id="job-2"))
    assert problems == ["The result is for job 'job-2', not job 'job-1'."]


def test_bad_signatures_are_reported() -> None:
    job, result = make_job(), make_result()
    forged_job = sign_job(WORKER, job)
    forged_result = sign_result(COORDINATOR, result)
    problems = provenance(job=job, result=result, job_signature=forged_job, result_signature=forged_result)
    assert len(problems) == 2
    assert "job signature" in problems[0] and "result signature" in problems[1]


def test_result_without_image_hash_is_reported() -> None:
    problems = provenance(result=make_result(image_sha256=None, state="faulted"))
    assert problems == ["The result does not attest to any image hash."]
