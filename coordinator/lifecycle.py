"""Transitions of a job after it leaves a node: back to the queue, faulted, or settled.

Used inside a transaction by both the submit handler (a node reports a fault) and the
upkeep loop (a node missed its deadline), so the retry rule exists once.
"""

from coordinator.metrics import JOB_FAULTS
from coordinator.queueing import request_entry
from coordinator.storage.records import JobRecord, QueueEntry, RequestRecord
from coordinator.storage.sql import Tx

TIME_LIMIT_EXCEEDED = "time limit exceeded"


async def requeue_or_fault(
    tx: Tx, job: JobRecord, request: RequestRecord, max_faults: int, now: float, reason: str
) -> QueueEntry | None:
    """Count a fault against the job; requeue it, or fault the whole request once the job failed on
    `max_faults` different nodes. A node the job failed on never gets it again (`excluded`), so one
    node cannot fault a request alone, however often it fails, and nobody's poison costs it twice.

    Returns the queue entry when the job went back to the queue, so the caller can wake nodes.
    """
    JOB_FAULTS.labels("time limit" if reason == TIME_LIMIT_EXCEEDED else "reported").inc()
    await tx.record_fault(int(now // 60))  # the status page's history
    job.faults += 1
    job.restarts += 1
    if job.worker_id and job.worker_id not in job.previous_workers:
        job.previous_workers.append(job.worker_id)
    job.worker_id, job.deadline, job.assigned_at = None, None, None
    if request.state != "active":
        # Cancelled or faulted while this image was being made: nobody wants it any more.
        job.state = "cancelled"
        await tx.save_job(job)
        return None
    if len(job.previous_workers) >= max_faults:
        job.state = "faulted"
        await tx.save_job(job)
        nodes = len(job.previous_workers)
        await fault_request(tx, request, now, f"an image failed on {nodes} different nodes; the last said: {reason}")
        return None
    job.state = "waiting"
    await tx.save_job(job)
    entry = requeue_entry(job, request)
    await tx.enqueue([entry])
    request.updated = now
    await tx.update_request(request)
    return entry


async def release_job(tx: Tx, job: JobRecord, request: RequestRecord) -> QueueEntry | None:
    """Give a job back to the queue as if it had never been handed out (its node never got it).

    No fault is counted. Returns the queue entry, or None when the job moved on meanwhile.
    """
    current = await tx.get_job(job.id)
    if current is None or current.state != "processing" or current.worker_id != job.worker_id:
        return None
    current.worker_id, current.worker_name, current.deadline, current.assigned_at = None, None, None, None
    current.model, current.job_document, current.job_signature = None, None, None
    if request.state != "active":
        current.state = "cancelled"
        await tx.save_job(current)
        return None
    current.state = "waiting"
    await tx.save_job(current)
    entry = requeue_entry(current, request)
    await tx.enqueue([entry])
    return entry


def excluded(job: JobRecord, worker_id: str) -> bool:
    """Whether `worker_id` may not be given this job: it faulted it or missed its deadline before."""
    return worker_id in job.previous_workers


def requeue_entry(job: JobRecord, request: RequestRecord) -> QueueEntry:
    entry = request_entry(job.id, request)  # with its source, which the stored body lacks
    entry.excluded = list(job.previous_workers)
    return entry


async def fault_request(tx: Tx, request: RequestRecord, now: float, reason: str) -> None:
    await tx.dequeue_request(request.id)
    for other in await tx.jobs_of(request.id):
        if other.state == "waiting":
            other.state = "cancelled"
            await tx.save_job(other)
    request.state, request.updated, request.message = "faulted", now, reason
    await tx.update_request(request)


async def settle_if_complete(tx: Tx, request: RequestRecord, now: float, others_unfinished: int) -> None:
    """Mark an active request done once none of its images is waiting or being made: `others_unfinished`,
    besides the one just settled, as `Tx.settling` counted them (under the ledger's lock, which every change
    of a job's state but a pop's takes, and a pop leaves an image unfinished)."""
    request.updated = now
    if request.state == "active" and not others_unfinished:
        request.state = "done"
    await tx.set_request_state(request)
