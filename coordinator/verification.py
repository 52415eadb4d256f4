"""Spot checks by redundant execution, and their verdicts (docs/security.md, "Verified work").

After a node's image is stored, with probability `check_rate` the same job (payload, model, seed) is queued
again as a request of the network's verifier account, for a node of another owner. The check is an
ordinary request to whoever pops it: its job document and pop answer are built by the same code as any
other (tests/test_verify_checks.py compares them field by field). When the second image comes back:

- it agrees with the first (coordinator/likeness.py): both nodes pass;
- it does not: a third node, of a third owner, makes the image once more; the image the third agrees with
  passes and the other fails (agreeing with both, all pass; with neither, nobody is judged).

A failed check forfeits everything the node holds in escrow (coordinator/escrow.py), makes it `suspect`
(every image checked until it passes `record` more), and at `failures_to_suspend` failures suspends it,
the reason shown on its pops. Each verdict is a document signed by the coordinator; a failure's forfeits
name it in the public ledger.
"""

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any

from coordinator.cached import Copy, copied_from, free_checkable
from coordinator.canaries import remember_reference
from coordinator.escrow import VERIFIER, extend, forfeit, system_account
from coordinator.events import announce_jobs
from coordinator.likeness import Fingerprint, agree, distance, fingerprint
from coordinator.queueing import queue_entry
from coordinator.services import Services
from coordinator.storage import checks as check_rows
from coordinator.storage.records import JobRecord, QueueEntry, RequestRecord, Worker
from coordinator.storage.sql import Tx
from coordinator.verdicts import image_checks, record_verdict
from protocol.generation import REQUEST_WORKERS_MAX, GenerationRequest
from protocol.verdicts import Comparison, ImageChecks

log = logging.getLogger("horde.coordinator.verification")
CHECK = "check"
EXPIRED, VOID = "expired", "void"  # a check whose job was cancelled (expired), or faulted
_random = random.SystemRandom()  # a node must not be able to predict which of its images are checked


def check_rate(worker: Worker, new_rate: float, settled_rate: float, suspect_rate: float, record: int) -> float:
    """The chance that one of the node's images is checked: `suspect_rate` after a failed check until it
    passes `record` more; else from `new_rate` (no record) down evenly to `settled_rate` at `record` passes."""
    if worker.checks_failed and worker.passes_since_failure < record:
        return suspect_rate
    if worker.checks_passed >= record or record <= 0:
        return settled_rate
    return new_rate - (new_rate - settled_rate) * worker.checks_passed / record


def checkable(job: JobRecord, request: RequestRecord) -> bool:
    """Images a check can reproduce: a delivered, uncensored txt2img image of an ordinary request (a source
    image would have to be copied for the checking node; a check is never itself checked)."""
    return (
        job.result_state == "ok"
        and not job.censored
        and job.image is not None
        and request.purpose == ""
        and request.source_image is None
    )


@dataclass
class Opinion:
    """One node's image of a job under check."""

    job: JobRecord
    worker: Worker
    print: Fingerprint | None  # None: no usable image (faulted, censored, gone)


