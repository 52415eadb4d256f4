"""Requests still to come: the work that requests queued later, with more kudos, will put ahead of a waiting
one. The wait forecast (coordinator/estimates.py) only sees the requests already queued; `Outlooks` adds this."""

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Requests queued later can pass a waiting one (more kudos: `queueing.priority_rank`); the simulation
# only sees those already queued. Their rate comes from the arrivals of the last 5 minutes, once
# there are ARRIVAL_MIN of them (a rate needs a sample).
ARRIVAL_WINDOW = 300.0
ARRIVAL_MIN = 20


@dataclass
class Arrival:
    at: float
    priority: float  # the kudos its rank counts (`queueing.priority_rank`)
    work: float  # megapixelsteps of all its images
    models: tuple[str, ...]  # () for any


class Overtaking:
    """The recent arrivals (ARRIVAL_WINDOW) indexed for the question every check of a waiting request asks:
    how much work, arriving while it waits, will be served before it? An arrival of priority k passes a
    request of priority p for (k − p) / ageing seconds after arriving, so over a wait w it adds its rate of
    work × min((k − p) / ageing, w). Arrivals are grouped by the models they name and each group sorted by
    priority with running sums, so the answer is two bisections per group instead of a pass over every
    arrival (5,000 kept: half a millisecond per check). Arrivals since the index was built (`add`) are
    looked at one by one; `Outlooks` builds it again once they are many, or it is a second old."""

    def __init__(self, arrivals: Iterable[Arrival], now: float, ageing: float) -> None:
        recent = [arrival for arrival in arrivals if now - arrival.at <= ARRIVAL_WINDOW]
        self.ageing = ageing
        self.count = len(recent)
        self.oldest = min((arrival.at for arrival in recent), default=now)
        by_models: dict[tuple[str, ...], list[Arrival]] = {}
        for arrival in recent:
            by_models.setdefault(arrival.models, []).append(arrival)
        self.groups = {models: _SortedArrivals(group) for models, group in by_models.items()}
        self.added: list[Arrival] = []

    def add(self, arrival: Arrival) -> None:
        self.added.append(arrival)
        self.count += 1

    def __bool__(self) -> bool:
        return self.count >= ARRIVAL_MIN  # a rate needs a sample

    def work(self, priority: float, models: Sequence[str], wait: float, now: float) -> float:
        """Megapixelsteps expected to arrive during `wait` and be served before a request of `priority` for
        `models` (() for any); 0 below ARRIVAL_MIN arrivals."""
        if not self:
            return 0.0
        shared = set(models)

        def overlaps(theirs: tuple[str, ...]) -> bool:
            return not theirs or not shared or bool(shared.intersection(theirs))

        reach = self.ageing * wait  # an arrival this far above `priority` passes it for the whole wait
        total = sum(group.work(priority, reach) for theirs, group in self.groups.items() if overlaps(theirs))
        total += sum(
            arrival.work * min(max(arrival.priority - priority, 0.0), reach)
            for arrival in self.added
            if overlaps(arrival.models)
        )
        span = max(now - self.oldest, 30.0)
        return total / self.ageing / span


class _SortedArrivals:
    """One group's arrivals by priority (relative to the lowest, for exact sums), with running sums of work
    and of work × priority: Σ work × min(k − p, reach) over k > p is read off at two bisections."""

    def __init__(self, arrivals: list[Arrival]) -> None:
        arrivals = sorted(arrivals, key=lambda arrival: arrival.priority)
        self.base = arrivals[0].priority
        self.priorities = [arrival.priority - self.base for arrival in arrivals]
        self.work_sums, self.weighted_sums = [0.0], [0.0]
        for arrival, priority in zip(arrivals, self.priorities, strict=True):
            self.work_sums.append(self.work_sums[-1] + arrival.work)
            self.weighted_sums.append(self.weighted_sums[-1] + arrival.work * priority)

    def work(self, priority: float, reach: float) -> float:
        p = priority - self.base
        above = bisect.bisect_right(self.priorities, p)  # these pass it at all
        whole = bisect.bisect_left(self.priorities, p + reach, lo=above)  # these pass it for the whole wait
        partly = (
            self.weighted_sums[whole] - self.weighted_sums[above] - p * (self.work_sums[whole] - self.work_sums[above])
        )
        return partly + reach * (self.work_sums[-1] - self.work_sums[whole])
