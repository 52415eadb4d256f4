"""Pops become per-image jobs; coordinator signatures are checked; results are signed; stalls are caught."""

import threading
import time

import pytest

from node.jobs import fault_entry, ok_entry, refusal, source_mismatch, source_url_signed, split_pop
from node.jobspec import GeneratedImage, InferenceAborted
from node.runner import Progress, Slot, Stalled
from protocol.jobs import PopResponse
from protocol.keys import Identity
from protocol.provenance import JobDocument, ResultDocument, request_digest, sha256_hex, sign_job, verify_result

COORDINATOR = Identity.generate()
PAYLOAD = {
    "prompt": "a cat",
    "ddim_steps": 4,
    "width": 64,
    "height": 64,
    "seed": "10",
    "sampler_name": "k_euler",
    "cfg_scale": 7.0,
    "n_iter": 2,
}


def signed_pop(ids: list[str], *, model: str = "tiny-sd", source: bytes | None = None) -> PopResponse:
    jobs = []
    for index, job_id in enumerate(ids):
        doc = JobDocument(
            job_id=job_id,
            request_sha256=request_digest("r"),
            model=model,
            payload={**PAYLOAD, "seed": str(100 + index)},
            source_image_sha256=sha256_hex(source) if source else None,
            source_mask_sha256=None,
            ttl=150,
            worker_id="w",
            issued_at=1,
        )
        jobs.append({"document": doc.model_dump(), "signature": sign_job(COORDINATOR, doc)})
    return PopResponse(ids=ids, payload=PAYLOAD, model=model, jobs=jobs, r2_uploads=[f"http://up/{i}" for i in ids])


def test_a_batch_becomes_one_job_per_image_with_its_signed_seed() -> None:
    unit = split_pop(signed_pop(["a", "b"]))
    assert [(job.job_id, job.seed, job.payload["n_iter"], job.r2_upload) for job in unit.jobs] == [
        ("a", "100", 1, "http://up/a"),
        ("b", "101", 1, "http://up/b"),
    ]
    assert all(refusal(job, COORDINATOR.public_key) is None for job in unit.jobs)


def test_unsigned_batches_number_their_seeds() -> None:
    unit = split_pop(PopResponse(ids=["a", "b", "c"], payload=PAYLOAD, model="m"))
    assert [job.seed for job in unit.jobs] == ["10", "11", "12"]
    assert refusal(unit.jobs[0], COORDINATOR.public_key) == "the job carries no coordinator signature"


def test_a_forged_or_altered_job_is_refused() -> None:
    impostor = Identity.generate().public_key
    job = split_pop(signed_pop(["a"])).jobs[0]
    assert "does not verify" in (refusal(job, impostor) or "")
    tampered = split_pop(signed_pop(["a"]))
    tampered.jobs[0].job_id = "b"
    assert "not 'b'" in (refusal(tampered.jobs[0], COORDINATOR.public_key) or "")
    pop = signed_pop(["a"])
    pop.jobs[0].document["payload"]["prompt"] = "something else"
    assert "does not verify" in (refusal(split_pop(pop).jobs[0], COORDINATOR.public_key) or "")
    pop = signed_pop(["a"])
    pop.jobs[0].document["extra"] = 1
    assert "malformed" in (refusal(split_pop(pop).jobs[0], COORDINATOR.public_key) or "")


def test_sources_must_be_the_signed_ones() -> None:
    job = split_pop(signed_pop(["a"], source=b"picture")).jobs[0]
    assert source_mismatch(job, "source_image", b"picture") is None
    assert "source image" in (source_mismatch(job, "source_image", b"another") or "")
    assert "source image" in (source_mismatch(job, "source_image", None) or "")  # signed, but not in the pop
    assert source_mismatch(job, "source_mask", None) is None
    assert "signed no source mask" in (source_mismatch(job, "source_mask", b"unsigned") or "")
    assert not source_url_signed(job, "source_image", "https://elsewhere/x")


def test_results_are_signed_over_the_exact_image() -> None:
    node = Identity.generate()
    job = split_pop(signed_pop(["a"])).jobs[0]
    ok = ok_entry(job, b"image bytes", 100, node)
    doc = ResultDocument(job_id="a", image_sha256=sha256_hex(b"image bytes"), seed="100", state="ok")
    assert ok.signature and verify_result(node.public_key, doc, ok.signature)
    fault = fault_entry(job, "x" * 2000, node)
    assert fault.gen_metadata == [{"type": "information", "value": "see_ref", "ref": "x" * 500}]
    fault_doc = ResultDocument(job_id="a", image_sha256=None, seed="100", state="faulted")
    assert fault.signature and verify_result(node.public_key, fault_doc, fault.signature)
    assert fault_entry(job, "why", None).signature is None  # apikey-only mode


class FakeGenerator:
    """Steps on a timer; `hang` stops calling back (a stuck kernel), `deaf` also ignores aborts."""

    def __init__(self, steps: int = 3, hang: bool = False, deaf: bool = False) -> None:
        self.steps, self.hang, self.deaf = steps, hang, deaf
        self.release = threading.Event()

    def run(self, job, on_step=None, should_abort=None):
        for step in range(self.steps):
            if self.hang:
                while not self.release.wait(0.01):
                    if should_abort() and not self.deaf:
                        raise InferenceAborted("asked to stop")
            on_step(step + 1, self.steps)
        return [GeneratedImage(None, 1, "fake")]


async def test_slot_returns_what_the_generator_makes() -> None:
    slot = Slot(0, FakeGenerator)
    progress = Progress()
    images = await slot.run(None, progress, step_timeout=5)  # type: ignore[arg-type]
    assert images[0].faulted_reason == "fake" and (progress.step, progress.total) == (3, 3)
    slot.close()


async def test_watchdog_aborts_a_stalled_job() -> None:
    slot = Slot(0, lambda: FakeGenerator(hang=True))
    progress = Progress()
    with pytest.raises(InferenceAborted):
        await slot.run(None, progress, step_timeout=0.1)  # type: ignore[arg-type]
    assert progress.abort_reason and progress.abort_reason.startswith("watchdog: no step progress")
    slot.close()


async def test_watchdog_abandons_a_thread_that_ignores_the_abort() -> None:
    generator = FakeGenerator(hang=True, deaf=True)
    slot = Slot(0, lambda: generator)
    first_executor = slot.executor
    started = time.monotonic()
    with pytest.raises(Stalled, match="watchdog"):
        await slot.run(None, Progress(), step_timeout=0.1)  # type: ignore[arg-type]
    assert time.monotonic() - started < 3
    assert slot.executor is not first_executor  # a fresh thread for the next job
    generator.release.set()
    slot.close()
