"""Delivering spooled results: upload, submit, retry with backoff, and forget only on a final answer."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from node.console import Console
from node.coordinator_api import ApiError, CoordinatorClient, Unreachable
from node.spool import Spool, SpoolEntry
from protocol.generation import GenMetadataEntry
from protocol.jobs import SubmitRequest, SubmitResult

log = logging.getLogger(__name__)

CONTENT_TYPES = {"webp": "image/webp", "png": "image/png", "jpeg": "image/jpeg"}


class Backoff:
    """Exponential backoff with jitter: the n-th delay is drawn from [d/2, d], d = min(cap, base·2ⁿ).

    The jitter keeps a fleet of nodes from hammering a coordinator in lockstep when it comes back.
    """

    def __init__(
        self, base: float = 1.0, cap: float = 60.0, factor: float = 2.0, rng: random.Random | None = None
    ) -> None:
        self.base, self.cap, self.factor = base, cap, factor
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * self.factor**self.attempts)
        self.attempts += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class NodeStats:
    """Counters the daemon exposes (and tests read)."""

    jobs_done: int = 0
    jobs_faulted: int = 0
    jobs_refused: int = 0
    jobs_submitted: int = 0
    kudos_earned: float = 0.0
    kudos_held: float = 0.0  # of kudos_earned, held in escrow when they were earned (docs/security.md)
    started_at: float = 0.0
    submitted_ids: list[str] = field(default_factory=list)

    def kudos_per_hour(self, now: float) -> float:
        hours = max(now - self.started_at, 60.0) / 3600
        return self.kudos_earned / hours


class Delivery:
    """One queue of results to deliver, worked through in order by `run()`.

    `online` is cleared while the coordinator is unreachable (the popper waits on it) and set again
    by the first acknowledged submit.
    """

    def __init__(
        self,
        client: CoordinatorClient,
        spool: Spool,
        console: Console,
        stats: NodeStats,
        *,
        image_format: str = "webp",
        backoff: Backoff | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client, self.spool, self.console, self.stats = client, spool, console, stats
        self.content_type = CONTENT_TYPES.get(image_format, "application/octet-stream")
        self.backoff = backoff or Backoff()
        self.online = asyncio.Event()
        self.online.set()
        self._queue: asyncio.Queue[SpoolEntry] = asyncio.Queue()
        self._clock = clock or asyncio.get_running_loop().time

    def enqueue(self, entry: SpoolEntry) -> None:
        self._queue.put_nowait(entry)

    def replay(self) -> int:
        """Queue what an earlier run left in the spool; returns how many."""
        entries = self.spool.pending()
        for entry in entries:
            self.enqueue(entry)
        if entries:
            self.console.event("spool_replay", count=len(entries))
        return len(entries)

    async def run(self) -> None:
        while True:
            entry = await self._queue.get()
            try:
                await self.deliver(entry)
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Until everything queued so far is delivered (or set aside)."""
        await self._queue.join()

    async def deliver(self, entry: SpoolEntry) -> None:
        """Retries until the coordinator gives a final answer; only then leaves the spool."""
        while True:
            try:
                result = await self._attempt(entry)
            except Unreachable as exc:
                await self._wait_out(exc)
                continue
            except ApiError as exc:
                if exc.is_auth:
                    # Maybe a rotated apikey the operator is about to fix: keep the result, keep trying.
                    await self._wait_out(exc)
                    continue
                self._settle(entry, exc)
                return
            self._acknowledged(entry, result.reward, result.held)
            return

    async def _attempt(self, entry: SpoolEntry) -> SubmitResult:
        generation = ""
        if entry.has_image:
            generation = await self._image_field(entry)
        request = SubmitRequest(
            id=entry.job_id,
            generation=generation,
            state=entry.state,
            seed=entry.seed,
            censored=entry.censored,
            gen_metadata=[GenMetadataEntry.model_validate(item) for item in entry.gen_metadata],
            signature=entry.signature,
        )
        return await self.client.submit_result(request)

    async def _image_field(self, entry: SpoolEntry) -> str:
        image = self.spool.image(entry)
        # The coordinator's own upload endpoint exists for AI Horde workers; sending the image inline
        # saves a round trip, and the coordinator a file it would write only to read back. An upload
        # URL elsewhere (a bucket) takes the bytes off the coordinator, so it is used.
        if entry.r2_upload and not entry.uploaded and not self.client.is_own_url(entry.r2_upload):
            try:
                await self.client.upload(entry.r2_upload, image, self.content_type)
            except ApiError as exc:
                # An expired or refused upload URL: the coordinator also takes the image inline.
                log.warning("upload for job %s refused (%s); sending the image inline", entry.job_id, exc)
                entry.r2_upload = None
            else:
                self.spool.mark_uploaded(entry)
        if entry.r2_upload and entry.uploaded:
            return "R2"
        return base64.b64encode(image).decode("ascii")

    async def _wait_out(self, exc: Exception) -> None:
        delay = self.backoff.next_delay()
        if self.online.is_set() or self.backoff.attempts % 5 == 1:
            self.console.event("unreachable", logging.WARNING, error=str(exc), delay=delay)
        self.online.clear()
        await asyncio.sleep(delay)

    def _acknowledged(self, entry: SpoolEntry, reward: float, held: float = 0.0) -> None:
        if not self.online.is_set():
            self.console.event("reachable")
        self.online.set()
        self.backoff.reset()
        self.spool.remove(entry)
        self.stats.jobs_submitted += 1
        self.stats.submitted_ids.append(entry.job_id)
        self.stats.kudos_earned += reward
        self.stats.kudos_held += held
        self.console.event(
            "submitted",
            job=entry.job_id,
            state=entry.state,
            kudos=reward,
            held=held,
            # Held kudos are its owner's only once the node's verification window closes clean.
            held_note=" (held until checks clear)" if held else "",
            kudos_total=round(self.stats.kudos_earned, 2),
            kudos_per_hour=self.stats.kudos_per_hour(self._clock()),
            done=self.stats.jobs_done,
            faulted=self.stats.jobs_faulted,
        )

    def _settle(self, entry: SpoolEntry, exc: ApiError) -> None:
        self.online.set()
        self.backoff.reset()
        if exc.is_final_submit:
            self.console.event("settled", job=entry.job_id, rc=exc.rc)
            self.spool.remove(entry)
            return
        # Any other refusal would repeat forever: set the result aside, on disk, for the operator.
        where = self.spool.set_aside(entry)
        self.console.event("rejected", logging.ERROR, job=entry.job_id, error=str(exc), where=str(where))
