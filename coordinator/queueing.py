"""Pure rules of the queue: priorities, seeds, and what each job demands of a node."""

import hashlib
import secrets

from coordinator.storage.records import Account, QueueEntry
from protocol.generation import GenerationRequest

# AI Horde adds 50 priority points for every 10 s a request waits.
AGEING_PER_SECOND = 5.0
SEED_SPACE = 2**32


def priority_rank(kudos: float, created: float) -> float:
    """A static sort key equal to `kudos + ageing bonus` minus a term common to all jobs.

    The ageing bonus grows at the same rate for every job, so ordering by
    `kudos - AGEING_PER_SECOND * created` is ordering by current priority, and the index
    on it never needs updating while jobs wait.
    """
    return kudos - AGEING_PER_SECOND * created


def priority_tier(account: Account | None) -> int:
    """Anonymous requests come after every registered requester's."""
    return 0 if account is None else 1


def base_seed(seed: str | None) -> int:
    if seed is None or not seed.strip():
        return secrets.randbelow(SEED_SPACE)
    text = seed.strip()
    if text.isascii() and text.isdigit():  # str.isdigit() alone accepts "²", which int() refuses
        return int(text) % SEED_SPACE
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def image_seeds(seed: str | None, variation: int | None, n: int) -> list[str]:
    """One distinct seed per image, so a batch never repeats an image."""
    start = base_seed(seed)
    step = variation or 1
    return [str((start + index * step) % SEED_SPACE) for index in range(n)]


def worker_list_allows(workers: list[str], blacklist: bool, worker_id: str, worker_name: str) -> bool:
    """A requester's `workers` (ids or names): only those nodes, or with `worker_blacklist`, any but those."""
    if not workers:
        return True
    named = worker_id in workers or worker_name in workers
    return not named if blacklist else named


def queue_entry(job_id: str, request_id: str, body: GenerationRequest, tier: int, rank: float) -> QueueEntry:
    params = body.params
    return QueueEntry(
        job_id=job_id,
        request_id=request_id,
        models=list(dict.fromkeys(body.models)),
        tier=tier,
        rank=rank,
        pixels=params.width * params.height,
        steps=params.steps,
        nsfw=body.nsfw,
        img2img=body.is_img2img,
        painting=body.is_painting,
        lora=bool(params.loras),
        post_processing=bool(params.post_processing),
        trusted_only=body.trusted_workers,
        workers=list(body.workers),  # for wake-ups only: the queue rows store a flag, not the list
        worker_blacklist=body.worker_blacklist,
    )
