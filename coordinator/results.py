"""Taking a node's result: who may submit it, checking the image and its signature, then
storing it and paying for it in one transaction (image file first, so a committed result
always has its image)."""

import asyncio
import base64
import binascii
import logging
import math
import secrets
from typing import Any

from coordinator.auth import Caller, require_account
from coordinator.economy import Settlement, settle, volunteer_allowance
from coordinator.errors import HordeError, bad_request, not_found
from coordinator.escrow import hold
from coordinator.estimates import job_megapixelsteps, quicker_than_measured, record_speed
from coordinator.events import announce_jobs
from coordinator.lifecycle import requeue_or_fault, settle_if_complete
from coordinator.outlook import ServiceLevels
from coordinator.services import Services
from coordinator.sources import RESULT_FORMATS, check_image, encode_pixels, raw_pixels_mode
from coordinator.storage import StorageUnavailable
from coordinator.storage.handover import Settling
from coordinator.storage.records import Account, JobRecord, RequestRecord, Worker
from coordinator.storage.sharedkeys import add_utilized
from coordinator.storage.sql import Tx
from coordinator.verification import Verifier
from protocol.errors import RC
from protocol.jobs import SubmitRequest, SubmitResult
from protocol.keys import KeyFormatError, PublicKey
from protocol.ledger import hundredths
from protocol.provenance import ResultDocument, sha256_hex, verify_result
from protocol.samplers import UPSCALE_FACTORS

log = logging.getLogger("horde.coordinator.results")
PAID_STATES = ("ok", "censored")
NOT_DELIVERED = Settlement(0.0, 0.0, "not delivered")


def upload_name(job_id: str, worker_id: str) -> str:
    """Where a node's upload waits for its submit: one name per node the job was given to, so a
    node that lost the job cannot replace the upload of the node that has it now (a presigned
    PUT URL, unlike our upload token, stays valid after the job moved on)."""
    return f"{job_id}.{worker_id}.upload"


def result_name(job_id: str, tag: str = "") -> str:
    return f"{job_id}.{tag}.webp" if tag else f"{job_id}.webp"


def result_size(payload: dict[str, Any]) -> tuple[int, int] | None:
    """The size a job's image must have: its width × height, scaled by its upscalers; None when the job
    document names no size (never, for a job handed out by this coordinator)."""
    width, height = payload.get("width"), payload.get("height")
    if not isinstance(width, int) or not isinstance(height, int):
        return None
    factor = math.prod(UPSCALE_FACTORS.get(name, 1) for name in payload.get("post_processing") or [])
    return width * factor, height * factor


class Aborted(HordeError):
    def __init__(self) -> None:
        super().__init__(400, RC.ABORTED_GEN, "This job is no longer yours: its time ran out or it was cancelled.")


