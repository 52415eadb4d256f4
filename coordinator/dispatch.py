"""The node's side of the broker: hand out jobs (pop), take uploads, take results (submit)."""

import asyncio
import time
from collections import Counter
from typing import Any

from coordinator.auth import Caller
from coordinator.capabilities import any_model, row_skip_reason
from coordinator.errors import HordeError
from coordinator.events import JobWaiter, announce_jobs
from coordinator.lifecycle import excluded, release_job
from coordinator.metrics import DISPATCH_LATENCY
from coordinator.preferences import favoured_first, favoured_requesters, refusal_reason, refused_rows
from coordinator.queueing import worker_list_allows
from coordinator.results import upload_name
from coordinator.roster import Roster, in_maintenance, maintenance_refusal
from coordinator.services import Services
from coordinator.storage.queue import CANDIDATES_PER_MODEL
from coordinator.storage.records import JobRecord, RequestRecord, Worker, WorkerCaps
from coordinator.storage.sql import Tx
from protocol.errors import RC
from protocol.generation import GenerationRequest
from protocol.jobs import JobPayload, PopRequest, PopResponse, SignedJob
from protocol.kudos import job_time_limit
from protocol.provenance import JobDocument, request_digest, sign_job
from protocol.samplers import FACEFIXERS

# How far down the queue an empty pop looks to explain itself in `skipped`.
SKIPPED_SAMPLE = 500
# Upload and source URLs outlive the job's deadline by this much, for clocks that disagree.
UPLOAD_TOKEN_GRACE = 60.0
# How deep a pop looks when the head of the queue is all reserved for other nodes (per model served).
MAX_CANDIDATES_PER_MODEL = 4096
# A job's time limit is its image's times its place in the node's queue, up to this many (one pop's
# most): a node that hoards jobs cannot keep one from other nodes for longer than 20 time limits.
MAX_QUEUE_POSITION = 20


def job_payload(body: GenerationRequest, seed: str, n_iter: int, sourced: bool) -> dict[str, Any]:
    """AI Horde's `ModelPayloadStable` for a job: what its workers read, field for field. `sourced`: the
    request has a source image (the stored body keeps none: `request.source_image` says)."""
    params = body.params
    negative = f" ### {body.negative_prompt}" if body.negative_prompt else ""
    return JobPayload(
        prompt=body.positive_prompt + negative,
        ddim_steps=params.steps,
        n_iter=n_iter,
        width=params.width,
        height=params.height,
        seed=seed,
        sampler_name=params.sampler_name,
        cfg_scale=params.cfg_scale,
        karras=params.karras,
        denoising_strength=params.denoising_strength if sourced else None,
        clip_skip=params.clip_skip,
        tiling=params.tiling,
        hires_fix=params.hires_fix,
        hires_fix_denoising_strength=params.hires_fix_denoising_strength if params.hires_fix else None,
        loras=params.loras,
        tis=params.tis,
        post_processing=params.post_processing,
        post_processing_order=params.post_processing_order,
        facefixer_strength=params.facefixer_strength if set(params.post_processing) & set(FACEFIXERS) else None,
        control_type=params.control_type,
        image_is_control=params.image_is_control if params.control_type else None,
        return_control_map=params.return_control_map if params.control_type else None,
        use_nsfw_censor=body.censor_nsfw,
    ).model_dump(exclude_none=True)


def _worker_filter_allows(row: dict[str, Any], caps: WorkerCaps, lists: dict[str, list[str]]) -> bool:
    """A queue row only flags (`named`) that its request has a worker list; `lists` holds the lists
    (`Tx.worker_lists`), so a row never copies request-sized data."""
    if not row["named"]:
        return True
    workers = lists.get(row["request_id"], [])
    return worker_list_allows(workers, bool(row["worker_blacklist"]), caps.worker_id, caps.worker_name)


def _skip_reason(row: dict[str, Any], caps: WorkerCaps, lists: dict[str, list[str]]) -> str | None:
    reason = row_skip_reason(row, caps)
    return reason or (None if _worker_filter_allows(row, caps, lists) else "worker_id")


