"""A worker: takes pops off the queue and runs their jobs on its inference slot."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from PIL import Image

from node.config import NodeConfig
from node.console import Console
from node.coordinator_api import CoordinatorClient
from node.inference import encode_image
from node.jobs import ImageJob, PopUnit, refusal
from node.jobspec import GeneratedImage, InferenceAborted, InferenceFailed, JobRejected, JobSpec
from node.metrics import STEP_SECONDS
from node.results import Results
from node.runner import Progress, Slot, Stalled, free_memory
from node.sources import SourceProblem, load_sources
from protocol.keys import PublicKey

log = logging.getLogger(__name__)

STEP_REPORT_SECONDS = 5.0


class Worker:
    """`verify_key` None means job signatures are not checked (a coordinator that doesn't sign)."""

    def __init__(
        self,
        slot: Slot,
        client: CoordinatorClient,
        config: NodeConfig,
        console: Console,
        results: Results,
        verify_key: PublicKey | None,
        model_locks: dict[str, asyncio.Lock],
    ) -> None:
        self.slot, self.client, self.config, self.console = slot, client, config, console
        self.results, self.verify_key, self.model_locks = results, verify_key, model_locks
        # Images being encoded, signed and spooled while the slot already runs the next job.
        self._finishing: set[asyncio.Task[None]] = set()

    async def run(self, queue: asyncio.Queue[PopUnit | None], done: Callable[[], None]) -> None:
        """Until a None arrives on the queue; returns once every image made is spooled."""
        try:
            while (unit := await queue.get()) is not None:
                try:
                    await self.run_unit(unit)
                except Exception as exc:  # a bug here must cost this pop's jobs, not the worker
                    log.exception("unexpected error while running a pop")
                    for job in unit.jobs:
                        if job.job_id in self.results.unfinished:
                            self.results.fault(job, f"node error: {type(exc).__name__}: {exc}")
                finally:
                    done()
            await asyncio.gather(*self._finishing)
        except asyncio.CancelledError:
            for task in self._finishing:
                task.cancel()
            raise

    async def run_unit(self, unit: PopUnit) -> None:
        jobs = self._vouched(unit)
        if not jobs:
            return
        try:
            image, mask = await load_sources(self.client, unit, jobs, signed=self.verify_key is not None)
        except SourceProblem as problem:  # the request's sources, not this node's health
            for job in jobs:
                if problem.refused:
                    self.results.refuse(job, problem.reason, kind=problem.field, value=problem.value)
                else:
                    self.results.fault(job, problem.reason, node_fault=False, kind=problem.field, value=problem.value)
            return
        for job in jobs:
            await self.run_job(job, image, mask)

    def _vouched(self, unit: PopUnit) -> list[ImageJob]:
        """The pop's jobs the coordinator's signature vouches for; the others are refused. Checked before
        anything is fetched, so a pop nobody signed cannot make the node connect anywhere."""
        if self.verify_key is None:
            return list(unit.jobs)
        vouched = []
        for job in unit.jobs:
            reason = refusal(job, self.verify_key)
            if reason:
                self.results.refuse(job, reason)
            else:
                vouched.append(job)
        return vouched

    async def run_job(self, job: ImageJob, image: Image.Image | None, mask: Image.Image | None) -> None:
        try:
            spec = JobSpec.from_payload(job.model, job.payload, image, mask, job.source_processing)
        except JobRejected as exc:
            self.results.fault(job, exc.reason, node_fault=False)
            return
        self.console.event("job_started", **job.describe())
        started = time.monotonic()
        # A model's pipeline (and its scheduler, LoRAs) is shared by the slots: one job on it at a time.
        async with self.model_locks.setdefault(job.model, asyncio.Lock()):
            progress = Progress()
            try:
                # Our coordinators (those that sign jobs) take step reports; AI Horde does not.
                reporter = _StepReporter(self.console, job, self.client if self.verify_key is not None else None)
                images = await self.slot.run(spec, progress, self.config.step_timeout, reporter)
            except JobRejected as exc:
                self.results.fault(job, exc.reason, node_fault=False)
            except InferenceAborted as exc:
                self.results.fault(job, progress.abort_reason or str(exc) or "aborted")
            except (Stalled, InferenceFailed) as exc:
                self.results.fault(job, str(exc))
                free_memory()
            except Exception as exc:
                log.exception("inference error in job %s", job.job_id)
                self.results.fault(job, f"{type(exc).__name__}: {exc}")
                free_memory()
            else:
                STEP_SECONDS.observe((time.monotonic() - started) / max(spec.steps, 1))
                self._finish_later(job, images[0], time.monotonic() - started)

    def _finish_later(self, job: ImageJob, generated: GeneratedImage, seconds: float) -> None:
        """Encode, sign and spool the image while the slot goes on to the next job: on a node
        kept busy by prefetching, that work would otherwise leave the accelerator idle."""
        task = asyncio.create_task(self._finish(job, generated, seconds))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, job: ImageJob, generated: GeneratedImage, seconds: float) -> None:
        if generated.image is None:
            self.results.fault(job, generated.faulted_reason or "no image was produced")
            return
        config, image = self.config, generated.image
        try:
            await self.results.ok(
                job,
                lambda: encode_image(image, config.image_format, config.image_quality, config.image_lossless),
                generated.seed,
                seconds,
                censored=generated.censored,
                metadata=generated.metadata,
            )
        except Exception as exc:  # the disk is full, say: the job is faulted, not lost
            log.exception("could not encode or spool the image of job %s", job.job_id)
            self.results.fault(job, f"{type(exc).__name__}: {exc}")


class _StepReporter:
    """Step progress on the console, and to the coordinator when it is ours (`client` set), at most
    every few seconds per job."""

    def __init__(self, console: Console, job: ImageJob, client: CoordinatorClient | None = None) -> None:
        self.console, self.job, self._at, self._step = console, job, time.monotonic(), 0
        self.client = client
        self._sending: asyncio.Task[None] | None = None

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.step != self._step and now - self._at >= STEP_REPORT_SECONDS:
            self._at, self._step = now, progress.step
            self.console.event("job_step", job=self.job.job_id, step=progress.step, total=progress.total)
            if self.client is not None and (self._sending is None or self._sending.done()):
                self._sending = asyncio.ensure_future(self._send(progress.step, progress.total))

    async def _send(self, step: int, total: int) -> None:
        """Best effort, never in the job's way: a report that fails is simply not seen."""
        assert self.client is not None
        try:
            await self.client.progress(self.job.job_id, step, total)
        except Exception as exc:  # any failure only costs the requester a progress bar tick
            log.debug("progress report for job %s not delivered: %s", self.job.job_id, exc)