class ResultIntake:
    def __init__(self, services: Services, service_levels: ServiceLevels) -> None:
        self.services = services
        self.service_levels = service_levels
        self.verifier = Verifier(services)

    async def accept_upload(self, job_id: str, token: str, data: bytes) -> None:
        async with self.services.database.reader() as tx:
            job = await tx.get_job(job_id)
        # The token names the node the job was given to, so a node whose job was reissued can't overwrite
        # the new node's upload.
        if job is None or not self.services.tokens.upload_token_valid(job_id, job.worker_id or "", token):
            raise HordeError(403, RC.UPLOAD_TOKEN_INVALID, "The upload URL is invalid or has expired.")
        if job.state != "processing":
            raise Aborted()
        if raw_pixels_mode(data, result_size((job.job_document or {}).get("payload", {}))) is None:
            check_image(data, "upload", formats=RESULT_FORMATS)  # raw pixels are encoded at the submit (`_image`)
        await self.services.images.write(upload_name(job_id, job.worker_id or ""), data)

    async def submit(self, caller: Caller, body: SubmitRequest, remote: str = "") -> SubmitResult:
        """Take a node's result; `remote` is the address it submits from (see `economy.settle`)."""
        account = require_account(caller, RC.ANON_FORBIDDEN_WORKER)
        async with self.services.database.reader() as tx:
            job = await tx.get_job(body.id)
            if job is None:
                raise not_found("job", RC.INVALID_JOB_ID)
            worker = await self._assigned(tx, caller, job)
            previous = [w for w in [await tx.worker_by("id", i) for i in job.previous_workers] if w]
        self._check_submitter(caller, account.id, job, worker, previous)
        assert worker is not None
        image = await self._image(body, worker, job) if body.state in PAID_STATES else None
        self._check_signature(caller, worker, body, image)
        if body.state == "faulted":
            await self._fault(job.id, worker, body)
            return SubmitResult(reward=0)
        settlement = await self._store(job.id, worker, body, image, remote)
        return SubmitResult(reward=settlement.reward, held=settlement.reward if self._escrowed(settlement) else 0.0)

    def _escrowed(self, settlement: Settlement) -> bool:
        """Whether the reward waits in escrow: with verification on, unless it is the owner's own kudos
        coming back (`economy.settle`), which no check could owe anyone and no verified record should count."""
        return self.services.config.verification.enabled and not settlement.self_paid

    @staticmethod
    async def _assigned(tx: Tx, caller: Caller, job: JobRecord) -> Worker | None:
        """The node the job is assigned to (a signed node's own record was just read by its key)."""
        if caller.worker is not None and caller.worker.id == job.worker_id:
            return caller.worker
        return await tx.worker_by("id", job.worker_id) if job.worker_id else None

    def _check_submitter(
        self, caller: Caller, account_id: int, job: JobRecord, assigned: Worker | None, previous: list[Worker]
    ) -> None:
        def ours(worker: Worker | None) -> bool:
            return (
                worker is not None
                and worker.owner_id == account_id
                and (caller.worker is None or caller.worker.id == worker.id)
            )

        if ours(assigned):
            if job.state == "done":
                raise HordeError(400, RC.DUPLICATE_GEN, "This job was already submitted; no further reward.")
            late = job.deadline is not None and self.services.clock() > job.deadline
            if job.state != "processing" or late:
                raise Aborted()
            return
        if any(ours(worker) for worker in previous):
            raise Aborted()
        raise HordeError(403, RC.WRONG_CREDENTIALS, "This job is not assigned to your node.")

    async def _image(self, body: SubmitRequest, worker: Worker, job: JobRecord) -> bytes:
        expected = result_size((job.job_document or {}).get("payload", {}))
        if body.generation == "R2":
            data = await self._uploaded(body.id, worker)
            # Encoded here, not at the upload: a bucket's presigned PUT never reaches us, and a PUT may be
            # replaced any number of times; the submit is rate-limited and encodes once.
            if (mode := raw_pixels_mode(data, expected)) is not None and expected is not None:
                data = await asyncio.to_thread(encode_pixels, data, mode, expected)
            size = check_image(data, "upload", formats=RESULT_FORMATS)
        else:
            try:
                data = base64.b64decode(body.generation, validate=True)
            except (binascii.Error, ValueError) as error:
                raise bad_request(RC.IMAGE_VALIDATION_FAILED, "generation is not valid base64.") from error
            size = check_image(data, "generation", formats=RESULT_FORMATS)
        if expected is not None and size != expected:
            # A 1×1 answer to a 1024² job was paid in full (issue 11): the size is the cheapest proof of work
            # the coordinator can check. The node may still submit the right image before its deadline.
            raise bad_request(
                RC.IMAGE_SIZE_MISMATCH,
                f"The image is {size[0]}x{size[1]}; this job asked for {expected[0]}x{expected[1]}.",
            )
        return data

    async def _uploaded(self, job_id: str, worker: Worker) -> bytes:
        """The image the node uploaded. A presigned PUT goes straight to the bucket, unchecked
        and of any size, so it is measured before it is read and checked like a base64 one."""
        name = upload_name(job_id, worker.id)
        size, limit = await self.services.images.size(name), self.services.config.max_body_bytes
        if size is not None and size > limit:
            await self._forget(name)
            raise HordeError(413, RC.BODY_TOO_LARGE, f"The upload is larger than {limit} bytes.")
        data = await self.services.images.read(name) if size is not None else None
        if data is None:
            raise bad_request(RC.UPLOAD_MISSING, "generation is 'R2' but nothing was uploaded for this job.")
        return data

    @staticmethod
    def _check_signature(caller: Caller, worker: Worker, body: SubmitRequest, image: bytes | None) -> None:
        """A signed node must sign its result; an apikey-only worker's result is marked unsigned."""
        if body.signature is None and caller.key is None:
            return
        document = ResultDocument(
            job_id=body.id, image_sha256=sha256_hex(image) if image else None, seed=body.seed, state=body.state
        )
        try:
            key = PublicKey.from_text(worker.public_key or "")
        except KeyFormatError:
            key = None
        if key is None or body.signature is None or not verify_result(key, document, body.signature):
            raise HordeError(
                403, "InvalidResultSignature", "The result's signature does not verify against this node's key."
            )

    async def _fault(self, job_id: str, worker: Worker, body: SubmitRequest) -> None:
        now = self.services.clock()
        reason = next((entry.ref or entry.value for entry in body.gen_metadata), "the node reported a fault")
        async with self.services.database.transaction() as tx:
            current = await self._current(tx, job_id, worker)
            job, request = current.job, current.request
            entry = await requeue_or_fault(tx, job, request, self.services.config.max_job_faults, now, reason)
            announce_jobs(tx, [entry] if entry else [])
            tx.announce("request", request.id)
        self.services.hub.jobs_queued([entry] if entry else [])
        self.services.hub.request_changed(request.id)

    async def _current(self, tx: Tx, job_id: str, worker: Worker) -> Settling:
        """The job, its request, node and payer as they are now, inside the transaction; still ours or aborted."""
        # Results and reissues of a job must not interleave: at PostgreSQL's READ COMMITTED two of them
        # could both read "processing" and both pay. The ledger's lock (SQLite's write lock already)
        # makes each wait for the other's commit, and then read what it wrote.
        await tx.lock_ledger()
        current = await tx.settling(job_id)
        if current is None or current.job.state != "processing" or current.job.worker_id != worker.id:
            raise Aborted()
        return current

    async def _store(
        self, job_id: str, worker: Worker, body: SubmitRequest, image: bytes | None, remote: str
    ) -> Settlement:
        now = self.services.clock()
        # Each submission writes its own file, so a concurrent repeat can't replace the image the winner
        # recorded (and signed) under the same name; the losers' files are removed.
        name = result_name(job_id, secrets.token_hex(6)) if image is not None else None
        if image is not None and name is not None:
            await self.services.images.write(name, image)
        try:
            async with self.services.database.transaction() as tx:
                current = await self._current(tx, job_id, worker)
                job, request, node = current.job, current.request, current.node or worker
                quick = self._count_work(node, job, now)
                settlement = self._settle(job, request, node, current.payer, body.state, remote, now)
                self._record_result(job, worker, body, image, name, settlement.reward, now)
                await tx.save_job(job)
                await self._pay(tx, job, request, node, settlement, now)
                await settle_if_complete(tx, request, now, others_unfinished=current.unfinished - 1)
                tx.announce("request", request.id)
        except BaseException:
            await self._forget(name)
            raise
        # The result is committed and paid: a store that fails now only leaves the upload for pruning.
        if body.generation == "R2":
            await self._forget(upload_name(job_id, worker.id))
        self.service_levels.record(request, job.model or "", now)
        self.services.hub.request_changed(request.id)
        try:
            await self.verifier.delivered(job_id, quick)
        except StorageUnavailable as error:  # the result stands; this image goes unchecked
            log.warning("could not check job %s: %s", job_id, error)
        return settlement

    async def _forget(self, name: str | None) -> None:
        try:
            await self.services.images.delete(name)
        except StorageUnavailable as error:
            log.warning("could not delete image %s: %s", name, error)

    @staticmethod
    def _record_result(
        job: JobRecord,
        worker: Worker,
        body: SubmitRequest,
        image: bytes | None,
        name: str | None,
        reward: float,
        now: float,
    ) -> None:
        # As AI Horde: a `censorship` gen_metadata entry (the node's censor blanked the image) marks it censored.
        censored = body.censored or body.state == "censored" or any(e.type == "censorship" for e in body.gen_metadata)
        job.state, job.result_state, job.censored = "done", body.state, censored
        job.image = name
        job.image_sha256 = sha256_hex(image) if image is not None else None
        job.gen_metadata = [entry.model_dump(exclude_none=True) for entry in body.gen_metadata]
        job.signature, job.worker_key = body.signature, worker.public_key if body.signature else None
        # The seed the node reports (and signed), as AI Horde shows it; the job document keeps the one asked for.
        job.seed = body.seed
        job.reward, job.finished_at = reward, now

    def _count_work(self, node: Worker, job: JobRecord, now: float) -> bool:
        """The node's counters for one more result, and its suspicion if the result came back faster
        than any real GPU makes that much work. Whether it came back quicker than the node's own
        measured speed allows (a spot check then follows for sure: coordinator/verification.py)."""
        megapixelsteps = job_megapixelsteps(job)
        elapsed = max(now - (job.assigned_at or now), 1e-3)
        if megapixelsteps / elapsed > self.services.config.suspicious_mps_per_second:
            node.suspicion += 1
        fraction = self.services.config.verification.quick_fraction
        quick = quicker_than_measured(node, job.model or "", megapixelsteps, job.assigned_at, now, fraction)
        node.requests_fulfilled += 1
        node.megapixelsteps += megapixelsteps
        record_speed(node, job.model or "", megapixelsteps, job.assigned_at, now)
        node.missed_deadlines = 0
        return quick

    def _settle(
        self,
        job: JobRecord,
        request: RequestRecord,
        node: Worker,
        payer: Account | None,
        state: str,
        remote: str,
        now: float,
    ) -> Settlement:
        """Who pays whom for this result (`economy.settle`), and the node's volunteer allowance after it."""
        if state not in PAID_STATES:
            return NOT_DELIVERED
        config = self.services.config
        per_period = config.volunteer_kudos_per_10_minutes
        allowance = volunteer_allowance(node.volunteer_credit, node.volunteer_at or node.created, now, per_period)
        settlement = settle(
            price=request.kudos_per_image,
            charge=self._payable(job, payer),
            requester_id=request.account_id,
            requester_address=request.remote,
            owner_id=node.owner_id,
            node_address=remote,
            withheld=node.suspicion >= config.suspicion_threshold,
            allowance=allowance,
            check=request.purpose == "check",
        )
        node.volunteer_credit, node.volunteer_at = round(allowance - settlement.minted, 4), now
        return settlement

    @staticmethod
    def _payable(job: JobRecord, payer: Account | None) -> float:
        """The price reserved for this image at submit, if the requester still holds it. Reservations keep
        transfers from spending it, so only an operator's negative grant can have taken it: the image is
        then unfunded rather than the requester overdrawn (the ledger's lock is held, see `_current`)."""
        if job.charge <= 0:
            return 0.0
        return job.charge if payer is not None and hundredths(payer.kudos) >= hundredths(job.charge) else 0.0

    async def _pay(
        self, tx: Tx, job: JobRecord, request: RequestRecord, node: Worker, settlement: Settlement, now: float
    ) -> None:
        """Save the node's counters and move the settlement's kudos: a funded image's spend and reward
        share the job's id as reference; a volunteer reward (minted) is marked as such. With verification
        on, the reward is held in escrow until the node's window closes (coordinator/escrow.py). A self-paid
        image (`economy.settle`) is its owner's own kudos coming back: not earned, not escrowed, and no shared
        key's spending (the owner spent nothing)."""
        if not settlement.self_paid:
            node.kudos_rewards = round(node.kudos_rewards + settlement.reward, 2)
        await tx.save_worker_state(node)
        await tx.record_stats(int(now // 60), 1, job_megapixelsteps(job))
        await tx.record_model_stats(int(now // 86400), job.model or "")  # /v2/stats/img/models
        if settlement.charge > 0:
            await tx.move_kudos("spend", request.account_id, None, settlement.charge, job.id, now)
            if request.sharedkey and not settlement.self_paid:  # the key counts the charge (coordinator/sharing.py)
                await add_utilized(tx, request.sharedkey, settlement.charge)
        if settlement.reward <= 0:
            return
        reference = job.id if settlement.charge > 0 else f"{settlement.reason}:{job.id}"
        if self._escrowed(settlement):
            window = self.services.config.verification.window
            await hold(tx, node.id, node.owner_id, settlement.reward, reference, job.id, now, window)
        else:
            await tx.move_kudos("reward", None, node.owner_id, settlement.reward, reference, now)
