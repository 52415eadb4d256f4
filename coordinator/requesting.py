"""The requester's side of the broker: accept a request, report on it, cancel it."""

import base64
import uuid

from coordinator.auth import Caller
from coordinator.errors import HordeError, bad_request, forbidden, not_found
from coordinator.estimates import wait_seconds
from coordinator.events import wait_for
from coordinator.queueing import image_seeds, priority_rank, priority_tier, queue_entry
from coordinator.roster import Roster
from coordinator.services import Services
from coordinator.sources import decode_base64_image, has_alpha
from coordinator.storage.records import JobRecord, QueueEntry, RequestRecord
from protocol.errors import RC
from protocol.generation import (
    DryRunResult,
    Generation,
    GenerationRequest,
    RequestAccepted,
    RequestCheck,
    RequestStatus,
    RequestWarning,
)
from protocol.kudos import image_kudos, needs_upfront_kudos
from protocol.provenance import sha256_hex

ANONYMOUS_ACCOUNT = 0
SETTLED = ("done", "faulted", "cancelled")


def price_per_image(body: GenerationRequest) -> float:
    params = body.params
    return image_kudos(
        width=params.width, height=params.height, steps=params.steps, sampler_name=params.sampler_name,
        img2img=body.is_img2img, loras=len(params.loras), post_processors=params.post_processing,
    )  # fmt: skip