class Dispatcher:
    def __init__(self, services: Services, roster: Roster) -> None:
        self.services = services
        self.roster = roster

    async def pop(self, caller: Caller, pop: PopRequest, base_url: str) -> PopResponse:
        worker = await self.roster.register(caller, pop)
        if in_maintenance(worker, self.services.clock()):
            raise maintenance_refusal(worker)  # AI Horde's answer, which nodes wait on; never an empty pop
        if worker.suspended:
            raise HordeError(403, RC.WORKER_MAINTENANCE, f"Worker {worker.name} is {worker.suspended}")
        caps = WorkerCaps.of(
            worker, pop.blacklist, require_upfront_kudos=pop.require_upfront_kudos, extra_slow=pop.extra_slow_worker
        )
        if pop.priority_usernames:
            async with self.services.database.reader() as tx:
                caps.priority = await favoured_requesters(tx, pop.priority_usernames)
        deadline = time.monotonic() + pop.wait
        with self.services.hub.job_waiter(caps) as waiter:
            while True:
                offer = waiter.take()
                # Most pops of a busy network find the queue empty (nodes wait for work): on SQLite, look
                # without taking the write lock first. A PostgreSQL claim locks nothing before its first
                # write, so there its own first read is the look (one round trip fewer).
                if self.services.database.dialect == "sqlite" and not await self._anything_for(caps):
                    answer, servable = None, False
                else:
                    answer, servable = await self._claim_for_connection(caps, worker, pop.amount, base_url)
                self.services.hub.settle(offer, gone=not servable)  # the job it was woken for, if any
                if answer is not None:
                    return answer
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.services.hub.closing or not await self._park(waiter, remaining):
                    return PopResponse(skipped=await self._skipped(caps))

    async def _park(self, waiter: JobWaiter, timeout: float) -> bool:
        """Wait for a wake-up, counted as a parked pop (tests wait for one: `EventHub.until_parked`)."""
        with self.services.hub.parked(f"pop:{waiter.caps.worker_name}"):
            return await waiter.wait(timeout)

    async def _claim_for_connection(
        self, caps: WorkerCaps, worker: Worker, amount: int, base_url: str
    ) -> tuple[PopResponse | None, bool]:
        """Claim jobs and build the answer, and whether the queue held anything this node can serve (see
        `_claim`); if the node hangs up meanwhile, the jobs go back.

        The claim runs shielded: a cancelled handler (the node's connection dropped) must not
        leave jobs assigned to a node that will never hear of them until their time limit.
        """
        servable = False

        async def claim_and_answer() -> tuple[PopResponse, RequestRecord, list[JobRecord]] | None:
            nonlocal servable
            claimed, servable = await self._claim(caps, worker, amount)
            if claimed is not None:
                waited = self.services.clock() - claimed[0].created
                for _job in claimed[1]:
                    DISPATCH_LATENCY.observe(max(waited, 0.0))
                self.services.hub.claimed(job.id for job in claimed[1])
                # `processing` changed: checks and streams waiting on the request answer now (the other
                # processes' heard with the commit: `_claim`).
                self.services.hub.request_changed(claimed[0].id)
            return None if claimed is None else (await self._response(*claimed, base_url), *claimed)

        work = asyncio.ensure_future(claim_and_answer())
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            result = await work
            if result is not None:
                await self._release(result[1], result[2])
            raise
        return (None if result is None else result[0]), servable

    async def _release(self, request: RequestRecord, jobs: list[JobRecord]) -> None:
        async with self.services.database.transaction() as tx:
            await tx.lock_ledger()  # serializes job-state changes across processes, as submit and upkeep do
            entries = [entry for job in jobs if (entry := await release_job(tx, job, request))]
            announce_jobs(tx, entries)
        self.services.hub.jobs_queued(entries)

    async def _anything_for(self, caps: WorkerCaps) -> bool:
        async with self.services.database.reader() as tx:
            return bool(await tx.queue_candidates(caps, 1))

    async def _claim(
        self, caps: WorkerCaps, worker: Worker, amount: int
    ) -> tuple[tuple[RequestRecord, list[JobRecord]] | None, bool]:
        """The jobs claimed, if any, and whether the queue held any row this node's capabilities serve (a
        wake-up's offer passes to the next node when it did but none could be taken: `EventHub.settle`)."""
        async with self.services.database.transaction() as tx:
            tried: set[str] = set()
            per_model = CANDIDATES_PER_MODEL
            servable = False
            while True:
                rows = await tx.queue_candidates(caps, per_model)
                servable = servable or bool(rows)
                rows.sort(key=lambda row: (row["tier"], row["rank"]), reverse=True)
                rows = await favoured_first(tx, caps, rows)
                lists = await tx.worker_lists({row["request_id"] for row in rows if row["named"]})
                for row in rows:
                    if row["job_id"] in tried or not _worker_filter_allows(row, caps, lists):
                        continue
                    tried.add(row["job_id"])
                    chosen = await tx.job_to_claim(row["job_id"], worker.id)
                    if chosen is None or self._refused(chosen[1], caps):
                        continue
                    first, request, held = chosen
                    model = row["model"] or any_model(caps)
                    ahead = held // max(worker.threads, 1)  # what the node runs before these
                    jobs = await self._claim_batch(
                        tx, request, first, worker, model, amount, ahead, funded_only=caps.require_upfront_kudos
                    )
                    if jobs:
                        tx.announce("request", request.id)
                        return (request, jobs), True
                # Everything fetched was for other nodes; look deeper if a model's list was cut short.
                fetched = Counter(row["model"] for row in rows)
                if per_model >= MAX_CANDIDATES_PER_MODEL or all(n < per_model for n in fetched.values()):
                    return None, servable
                per_model *= 8

    @staticmethod
    def _takeable(job: JobRecord, worker: Worker, funded_only: bool) -> bool:
        """Never a job that failed on this node before; for a node that asks for kudos up front, only an
        image its requester's kudos were reserved for at submit (`charge`, economy.py)."""
        return not excluded(job, worker.id) and (job.charge > 0 or not funded_only)

    @staticmethod
    def _refused(request: RequestRecord, caps: WorkerCaps) -> bool:
        """The node's own word: its blacklist, extra-slow or no unsafe addresses (coordinator/preferences.py)."""
        return refusal_reason(request, caps) is not None

    async def _claim_batch(
        self,
        tx: Tx,
        request: RequestRecord,
        first: JobRecord,
        worker: Worker,
        model: str,
        amount: int,
        ahead: int,
        *,
        funded_only: bool = False,
    ) -> list[JobRecord]:
        """The chosen job plus, when the node asks for more, the next images of the same request, each one
        the node may take (`_takeable`: checked here, on the few candidates, not in the query). `ahead`: the
        jobs the node holds, per inference thread, which it runs before these."""
        if first.state != "waiting" or not self._takeable(first, worker, funded_only):
            return []
        batch = [first]
        if amount > 1 and not request.body.get("disable_batching"):
            rows = await tx.waiting_of_request(request.id, 50)
            siblings = {job.index: job for job in await tx.jobs_by_ids([r["job_id"] for r in rows])}
            while len(batch) < amount and (following := siblings.get(batch[-1].index + 1)) is not None:
                if not self._takeable(following, worker, funded_only):
                    break
                batch.append(following)
        body = request.generation
        sources = await self._signed_source_urls(request)
        claimed = []
        for position, job in enumerate(batch, start=ahead + 1):
            self._assign(job, request, body, worker, model, sources, min(position, MAX_QUEUE_POSITION))
            if await tx.claim_job(job, by_itself=len(batch) == 1):
                claimed.append(job)
            elif not claimed:
                return []
            else:
                break
        return claimed

    def _assign(
        self,
        job: JobRecord,
        request: RequestRecord,
        body: GenerationRequest,
        worker: Worker,
        model: str,
        sources: dict[str, str],
        position: int = 1,
    ) -> None:
        """Assign a job to the node, signed. The job at `position` in the node's queue (the jobs it holds,
        per inference thread, then this batch's) waits for the ones before it, so its time limit counts
        theirs too: a node working through its queue in time keeps every job of it, and none is reissued
        (and made twice) while the node still has it."""
        now = self.services.clock()
        params = body.params
        ttl = position * job_time_limit(width=params.width, height=params.height, steps=params.steps)
        document = JobDocument(
            job_id=job.id,
            request_sha256=request_digest(request.id),
            model=model,
            payload=job_payload(body, job.seed, 1, request.source_image is not None),
            source_image_sha256=request.source_image_sha256,
            source_mask_sha256=request.source_mask_sha256,
            ttl=ttl,
            worker_id=worker.id,
            issued_at=int(now),
            **sources,
        )
        job.state, job.model, job.worker_id, job.worker_name = "processing", model, worker.id, worker.name
        job.assigned_at, job.deadline = now, now + ttl
        job.job_document = document.model_dump(mode="json")
        job.job_signature = sign_job(self.services.identity, document)

    async def _response(self, request: RequestRecord, jobs: list[JobRecord], base_url: str) -> PopResponse:
        body = request.generation
        uploads = [await self._upload_url(job, base_url) for job in jobs]
        first = jobs[0]
        return PopResponse(
            id=first.id,
            ids=[job.id for job in jobs],
            payload=job_payload(body, first.seed, len(jobs), request.source_image is not None),
            model=first.model,
            ttl=(first.job_document or {}).get("ttl"),
            skipped={},
            source_image=await self._source_url(request.source_image, first, base_url, "source_image"),
            source_processing=body.source_processing if request.source_image else "txt2img",
            source_mask=await self._source_url(request.source_mask, first, base_url, "source_mask"),
            r2_upload=uploads[0],
            r2_uploads=uploads,
            jobs=[SignedJob(document=job.job_document or {}, signature=job.job_signature or "") for job in jobs],
        )

    def _url_lifetime(self, job: JobRecord) -> float:
        now = self.services.clock()
        return (job.deadline or now) - now + UPLOAD_TOKEN_GRACE

    async def _upload_url(self, job: JobRecord, base_url: str) -> str:
        """Straight to the bucket when the image store can presign; else our own upload endpoint,
        with a token bound to this job and this node."""
        lifetime = self._url_lifetime(job)
        name = upload_name(job.id, job.worker_id or "")  # per node, so a node that lost the job can't overwrite it
        presigned = await self.services.images.presigned_put(name, lifetime)
        if presigned is not None:
            return presigned
        token = self.services.tokens.upload_token(job.id, job.worker_id or "", lifetime)
        return f"{base_url}/api/v2/upload/{job.id}?token={token}"

    async def _signed_source_urls(self, request: RequestRecord) -> dict[str, str]:
        """The bucket's presigned URLs for the request's sources, which each job document signs: a node
        fetches a source only from our own origin or from a URL so signed (docs/security.md). None when
        the store presigns nothing. They live as long as the job's time limit, like its upload URL."""
        params = request.generation.params
        lifetime = job_time_limit(width=params.width, height=params.height, steps=params.steps) + UPLOAD_TOKEN_GRACE
        urls = {}
        for field, name in (("source_image", request.source_image), ("source_mask", request.source_mask)):
            url = await self.services.images.presigned_get(name, lifetime) if name else None
            if url:
                urls[f"{field}_url"] = url
        return urls

    async def _source_url(self, name: str | None, job: JobRecord, base_url: str, field: str) -> str | None:
        """The URL the job document signs for this source, else our own."""
        if not name:
            return None
        return (job.job_document or {}).get(f"{field}_url") or f"{base_url}/api/v2/sources/{name}"

    async def _skipped(self, caps: WorkerCaps) -> dict[str, int]:
        async with self.services.database.reader() as tx:
            rows = await tx.queue_head(SKIPPED_SAMPLE)
            lists = await tx.worker_lists({row["request_id"] for row in rows if row["named"]})
            unfunded = await self._unfunded(tx, rows, caps, lists) if caps.require_upfront_kudos else set()
        reasons: dict[str, set[str]] = {}
        servable: set[str] = set()
        for row in rows:
            reason = _skip_reason(row, caps, lists) or ("kudos" if row["job_id"] in unfunded else None)
            if reason is None:
                servable.add(row["job_id"])
            else:
                reasons.setdefault(reason, set()).add(row["job_id"])
        if servable:  # rare after an empty pop: jobs this node refuses, or may not take because they failed on it
            async with self.services.database.reader() as tx:
                failed = {job.id for job in await tx.jobs_by_ids(sorted(servable)) if excluded(job, caps.worker_id)}
                refused = await refused_rows(tx, [row for row in rows if row["job_id"] in servable], caps)
            for reason, ids in refused.items():
                reasons.setdefault(reason, set()).update(ids)
            servable -= failed | set().union(*refused.values())
            reasons["failed_here"] = failed - set().union(*refused.values())
        return {reason: len(ids - servable) for reason, ids in reasons.items() if ids - servable}

    async def _unfunded(
        self, tx: Tx, rows: list[dict[str, Any]], caps: WorkerCaps, lists: dict[str, list[str]]
    ) -> set[str]:
        """Jobs among `rows` (otherwise servable) that no kudos were reserved for at submit."""
        candidates = [row["job_id"] for row in rows if _skip_reason(row, caps, lists) is None]
        return {job.id for job in await tx.jobs_by_ids(candidates) if job.charge <= 0}
