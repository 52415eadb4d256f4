"""What a requester is told about the future: can anyone serve this, and how long will it take."""

from coordinator.events import can_serve
from coordinator.storage.records import QueueEntry, Worker, WorkerCaps

# Until a node has a measured speed, assume a mid-range GPU (megapixel-steps per second).
DEFAULT_SPEED_MPS = 1.0


def able_workers(entry: QueueEntry, workers: list[Worker]) -> list[Worker]:
    able = [w for w in workers if can_serve(WorkerCaps.of(w), entry)]
    if entry.workers:
        wanted = set(entry.workers)
        chosen = [w for w in able if w.id in wanted or w.name in wanted]
        able = [w for w in able if w not in chosen] if entry.worker_blacklist else chosen
    return able


def wait_seconds(position: int, megapixelsteps: float, workers: list[Worker]) -> int:
    """Work ahead of the request plus its own, spread over the nodes that can do it."""
    if not workers:
        return 0
    threads = sum(max(1, w.threads) for w in workers)
    per_job = megapixelsteps / DEFAULT_SPEED_MPS
    return int((position + 1) * per_job / threads)
