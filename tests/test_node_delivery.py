"""Delivery: backoff with jitter, retry until acknowledged, forget only on a final answer."""

import asyncio
import base64
import hashlib
import io
import random
from pathlib import Path

import pytest

from node.console import Console
from node.coordinator_api import ApiError, Unreachable, api_root
from node.delivery import Backoff, Delivery, NodeStats
from node.spool import REJECTED, Spool, SpoolEntry
from protocol.jobs import SubmitRequest, SubmitResult


class FakeCoordinator:
    """Answers submits from a script of outcomes (an exception to raise, or a reward)."""

    def __init__(self, *outcomes: object, upload_error: Exception | None = None) -> None:
        self.outcomes = list(outcomes)
        self.upload_error = upload_error
        self.submits: list[SubmitRequest] = []
        self.uploads: list[tuple[str, bytes]] = []

    async def submit_result(self, request: SubmitRequest) -> SubmitResult:
        self.submits.append(request)
        outcome = self.outcomes.pop(0) if self.outcomes else 1.0
        if isinstance(outcome, Exception):
            raise outcome
        return SubmitResult(reward=float(outcome))  # type: ignore[arg-type]

    def is_own_url(self, url: str) -> bool:
        return url.startswith("http://coordinator/")

    async def upload(self, url: str, data: bytes, content_type: str) -> None:
        if self.upload_error:
            raise self.upload_error
        self.uploads.append((url, data))


def entry_with_image(spool: Spool, upload: str | None = None) -> tuple[SpoolEntry, bytes]:
    image = b"RIFF-webp-ish"
    entry = SpoolEntry("job-1", "ok", "5", image_sha256=hashlib.sha256(image).hexdigest(), r2_upload=upload)
    spool.put(entry, image)
    return entry, image


def delivery_for(fake: FakeCoordinator, spool: Spool) -> Delivery:
    console = Console(io.StringIO())
    return Delivery(fake, spool, console, NodeStats(), backoff=Backoff(base=0.01, cap=0.02))  # type: ignore[arg-type]


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    backoff = Backoff(base=1, cap=8, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays[3:]}) == 3  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_api_root_accepts_both_forms() -> None:
    assert api_root("http://h:1") == api_root("http://h:1/") == api_root("http://h:1/api/") == "http://h:1/api/"


async def test_retries_while_unreachable_then_removes_from_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry, image = entry_with_image(spool)
    fake = FakeCoordinator(Unreachable("down"), Unreachable("down"), 3.5)
    delivery = delivery_for(fake, spool)
    offline_seen = []
    real_wait_out = delivery._wait_out

    async def wait_out(exc: Exception) -> None:
        await real_wait_out(exc)
        offline_seen.append(not delivery.online.is_set())

    delivery._wait_out = wait_out  # type: ignore[method-assign]
    await delivery.deliver(entry)
    assert offline_seen == [True, True] and delivery.online.is_set()
    assert len(fake.submits) == 3
    assert base64.b64decode(fake.submits[-1].generation) == image
    assert delivery.stats.kudos_earned == 3.5 and delivery.stats.jobs_submitted == 1
    assert spool.pending() == []


@pytest.mark.parametrize("rc", ["DuplicateGen", "AbortedGen"])
async def test_final_answers_settle_the_result(tmp_path: Path, rc: str) -> None:
    spool = Spool(tmp_path)
    entry, _ = entry_with_image(spool)
    delivery = delivery_for(FakeCoordinator(ApiError(400, rc, "no")), spool)
    await delivery.deliver(entry)
    assert spool.pending() == [] and not (tmp_path / REJECTED).exists()
    assert delivery.stats.kudos_earned == 0


async def test_other_refusals_are_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry, _ = entry_with_image(spool)
    await delivery_for(FakeCoordinator(ApiError(404, "InvalidJobID", "unknown")), spool).deliver(entry)
    assert spool.pending() == []
    assert len(list((tmp_path / REJECTED).iterdir())) == 2


async def test_uploads_once_then_submits_r2(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry, image = entry_with_image(spool, upload="http://store/put/1")
    fake = FakeCoordinator(Unreachable("submit failed"), 2.0)
    await delivery_for(fake, spool).deliver(entry)
    assert fake.uploads == [("http://store/put/1", image)]  # not repeated on the retry
    assert [s.generation for s in fake.submits] == ["R2", "R2"]


async def test_refused_upload_falls_back_to_inline(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry, image = entry_with_image(spool, upload="http://store/put/1")
    fake = FakeCoordinator(upload_error=ApiError(403, "UploadTokenInvalid", "expired"))
    await delivery_for(fake, spool).deliver(entry)
    assert base64.b64decode(fake.submits[0].generation) == image


async def test_replay_queues_what_a_previous_run_left(tmp_path: Path) -> None:
    entry_with_image(Spool(tmp_path))
    spool = Spool(tmp_path)
    fake = FakeCoordinator()
    delivery = delivery_for(fake, spool)
    assert delivery.replay() == 1
    runner = asyncio.create_task(delivery.run())
    await asyncio.wait_for(delivery.join(), 5)
    runner.cancel()
    assert [s.id for s in fake.submits] == ["job-1"] and spool.pending() == []