class RequestDesk:
    def __init__(self, services: Services, roster: Roster) -> None:
        self.services = services
        self.roster = roster

    # --- accepting ------------------------------------------------------------------
    async def submit(
        self, caller: Caller, body: GenerationRequest, client_agent: str
    ) -> RequestAccepted | DryRunResult:
        sources = self._decode_sources(body)
        per_image = price_per_image(body)
        total = round(per_image * body.params.n, 2)
        if body.dry_run:
            return DryRunResult(kudos=total)
        self._check_upfront(caller, body, total)
        request, jobs, entries = self._build(caller, body, per_image, client_agent)
        await self._store_sources(request, sources)
        async with self.services.database.transaction() as tx:
            await tx.insert_request(request)
            await tx.insert_jobs(jobs)
            await tx.enqueue(entries)
        self.services.hub.jobs_queued(entries)
        await self.services.database.announce("jobs", request.id)
        return RequestAccepted(id=request.id, kudos=total, warnings=await self._warnings(entries[0]))

    @staticmethod
    def _decode_sources(body: GenerationRequest) -> dict[str, bytes]:
        sources: dict[str, bytes] = {}
        if body.source_image:
            sources["source_image"] = decode_base64_image(body.source_image, "source_image")
        if body.source_mask and body.source_image:
            sources["source_mask"] = decode_base64_image(body.source_mask, "source_mask")
        if body.is_painting and "source_mask" not in sources and not has_alpha(sources["source_image"]):
            raise bad_request(
                RC.INPAINTING_MISSING_MASK, "Inpainting needs a source_mask or an alpha channel in source_image."
            )
        return sources

    @staticmethod
    def _check_upfront(caller: Caller, body: GenerationRequest, total: float) -> None:
        params = body.params
        if not needs_upfront_kudos(width=params.width, height=params.height, steps=params.steps):
            return
        if caller.account is None or caller.account.kudos < total:
            raise forbidden(
                RC.KUDOS_UPFRONT,
                f"Requests over 1024x1024 pixels or 50 steps need {total} kudos up front.",
            )

    def _build(
        self, caller: Caller, body: GenerationRequest, per_image: float, client_agent: str
    ) -> tuple[RequestRecord, list[JobRecord], list[QueueEntry]]:
        now = self.services.clock()
        tier = priority_tier(caller.account)
        rank = priority_rank(caller.account.kudos if caller.account else 0.0, now)
        request = RequestRecord(
            id=str(uuid.uuid4()), account_id=caller.account.id if caller.account else ANONYMOUS_ACCOUNT,
            created=now, updated=now, state="active", n=body.params.n, kudos_per_image=per_image,
            body=body.model_dump(exclude={"source_image", "source_mask"}), client_agent=client_agent[:200],
            tier=tier, rank=rank,
        )  # fmt: skip
        seeds = image_seeds(body.params.seed, body.params.seed_variation, body.params.n)
        jobs = [
            JobRecord(id=str(uuid.uuid4()), request_id=request.id, index=index, seed=seed, state="waiting")
            for index, seed in enumerate(seeds)
        ]
        entries = [queue_entry(job.id, request.id, body, tier, rank) for job in jobs]
        return request, jobs, entries

    async def _store_sources(self, request: RequestRecord, sources: dict[str, bytes]) -> None:
        for field, data in sources.items():
            name = self.services.images.new_name("src")
            await self.services.images.write(name, data)
            setattr(request, field, name)
            setattr(request, f"{field}_sha256", sha256_hex(data))

    async def _warnings(self, entry: QueueEntry) -> list[RequestWarning]:
        if await self.roster.able(entry):
            return []
        return [RequestWarning(code="NoAvailableWorker", message="No online node can serve this request yet.")]

    # --- reporting ------------------------------------------------------------------
    async def load(self, request_id: str) -> tuple[RequestRecord, list[JobRecord]]:
        async with self.services.database.reader() as tx:
            request = await tx.get_request(request_id)
            jobs = await tx.jobs_of(request_id) if request else []
        if request is None:
            raise not_found("request")
        return request, jobs

    async def check(self, request_id: str, wait: float = 0.0, known_finished: int | None = None) -> RequestCheck:
        """The request's progress; with `wait`, held until it changes (or the client is behind)."""
        with self.services.hub.request_waiter(request_id) as changed:
            request, jobs = await self.load(request_id)
            report = await self._check(request, jobs)
            behind = known_finished is not None and known_finished != report.finished
            worth_waiting = wait > 0 and not behind and request.state == "active" and not self.services.hub.closing
            if not worth_waiting or not await wait_for(changed, wait):
                return report
        request, jobs = await self.load(request_id)
        return await self._check(request, jobs)

    async def _check(self, request: RequestRecord, jobs: list[JobRecord]) -> RequestCheck:
        counts = {state: sum(1 for job in jobs if job.state == state) for state in ("waiting", "processing", "done")}
        position, possible, wait_time = 0, True, 0
        if counts["waiting"]:
            body = request.generation
            # Every queue row of a request carries the request's own tier and rank.
            async with self.services.database.reader() as tx:
                position = await tx.queue_position(request.tier, request.rank)
            entry = queue_entry("", request.id, body, 0, 0.0)
            able = await self.roster.able(entry)
            possible = bool(able)
            megapixelsteps = body.params.width * body.params.height * body.params.steps / 1e6
            wait_time = wait_seconds(position, megapixelsteps * counts["waiting"], able)
        return RequestCheck(
            finished=counts["done"], processing=counts["processing"], restarted=sum(job.restarts for job in jobs),
            waiting=counts["waiting"], done=request.state in ("done", "cancelled") and not counts["processing"],
            faulted=request.state == "faulted", wait_time=wait_time, queue_position=position,
            kudos=round(request.kudos_per_image * counts["done"], 2), is_possible=possible,
        )  # fmt: skip

    async def status(self, request_id: str, base_url: str) -> RequestStatus:
        request, jobs = await self.load(request_id)
        return await self._status(request, jobs, base_url)

    async def _status(self, request: RequestRecord, jobs: list[JobRecord], base_url: str) -> RequestStatus:
        report = await self._check(request, jobs)
        inline = not request.body.get("r2", True)
        generations = [
            await self._generation(job, base_url, inline) for job in jobs if job.state == "done" and job.image
        ]
        return RequestStatus(**report.model_dump(), generations=generations, shared=request.body.get("shared", False))

    async def _generation(self, job: JobRecord, base_url: str, inline: bool) -> Generation:
        assert job.image is not None
        if inline:
            data = await self.services.images.read(job.image) or b""
            img = base64.b64encode(data).decode()
        else:
            # Until the image is pruned, as our own URL is (a bucket caps presigned URLs at 7 days).
            lifetime = self.services.config.retention_hours * 3600
            presigned = await self.services.images.presigned_get(job.image, lifetime)
            img = presigned or f"{base_url}/api/v2/images/{job.image}"
        return Generation(
            id=job.id, img=img, seed=job.seed, worker_id=job.worker_id or "", worker_name=job.worker_name or "",
            model=job.model or "", state=job.result_state or "ok", censored=job.censored,
            gen_metadata=job.gen_metadata, worker_key=job.worker_key, signature=job.signature,
            image_sha256=job.image_sha256, job=job.job_document, job_signature=job.job_signature,
        )  # fmt: skip

    # --- cancelling -----------------------------------------------------------------
    async def cancel(self, caller: Caller, request_id: str, base_url: str) -> RequestStatus:
        """Stop the request's waiting images; images already made, or being made, are kept."""
        async with self.services.database.transaction() as tx:
            await tx.lock_ledger()  # not while one of its results is stored (results._current), which settles it
            request = await tx.get_request(request_id)
            if request is None:
                raise not_found("request")
            owner = caller.account.id if caller.account else ANONYMOUS_ACCOUNT
            if request.account_id != owner:
                raise HordeError(403, RC.NOT_OWNER, "Only the requester who made this request may cancel it.")
            if request.state == "active":
                await tx.dequeue_request(request_id)
                for job in await tx.jobs_of(request_id):
                    if job.state == "waiting":
                        job.state = "cancelled"
                        await tx.save_job(job)
                request.state, request.updated = "cancelled", self.services.clock()
                await tx.update_request(request)
            jobs = await tx.jobs_of(request_id)
        self.services.hub.request_changed(request_id)
        await self.services.database.announce("request", request_id)
        return await self._status(request, jobs, base_url)
