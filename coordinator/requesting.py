"""The requester's side of the broker: accept a request, report on it, cancel it."""

import asyncio
import base64
import logging
import time
import uuid

from coordinator.auth import Caller
from coordinator.capabilities import refusal
from coordinator.economy import funded_images, requester_key
from coordinator.errors import HordeError, bad_request, forbidden, not_found
from coordinator.events import announce_accepted, announce_jobs, wait_for
from coordinator.outlook import Outlooks
from coordinator.preferences import is_unsafe
from coordinator.queueing import image_seeds, priority_rank, priority_tier, queue_entry
from coordinator.roster import Roster
from coordinator.services import Services
from coordinator.sharing import SharedKeys, request_refusal
from coordinator.sources import read_source
from coordinator.storage import StorageUnavailable
from coordinator.storage.records import JobRecord, QueueEntry, RequestRecord
from coordinator.storage.sql import Tx
from coordinator.styling import Styles
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

log = logging.getLogger("horde.coordinator.requesting")
ANONYMOUS_ACCOUNT = 0
# A long-polled check looks this often whether the request's place or ETA moved (`_until_news`).
NEWS_POLL_SECONDS = 2.0
SETTLED = ("done", "faulted", "cancelled")


def is_news(before: RequestCheck, now: RequestCheck, elapsed: float) -> bool:
    """Whether a waiting requester should hear of `now`: its place moved, it became (im)possible, or its ETA
    moved by more than 5 s or a fifth from what counting `before` down would show."""
    expected = max(before.wait_time - elapsed, 0)
    drift = abs(now.wait_time - expected) > max(5.0, 0.2 * expected)
    return now.queue_position != before.queue_position or now.is_possible != before.is_possible or drift


def upfront_refused(total: float, available: float) -> HordeError:
    return forbidden(
        RC.KUDOS_UPFRONT,
        f"Requests over 1024x1024 pixels or 50 steps need {total} kudos up front; you have {available} available "
        "(your balance, less what your unfinished requests hold).",
    )


def price_per_image(body: GenerationRequest) -> float:
    params = body.params
    return image_kudos(
        width=params.width,
        height=params.height,
        steps=params.steps,
        sampler_name=params.sampler_name,
        img2img=body.is_img2img,
        loras=len(params.loras),
        post_processors=params.post_processing,
        pinned=bool(body.workers),
    )


