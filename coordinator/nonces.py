"""Replay protection for signed requests: each (key, nonce) is accepted once while its
`created` time is inside the accepted clock window."""

import time
from collections import OrderedDict


class NonceCache:
    def __init__(self, window: float = 300.0, capacity: int = 1_000_000) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_use(self, key: str, nonce: str, now: float | None = None) -> bool:
        """True the first time a (key, nonce) pair is seen within the window."""
        now = time.time() if now is None else now
        self._forget_before(now - 2 * self.window)
        entry = f"{key}|{nonce}"
        if entry in self._seen:
            return False
        self._seen[entry] = now
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def _forget_before(self, cutoff: float) -> None:
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if oldest >= cutoff:
                return
            self._seen.popitem(last=False)
