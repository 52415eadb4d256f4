"""Where every job ends: spooled (durably) and queued for delivery, with the counters and the console told.

The one rule: a job leaves `unfinished` only once its result is on disk, so a crash, a second
signal or a coordinator outage at any moment loses nothing that was done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from node.console import Console
from node.delivery import Delivery, NodeStats
from node.jobs import ImageJob, fault_entry, ok_entry
from node.spool import Spool, SpoolEntry
from protocol.keys import Identity

log = logging.getLogger(__name__)
# gen_metadata types of a fault the request's sources caused (download_failed, parse_failed): not this node's.
SOURCE_METADATA_TYPES = frozenset({"source_image", "source_mask", "extra_source_images"})


class Results:
    """Records outcomes; after `max_faults` node faults in a row it calls `on_unhealthy(reason)`."""

    def __init__(
        self,
        spool: Spool,
        delivery: Delivery,
        stats: NodeStats,
        console: Console,
        *,
        max_faults: int,
        on_unhealthy: Callable[[str], None],
    ) -> None:
        self.spool, self.delivery, self.stats, self.console = spool, delivery, stats, console
        self.signer: Identity | None = None  # set once the coordinator handshake chose signed mode
        self.unfinished: dict[str, ImageJob] = {}
        self._max_faults = max_faults
        self._on_unhealthy = on_unhealthy
        self._faults_in_a_row = 0

    def taken(self, jobs: Iterable[ImageJob]) -> None:
        self.unfinished.update((job.job_id, job) for job in jobs)

    async def ok(
        self,
        job: ImageJob,
        encode: Callable[[], bytes],
        seed: int | str,
        seconds: float,
        *,
        censored: bool = False,
        metadata: list[dict[str, str]] | None = None,
    ) -> None:
        """Encode, sign and spool the image in one trip off the event loop (the spool fsyncs, and
        each hop back to the loop takes the GIL from inference), then queue it for delivery."""

        def store() -> tuple[SpoolEntry, int]:
            image = encode()
            entry = ok_entry(job, image, seed, self.signer, censored=censored, metadata=metadata)
            self.spool.put(entry, image)
            return entry, len(image)

        entry, size = await asyncio.to_thread(store)
        self._spooled(job, entry)
        self.stats.jobs_done += 1
        self._faults_in_a_row = 0
        self.console.event("job_done", job=job.job_id, seconds=seconds, bytes=size)

    def fault(
        self,
        job: ImageJob,
        reason: str,
        *,
        node_fault: bool = True,
        kind: str = "information",
        value: str = "see_ref",
    ) -> None:
        """Submit as faulted. `node_fault=False` for the request's own problems, which say nothing
        about this node's health and so don't count toward the pause; a fault about a source (AI Horde's
        gen_metadata types for them) is always the request's."""
        entry = fault_entry(job, reason, self.signer, kind=kind, value=value)
        self.spool.put(entry, None)  # a small JSON file; faults are rare, so written where they happen
        self._spooled(job, entry)
        self.stats.jobs_faulted += 1
        self.console.event("job_faulted", logging.WARNING, job=job.job_id, reason=reason)
        if not node_fault or kind in SOURCE_METADATA_TYPES:
            return
        self._faults_in_a_row += 1
        if self._faults_in_a_row >= self._max_faults:
            self._faults_in_a_row = 0
            self._on_unhealthy(f"{self._max_faults} faults in a row")

    def refuse(self, job: ImageJob, reason: str, *, kind: str = "information", value: str = "see_ref") -> None:
        """A job the coordinator's signature does not vouch for: never run, loudly reported."""
        self.stats.jobs_refused += 1
        log.error("refused job %s: %s", job.job_id, reason)
        self.console.event("job_refused", logging.ERROR, job=job.job_id, reason=reason)
        self.fault(job, f"refused by the node: {reason}", node_fault=False, kind=kind, value=value)

    def abandon_all(self, reason: str) -> None:
        for job in list(self.unfinished.values()):
            self.fault(job, reason, node_fault=False)

    def _spooled(self, job: ImageJob, entry: SpoolEntry) -> None:
        self.unfinished.pop(job.job_id, None)
        self.delivery.enqueue(entry)