class RequestDesk:
    def __init__(self, services: Services, roster: Roster, outlooks: Outlooks) -> None:
        self.services = services
        self.roster = roster
        self.outlooks = outlooks
        self.sharing = SharedKeys(services)
        self.styles = Styles(services)

    # --- accepting ------------------------------------------------------------------
    async def submit(
        self, caller: Caller, body: GenerationRequest, client_agent: str, remote: str = ""
    ) -> RequestAccepted | DryRunResult:
        """Accept a request; `remote` is the requester's address (the economy pays nothing for a node's
        unfunded requests to itself, and caps anonymous requesters per address)."""
        body, style = await self.styles.applied(body)  # the style it names, if any, makes the request
        if (refused := refusal(body, shared_key=caller.sharedkey is not None)) is not None:
            raise refused
        if caller.sharedkey and (refused := request_refusal(caller.sharedkey, body, self.services.clock())):
            raise refused
        who = requester_key(caller.account.id if caller.account else None, remote)
        if not body.dry_run and body.source_image:  # a flood past the cap costs no decoding (`_admit` decides)
            async with self.services.database.reader() as tx:
                queued, _reserved = await tx.requester_load(who)
            self._check_cap(caller, queued, body.params.n)
        sources = await self._decode_sources(body)
        per_image = price_per_image(body)
        total = round(per_image * body.params.n, 2)
        if body.dry_run:
            return DryRunResult(kudos=total)
        upfront = self._check_upfront(caller, body, total)
        request, jobs, entries = self._build(caller, body, per_image, client_agent, remote, who)
        await self._store_sources(request, sources)
        try:
            async with self.services.database.transaction() as tx:
                await self._admit(tx, caller, jobs, per_image, upfront, body.allow_downgrade)
                await tx.insert_request(request)
                await tx.insert_jobs(jobs)
                await tx.enqueue(entries)
                await self.styles.used(tx, style)
                announce_accepted(tx, request)
                announce_jobs(tx, entries)
        except BaseException:
            await self._forget_sources(request)
            raise
        self.outlooks.arrived(request, len(jobs))
        self.services.hub.request_accepted(request)
        self.services.hub.jobs_queued(entries)
        return RequestAccepted(id=request.id, kudos=total, warnings=await self._warnings(entries[0]))

    @staticmethod
    async def _decode_sources(body: GenerationRequest) -> dict[str, bytes]:
        """The source image and mask as the coordinator re-encodes them (coordinator/sources.py): those
        bytes, never the requester's, reach nodes. On a thread: a large source takes a second."""
        texts = {"source_image": body.source_image, "source_mask": body.source_mask if body.source_image else None}
        sources = {field: await asyncio.to_thread(read_source, text, field) for field, text in texts.items() if text}
        image = sources.get("source_image")
        if body.is_painting and "source_mask" not in sources and not (image and image.alpha):
            raise bad_request(
                RC.INPAINTING_MISSING_MASK, "Inpainting needs a source_mask or an alpha channel in source_image."
            )
        return {field: source.data for field, source in sources.items()}

    @staticmethod
    def _check_upfront(caller: Caller, body: GenerationRequest, total: float) -> bool:
        """Whether the request needs its whole price available up front; refused at once when the balance
        alone is short (`_admit` checks what is available once other requests' reservations are counted)."""
        params = body.params
        if not needs_upfront_kudos(width=params.width, height=params.height, steps=params.steps):
            return False
        if caller.account is None or caller.account.kudos < total:
            raise upfront_refused(total, caller.account.kudos if caller.account else 0.0)
        return True

    async def _admit(
        self, tx: Tx, caller: Caller, jobs: list[JobRecord], price: float, upfront: bool, downgrade: bool
    ) -> None:
        """Within the request's transaction: the requester's queue cap, then which images its available
        balance (and shared key) funds (their prices are reserved by the jobs themselves, see `Tx.requester_load`)."""
        # Balances and reservations read here stay true until commit: every kudos movement, and every other
        # admission, waits for this lock (SQLite's single writer already serializes them).
        await tx.lock_ledger()
        account_id = caller.account.id if caller.account else None
        queued, reserved, balance = await tx.requester_funds(jobs[0].requester, account_id)
        self._check_cap(caller, queued, len(jobs))
        if caller.account is None:
            return
        available = round((balance or 0.0) - reserved, 2)
        available = await self.sharing.spendable(tx, caller, available, round(price * len(jobs), 2), downgrade)
        if upfront and available < round(price * len(jobs), 2):
            raise upfront_refused(round(price * len(jobs), 2), available)
        for job in jobs[: funded_images(available, price, len(jobs))]:
            job.charge = price

    def _check_cap(self, caller: Caller, queued: int, n: int) -> None:
        """At most `concurrency` images waiting or in progress per account, or per anonymous address."""
        limit = self.services.config.concurrency
        if queued + n > limit:
            who = "This account" if caller.account else "Anonymous requests from your address"
            raise HordeError(
                429,
                RC.TOO_MANY_PROMPTS,
                f"{who} already has {queued} images waiting or in progress; {n} more would pass the limit of "
                f"{limit}. Wait for some to finish.",
            )

    def _build(
        self, caller: Caller, body: GenerationRequest, per_image: float, client_agent: str, remote: str, who: str
    ) -> tuple[RequestRecord, list[JobRecord], list[QueueEntry]]:
        now = self.services.clock()
        trusted = bool(caller.account and caller.account.trusted)
        tier = priority_tier(caller.account)
        rank = priority_rank(caller.account.kudos if caller.account else 0.0, now)
        request = RequestRecord(
            id=str(uuid.uuid4()),
            account_id=caller.account.id if caller.account else ANONYMOUS_ACCOUNT,
            created=now,
            updated=now,
            state="active",
            n=body.params.n,
            kudos_per_image=per_image,
            body=body.model_dump(exclude={"source_image", "source_mask"}),
            client_agent=client_agent[:200],
            tier=tier,
            rank=rank,
            remote=remote,
            sharedkey=caller.sharedkey.key_hash if caller.sharedkey else None,
            unsafe_ip=is_unsafe(remote, self.services.config.unsafe_networks, trusted),
        )
        seeds = image_seeds(body.params.seed, body.params.seed_variation, body.params.n)
        jobs = [
            JobRecord(
                id=str(uuid.uuid4()), request_id=request.id, index=index, seed=seed, state="waiting", requester=who
            )
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

    async def _forget_sources(self, request: RequestRecord) -> None:
        """The sources of a request that was refused (or failed) after they were stored: no row names them."""
        for name in (request.source_image, request.source_mask):
            try:
                await self.services.images.delete(name)
            except StorageUnavailable as error:
                log.warning("could not delete source %s of a refused request: %s", name, error)

    async def _warnings(self, entry: QueueEntry) -> list[RequestWarning]:
        if await self.roster.able(entry):
            return []
        return [RequestWarning(code="NoAvailableWorker", message="No online node can serve this request yet.")]

    # --- reporting ------------------------------------------------------------------
    async def load(self, request_id: str) -> tuple[RequestRecord, list[JobRecord]]:
        async with self.services.database.reader() as tx:
            request, jobs = await tx.request_and_jobs(request_id)
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
            if not worth_waiting:
                return report
            return await self._until_news((request, jobs), changed, wait, report)

    async def _until_news(
        self, loaded: tuple[RequestRecord, list[JobRecord]], changed: asyncio.Event, wait: float, report: RequestCheck
    ) -> RequestCheck:
        """Hold a long-poll until the request changes, or its place or ETA moves otherwise than by the
        clock (looked at every NEWS_POLL_SECONDS: a pop elsewhere moves it without an event), or `wait` ends."""
        request, jobs = loaded
        started, fresh = time.monotonic(), report
        while (remaining := started + wait - time.monotonic()) > 0:
            with self.services.hub.parked(f"check:{request.id}"):
                woken = await wait_for(changed, min(remaining, NEWS_POLL_SECONDS))
            if woken:
                # Only this request's changes wake it (EventHub.request_changed, from every process): without
                # one, its rows are as loaded and only its place and ETA are looked at again.
                request, jobs = await self.load(request.id)
            fresh = await self._check(request, jobs)
            if woken or is_news(report, fresh, time.monotonic() - started):
                return fresh
        return fresh

    async def _check(self, request: RequestRecord, jobs: list[JobRecord]) -> RequestCheck:
        counts = {state: sum(1 for job in jobs if job.state == state) for state in ("waiting", "processing", "done")}
        position = 0
        if counts["waiting"]:
            # Every queue row of a request carries the request's own tier and rank: pop's order.
            async with self.services.database.reader() as tx:
                position = await tx.queue_position(request.tier, request.rank)
        active = request.state == "active"
        unfinished = counts["waiting"] + counts["processing"] if active else 0
        outlook = await self.outlooks.request(request, counts["waiting"] if active else 0, unfinished)
        return RequestCheck(
            finished=counts["done"],
            processing=counts["processing"],
            restarted=sum(job.restarts for job in jobs),
            waiting=counts["waiting"],
            done=request.state in ("done", "cancelled") and not counts["processing"],
            faulted=request.state == "faulted",
            wait_time=outlook.wait_time,
            queue_position=position,
            kudos=round(request.kudos_per_image * counts["done"], 2),
            is_possible=outlook.possible,
            is_possible_reason=outlook.reason,
            cancelled=request.state == "cancelled",
        )

    async def status(self, request_id: str, base_url: str) -> RequestStatus:
        request, jobs = await self.load(request_id)
        return await self._status(request, jobs, base_url)

    async def _status(self, request: RequestRecord, jobs: list[JobRecord], base_url: str) -> RequestStatus:
        report = await self._check(request, jobs)
        # `r2: false` asks for base64 images, but one answer carries at most `max_inline_bytes` of them
        # (anyone may ask for any request's status, as often as they like); the rest come as URLs.
        budget = 0 if request.body.get("r2", True) else self.services.config.max_inline_bytes
        generations = []
        for job in jobs:
            if job.state == "done" and job.image:
                generation, budget = await self._generation(job, base_url, budget)
                generations.append(generation)
        return RequestStatus(**report.model_dump(), generations=generations, shared=request.body.get("shared", False))

    async def _generation(self, job: JobRecord, base_url: str, inline_budget: int) -> tuple[Generation, int]:
        """The image inline when its base64 fits in what is left of the answer's budget, else its URL."""
        assert job.image is not None
        size = await self.services.images.size(job.image) if inline_budget > 0 else None
        if size is not None and (size + 2) // 3 * 4 <= inline_budget:  # its length in base64
            data = await self.services.images.read(job.image) or b""
            img = base64.b64encode(data).decode()
            inline_budget -= len(img)
        else:
            # Until the image is pruned, as our own URL is (a bucket caps presigned URLs at 7 days).
            lifetime = self.services.config.retention_hours * 3600
            presigned = await self.services.images.presigned_get(job.image, lifetime)
            img = presigned or f"{base_url}/api/v2/images/{job.image}"
        return Generation(
            id=job.id,
            img=img,
            seed=job.seed,
            worker_id=job.worker_id or "",
            worker_name=job.worker_name or "",
            model=job.model or "",
            state=job.result_state or "ok",
            censored=job.censored,
            gen_metadata=job.gen_metadata,
            worker_key=job.worker_key,
            signature=job.signature,
            image_sha256=job.image_sha256,
            job=job.job_document,
            job_signature=job.job_signature,
        ), inline_budget

    # --- cancelling -----------------------------------------------------------------
    async def cancel(self, request_id: str, base_url: str) -> RequestStatus:
        """Stop the request's waiting images; images already made, or being made, are kept.

        Whoever holds the id may cancel, with or without an apikey, as in AI Horde: the id is the
        requester's capability, known to no one else (nodes only see a digest, protocol/provenance.py)."""
        async with self.services.database.transaction() as tx:
            await tx.lock_ledger()  # not while one of its results is stored (results._current), which settles it
            request = await tx.get_request(request_id)
            if request is None:
                raise not_found("request")
            if request.state == "active":
                await tx.dequeue_request(request_id)
                for job in await tx.jobs_of(request_id):
                    if job.state == "waiting":
                        job.state = "cancelled"
                        await tx.save_job(job)
                request.state, request.updated = "cancelled", self.services.clock()
                await tx.update_request(request)
                tx.announce("request", request_id)
            jobs = await tx.jobs_of(request_id)
        self.services.hub.request_changed(request_id)
        return await self._status(request, jobs, base_url)
