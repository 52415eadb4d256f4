"""Per-caller token buckets for the busy endpoints (generate, pop, submit)."""

import time

from coordinator.config import RateLimit
from coordinator.errors import HordeError
from protocol.errors import RC

MAX_BUCKETS = 100_000


class RateLimiter:
    def __init__(self, limits: dict[str, RateLimit], enabled: bool = True) -> None:
        self.limits = limits
        self.enabled = enabled
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def check(self, action: str, who: str) -> None:
        """Spend one token for `who` on `action`, or answer 429."""
        limit = self.limits.get(action)
        if not self.enabled or limit is None:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get((action, who), (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - last) * limit.rate)
        if tokens < 1:
            retry = (1 - tokens) / limit.rate
            raise HordeError(429, RC.RATE_LIMITED, f"Too many {action} requests; retry in {retry:.1f} s.")
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.clear()
        self._buckets[(action, who)] = (tokens - 1, now)
