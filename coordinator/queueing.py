"""Pure rules of the queue: priorities, seeds, and what each job demands of a node."""

from coordinator.capabilities import demands
from coordinator.storage.records import Account, QueueEntry, RequestRecord
from protocol.generation import GenerationRequest
from protocol.seeds import SEED_SPACE, seed_number

# AI Horde adds 50 priority points for every 10 s a request waits.
AGEING_PER_SECOND = 5.0
# The fairness bound: kudos count toward priority up to this many, so no request, anonymous ones included,
# is ever passed by a request queued more than PRIORITY_KUDOS_CAP / AGEING_PER_SECOND = 600 s after it.
PRIORITY_KUDOS_CAP = 3000.0


def priority_rank(kudos: float, created: float) -> float:
    """A static sort key equal to `kudos + ageing bonus` minus a term common to all jobs.

    The ageing bonus grows at the same rate for every job, so ordering by
    `kudos - AGEING_PER_SECOND * created` is ordering by current priority, and the index
    on it never needs updating while jobs wait.
    """
    return min(max(kudos, 0.0), PRIORITY_KUDOS_CAP) - AGEING_PER_SECOND * created


def priority_tier(account: Account | None) -> int:
    """One tier for everyone: an anonymous request counts as 0 kudos and ages like any other, so it
    waits behind richer requests queued at most 600 s after it, never forever (the fairness bound).
    The column stays for an operator's own tiers."""
    return 1


def image_seeds(seed: str | None, variation: int | None, n: int) -> list[str]:
    """One distinct seed per image, so a batch never repeats an image."""
    start = seed_number(seed)
    step = variation or 1
    return [str((start + index * step) % SEED_SPACE) for index in range(n)]


def worker_list_allows(workers: list[str], blacklist: bool, worker_id: str, worker_name: str) -> bool:
    """A requester's `workers` (ids or names): only those nodes, or with `worker_blacklist`, any but those."""
    if not workers:
        return True
    named = worker_id in workers or worker_name in workers
    return not named if blacklist else named


def queue_entry(
    job_id: str, request_id: str, body: GenerationRequest, tier: int, rank: float, sourced: bool | None = None
) -> QueueEntry:
    """`sourced`: whether the request has a source image; a stored request's body has none, so pass
    `request.source_image is not None` for it (None: the body's own, as submitted)."""
    return QueueEntry(
        job_id=job_id,
        request_id=request_id,
        models=list(dict.fromkeys(body.models)),
        tier=tier,
        rank=rank,
        **demands(body, body.source_image is not None if sourced is None else sourced),
        workers=list(body.workers),  # for wake-ups only: the queue rows store a flag, not the list
        worker_blacklist=body.worker_blacklist,
    )


def request_entry(job_id: str, request: RequestRecord) -> QueueEntry:
    """The queue entry of a stored request's job (for requeues, `is_possible` and ETAs)."""
    sourced = request.source_image is not None
    return queue_entry(job_id, request.id, request.generation, request.tier, request.rank, sourced)