class Verifier:
    def __init__(self, services: Services) -> None:
        self.services = services

    @property
    def settings(self) -> Any:
        return self.services.config.verification

    async def delivered(self, job_id: str, quick: bool = False) -> None:
        """After a result is stored and paid: judge it if it was a check; else maybe check it (for sure when it
        came back `quick`er than the node's measured speed allows)."""
        if not self.settings.enabled:
            return
        async with self.services.database.reader() as tx:
            check = await check_rows.pending_check(tx, job_id)
            job = await tx.get_job(job_id)
            request = await tx.get_request(job.request_id) if job else None
            worker = await tx.worker_by("id", job.worker_id) if job and job.worker_id else None
        if job is None or request is None or worker is None:
            return
        # An image its requester's own node made is never spot-checked: it moves no kudos between accounts
        # (coordinator/economy.py), so a wrong one cheats nobody of kudos, and a pass would build the node's
        # record, which lowers its check rate, on work nobody else paid for, with the network paying the checker.
        self_served = request.account_id == worker.owner_id
        copy = await self._cached(job, worker) if free_checkable(job, request) else None
        if copy is not None and copy.same_owner:
            if check is not None:  # the checking node sent a copy: its image says nothing of the subject's
                await self._close(check["job_id"], VOID)
            return
        if check is not None:
            await self._judge(check)
        elif checkable(job, request) and worker.trusted:
            await remember_reference(self.services, job.id)  # a known answer for canaries
        elif (
            checkable(job, request)
            and not self_served
            and (copy is not None or _random.random() < self.rate(worker, quick))
        ):
            await self._issue(job, request, 1, [worker.owner_id], {"quick": True} if quick else {})

    async def _cached(self, job: JobRecord, worker: Worker) -> Copy | None:
        """The free check (coordinator/cached.py): the earlier image of another job this one has the pixels of,
        if any; when the same owner made both, the fail verdict and its consequences, at once."""
        data = await self.services.images.read(job.image) if job.image else None
        if data is None:
            return None  # the image is gone already: nothing to compare
        print_ = await asyncio.to_thread(fingerprint, data)
        now = self.services.clock()
        async with self.services.database.transaction() as tx:
            copy = await copied_from(tx, job, worker, print_, now)
            if copy is None or not copy.same_owner:
                return copy
            await tx.lock_ledger()
            current = await tx.worker_by("id", worker.id)
            if current is not None:
                await self._verdict(tx, job, current, "fail", [copy.earlier], now, "cached")
        log.warning("node %s delivered job %s's image for job %s", worker.name, copy.earlier.job_id, job.id)
        return copy

    async def checks_of(self, job_id: str) -> ImageChecks:
        """Whether an image was checked, how, and by whom (`horde verify --checks`)."""
        async with self.services.database.reader() as tx:
            return await image_checks(tx, job_id)

    async def void_lapsed(self) -> int:
        """Close the checks whose job will never come back (its request expired or was cancelled: `expired`;
        it faulted: `void`), so none stays pending for ever. Nobody is judged; the holds they extended are
        released when that extension ends, like any other."""
        async with self.services.database.transaction() as tx:
            lapsed = await check_rows.lapsed_checks(tx)
            for row in lapsed:
                state = EXPIRED if row["job_state"] == "cancelled" else VOID
                await check_rows.set_check_state(tx, row["job_id"], state)
        return len(lapsed)

    def rate(self, worker: Worker, quick: bool = False) -> float:
        s = self.settings
        return s.suspect_rate if quick else check_rate(worker, s.new_rate, s.settled_rate, s.suspect_rate, s.record)

    async def issue_canary(self, subject: JobRecord, request: RequestRecord, worker: Worker) -> None:
        """A trusted node's image, asked again of `worker` alone (coordinator/canaries.py)."""
        await self._issue(subject, request, 1, [], {"canary": worker.id}, pinned=worker.id)

    # --- issuing checks ----------------------------------------------------------------
    async def _issue(
        self,
        subject: JobRecord,
        request: RequestRecord,
        round_: int,
        owners: list[int],
        info: dict[str, Any],
        pinned: str | None = None,
    ) -> None:
        """Queue the subject's job again for a node of none of `owners`, or (a canary) for the `pinned` node."""
        now = self.services.clock()
        async with self.services.database.transaction() as tx:
            verifier = await system_account(tx, VERIFIER, now)
            excluded = (await check_rows.workers_of(tx, owners))[:REQUEST_WORKERS_MAX]  # see docs/security.md
            nodes = ([pinned], False) if pinned else (excluded, True)
            check_request, job, entry = self._check_request(subject, request, verifier.id, nodes, now)
            await tx.insert_request(check_request)
            await tx.insert_jobs([job])
            await tx.enqueue([entry])
            await check_rows.insert_check(tx, job.id, subject.id, round_, now, info)
            # The rewards under judgement (the subject's, and in a second round the first checker's) stay held
            # until the check can conclude.
            for judged in (subject.id, info.get("first_check")):
                if judged:
                    await extend(tx, judged, now + self.settings.window)
            announce_jobs(tx, [entry])
        self.services.hub.jobs_queued([entry])

    @staticmethod
    def _check_request(
        subject: JobRecord, request: RequestRecord, verifier_id: int, nodes: tuple[list[str], bool], now: float
    ) -> tuple[RequestRecord, JobRecord, QueueEntry]:
        """A request of one image with the subject's body, model and seed, for the nodes named (a worker list,
        and whether it is a blacklist)."""
        body = dict(request.body)
        seed = str((subject.job_document or {}).get("payload", {}).get("seed", subject.seed))
        body["params"] = {**body.get("params", {}), "n": 1, "seed": seed}
        body["models"] = [subject.model] if subject.model else body.get("models", [])
        body["workers"], body["worker_blacklist"] = nodes
        generation = GenerationRequest.model_validate(body)
        check = RequestRecord(
            id=str(uuid.uuid4()),
            account_id=verifier_id,
            created=now,
            updated=now,
            state="active",
            n=1,
            kudos_per_image=request.kudos_per_image,
            body=generation.model_dump(),
            client_agent=request.client_agent,
            tier=request.tier,
            rank=request.rank,
            purpose=CHECK,
        )
        job = JobRecord(
            id=str(uuid.uuid4()),
            request_id=check.id,
            index=0,
            seed=seed,
            state="waiting",
            requester=f"account:{verifier_id}",
        )
        return check, job, queue_entry(job.id, check.id, generation, check.tier, check.rank, sourced=False)

    # --- judging ---------------------------------------------------------------------
    async def _judge(self, check: dict[str, Any]) -> None:
        info = check["info"]
        async with self.services.database.reader() as tx:
            jobs = [check["subject_job"], *([info["first_check"]] if "first_check" in info else []), check["job_id"]]
            opinions = [await self._opinion(tx, job_id) for job_id in jobs]
        if any(opinion is None for opinion in opinions):
            await self._close(check["job_id"], "lapsed")  # a job or its node is gone
            return
        views = [opinion for opinion in opinions if opinion is not None]
        if check["round"] == 1:
            await self._first_round(check, views[0], views[1])
        else:
            await self._second_round(check, views[0], views[1], views[2])

    async def _opinion(self, tx: Tx, job_id: str) -> Opinion | None:
        job = await tx.get_job(job_id)
        worker = await tx.worker_by("id", job.worker_id) if job and job.worker_id else None
        if job is None or worker is None:
            return None
        data = await self.services.images.read(job.image) if job.image and not job.censored else None
        return Opinion(job, worker, await asyncio.to_thread(fingerprint, data) if data else None)

    def _agree(self, a: Opinion, b: Opinion) -> bool:
        assert a.print is not None and b.print is not None
        return agree(a.print, b.print, a.worker.hardware, b.worker.hardware, self.settings.max_distance)

    async def _first_round(self, check: dict[str, Any], subject: Opinion, second: Opinion) -> None:
        if subject.print is None or second.print is None:
            await self._close(check["job_id"], "no image to compare")
            return
        if self._agree(subject, second):
            await self._verdicts(check["job_id"], "agreed", [(subject, "pass", [second]), (second, "pass", [subject])])
            return
        await self._close(check["job_id"], "disputed")
        async with self.services.database.reader() as tx:
            request = await tx.get_request(subject.job.request_id)
        if request is not None:
            owners = [subject.worker.owner_id, second.worker.owner_id]
            await self._issue(subject.job, request, 2, owners, {"first_check": second.job.id})

    async def _second_round(self, check: dict[str, Any], subject: Opinion, second: Opinion, third: Opinion) -> None:
        if subject.print is None or second.print is None or third.print is None:
            await self._close(check["job_id"], "no image to compare")
            return
        with_subject, with_second = self._agree(subject, third), self._agree(second, third)
        if with_subject and with_second:
            outcomes = [(subject, "pass", [third]), (second, "pass", [third]), (third, "pass", [subject, second])]
        elif with_subject:
            outcomes = [(subject, "pass", [third]), (second, "fail", [subject, third]), (third, "pass", [subject])]
        elif with_second:
            outcomes = [(subject, "fail", [second, third]), (second, "pass", [third]), (third, "pass", [second])]
        else:
            await self._close(check["job_id"], "inconclusive: three different images")
            return
        await self._verdicts(check["job_id"], "decided", outcomes)

    async def _verdicts(self, check_job: str, how: str, outcomes: list[tuple[Opinion, str, list[Opinion]]]) -> None:
        now = self.services.clock()
        async with self.services.database.transaction() as tx:
            await tx.lock_ledger()
            for opinion, outcome, against in outcomes:
                worker = await tx.worker_by("id", opinion.worker.id)
                if worker is None:
                    continue
                evidence = [
                    Comparison(
                        job_id=other.job.id,
                        worker_id=other.worker.id,
                        worker_name=other.worker.name,
                        hardware=other.worker.hardware,
                        distance=_distance(opinion, other),
                    )
                    for other in against
                ]
                await self._verdict(tx, opinion.job, worker, outcome, evidence, now)
            await check_rows.set_check_state(tx, check_job, how)

    async def _verdict(
        self,
        tx: Tx,
        job: JobRecord,
        worker: Worker,
        outcome: str,
        evidence: list[Comparison],
        now: float,
        rule: str = "rerun",
    ) -> None:
        verdict_id = await record_verdict(tx, self.services.identity, job, worker, outcome, evidence, now, rule)
        await self._consequences(tx, worker, outcome, verdict_id, now)

    async def _consequences(self, tx: Tx, worker: Worker, outcome: str, verdict_id: int, now: float) -> None:
        if outcome == "pass":
            worker.checks_passed += 1
            worker.passes_since_failure += 1
        else:
            worker.checks_failed += 1
            worker.passes_since_failure = 0
            forfeited = await forfeit(tx, worker.id, verdict_id, now)
            log.warning("node %s failed a check (verdict %s): %.2f kudos forfeited", worker.name, verdict_id, forfeited)
            if worker.checks_failed >= self.settings.failures_to_suspend:
                worker.suspended = suspension_reason(worker.checks_failed, verdict_id)
        await tx.save_worker_state(worker)

    async def _close(self, check_job: str, state: str) -> None:
        async with self.services.database.transaction() as tx:
            await check_rows.set_check_state(tx, check_job, state)


def suspension_reason(failures: int, verdict_id: int) -> str:
    """What the suspended node's operator reads on each pop (AI Horde's maintenance message)."""
    return (
        f"suspended: {failures} spot checks found images that other nodes could not reproduce (the last, "
        f"verdict {verdict_id}: `horde verify` on its image shows the evidence). Its held kudos were forfeited. "
        "An operator lifts the suspension after looking (`horde-coordinator trust NAME`)."
    )


def _distance(a: Opinion, b: Opinion) -> float | None:
    if a.print is None or b.print is None:
        return None
    value = distance(a.print, b.print)
    return round(value, 3) if value != float("inf") else None
