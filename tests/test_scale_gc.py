"""Issue 19: the coordinator runs full garbage collections itself, rarely (coordinator/gcpolicy.py).

At 10,000 parked nodes CPython's automatic collections walked the parked pops' live objects again and again
with the event loop stopped: a full collection for 1–1.5 s every few seconds, second-generation ones for
30–110 ms. These tests hold the rule: no automatic full collection once deferred; young collections on their
schedule, freeing the cycles that died young, and what survives one never walked by a young collection
again; a full one, frozen objects included, when memory has grown enough."""

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from coordinator import gcpolicy
from coordinator.gcpolicy import (
    FULL_COLLECTION_GROWTH,
    NEVER,
    defer_full_collections,
    freeze_survivors,
    run_collections,
)


class Cyclic:
    me: "Cyclic | None" = None


@pytest.fixture
def gc_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    if freeze_survivors in gc.callbacks:
        gc.callbacks.remove(freeze_survivors)
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def young_ids() -> set[int]:
    return {id(tracked) for generation in (0, 1) for tracked in gc.get_objects(generation)}


def cycle_that_died() -> "weakref.ref[Cyclic]":
    cycle = Cyclic()
    cycle.me = cycle
    return weakref.ref(cycle)


def test_what_survives_a_young_collection_is_not_walked_by_the_next(gc_restored: None) -> None:
    young = gc.get_threshold()[:2]
    defer_full_collections()
    assert gc.get_threshold() == (*young, NEVER)  # young collections on their schedule; no automatic full one
    assert gc.get_freeze_count() > 0  # what start-up built is never walked by a young collection
    gc.disable()  # no young collection while they are made and looked at: they are all young
    try:
        survivors = [Cyclic() for _ in range(1000)]
        assert young_ids() >= {id(survivor) for survivor in survivors}
    finally:
        gc.enable()
    frozen = gc.get_freeze_count()
    died = cycle_that_died()
    before = gcpolicy.young_collected_at
    gc.collect(0)
    assert gcpolicy.young_collected_at > before  # what `run_collections` waits on
    assert died() is None  # a cycle that died young is freed by the young collection
    assert not young_ids() & {id(survivor) for survivor in survivors}
    assert gc.get_freeze_count() >= frozen + len(survivors)


async def test_a_young_collection_runs_when_the_count_stands_still(gc_restored: None) -> None:
    """CPython counts allocations less deallocations: in a steady network old parked pops die as fast as
    new ones are made, the count stands still and the young generation grows unwalked. A young collection
    then runs once `young_seconds` passed without one."""
    defer_full_collections()
    gc.set_threshold(2**31 - 1, 10, NEVER)  # the count never reaches its threshold
    freed = asyncio.Event()
    cycle = Cyclic()
    cycle.me = cycle
    watch = weakref.ref(cycle, lambda _gone: freed.set())
    del cycle
    collector = asyncio.create_task(run_collections(check_seconds=3600, rss=lambda: 0, young_seconds=0.001))
    try:
        async with asyncio.timeout(10):
            await freed.wait()
    finally:
        collector.cancel()
    assert watch() is None


async def test_full_collections_wait_until_memory_has_grown(gc_restored: None) -> None:
    defer_full_collections()
    old = Cyclic()
    old.me = old
    garbage_that_was_old = weakref.ref(old)
    gc.collect(1)  # it survives a young collection, alive: frozen, only a full collection walks it
    del old
    for _ in range(50):
        Cyclic()  # allocations: young collections run as they would
        gc.collect(1)
    assert garbage_that_was_old() is not None

    base = 100_000_000
    readings = [base, round(base * (FULL_COLLECTION_GROWTH - 0.1)), round(base * (FULL_COLLECTION_GROWTH + 0.1))]
    read = asyncio.Event()
    taken: list[int] = []

    def resident() -> int:
        taken.append(readings[min(len(taken), len(readings) - 1)])
        read.set()
        return taken[-1]

    collector = asyncio.create_task(run_collections(check_seconds=0.001, rss=resident))
    try:
        async with asyncio.timeout(10):
            while len(taken) < 2:  # the start, then a look at memory grown less than the rule asks
                read.clear()
                await read.wait()
            assert garbage_that_was_old() is not None  # not yet due: nothing collected
            while garbage_that_was_old() is not None:  # grown past the rule: a full collection frees it
                read.clear()
                await read.wait()
        assert len(taken) >= 3
    finally:
        collector.cancel()
