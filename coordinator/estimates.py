"""What a requester is told about the future: can anyone serve this, and how long will it take."""

from coordinator.storage.records import Worker

# Until a node has a measured speed, assume a mid-range GPU (megapixel-steps per second).
DEFAULT_SPEED_MPS = 1.0


def wait_seconds(position: int, megapixelsteps: float, workers: list[Worker]) -> int:
    """Work ahead of the request plus its own, spread over the nodes that can do it."""
    if not workers:
        return 0
    threads = sum(max(1, w.threads) for w in workers)
    per_job = megapixelsteps / DEFAULT_SPEED_MPS
    return int((position + 1) * per_job / threads)
