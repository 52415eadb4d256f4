"""Issue 19: the coordinator runs full garbage collections itself, rarely (coordinator/gcpolicy.py).

At 10,000 parked nodes CPython's automatic full collection stopped the event loop for 1–1.5 s every few
seconds (bench/scale.py) and freed next to nothing. These tests hold the rule: no automatic full
collection once deferred, young collections as before, and a full one when memory has grown enough."""

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from coordinator.gcpolicy import FULL_COLLECTION_GROWTH, NEVER, defer_full_collections, run_full_collections


class Cyclic:
    me: "Cyclic | None" = None


@pytest.fixture
def gc_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def garbage_in_the_oldest_generation() -> "weakref.ref[Cyclic]":
    """A reference cycle that became garbage after surviving young collections: only a full one frees it."""
    cycle = Cyclic()
    cycle.me = cycle
    alive = weakref.ref(cycle)
    gc.collect(1)  # it survives a young collection, alive: it moves to the oldest generation
    del cycle
    return alive


async def test_full_collections_wait_until_memory_has_grown(gc_restored: None) -> None:
    young = gc.get_threshold()[:2]
    defer_full_collections()
    assert gc.get_threshold() == (*young, NEVER)  # young collections as before; no automatic full one
    assert gc.get_freeze_count() > 0  # what start-up built is never walked again

    alive = garbage_in_the_oldest_generation()
    for _ in range(50):
        Cyclic()  # allocations: young collections run as they would
        gc.collect(1)
    assert alive() is not None

    base = 100_000_000
    readings = [base, round(base * (FULL_COLLECTION_GROWTH - 0.1)), round(base * (FULL_COLLECTION_GROWTH + 0.1))]
    read = asyncio.Event()
    taken: list[int] = []

    def resident() -> int:
        taken.append(readings[min(len(taken), len(readings) - 1)])
        read.set()
        return taken[-1]

    collector = asyncio.create_task(run_full_collections(check_seconds=0.001, rss=resident))
    try:
        async with asyncio.timeout(10):
            while len(taken) < 2:  # the start, then a look at memory grown less than the rule asks
                read.clear()
                await read.wait()
            assert alive() is not None  # not yet due: nothing collected
            while alive() is not None:  # grown past the rule: a full collection frees the cycle
                read.clear()
                await read.wait()
        assert len(taken) >= 3
    finally:
        collector.cancel()
