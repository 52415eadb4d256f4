"""When the coordinator process runs Python's cycle collector.

With 10,000 nodes long-polling, a coordinator holds about a million container objects: each parked pop
is an aiohttp request with its task, coroutines and timers, and each node has its roster entries. The
request path frees what it makes by reference counting; the cycle collector is for the rare cycle. On its
automatic schedule CPython walked those live objects again and again, with the event loop stopped:

- its full collection walked all of them, for 1–1.5 s every few seconds at 500 pops a second
  (bench/scale.py), and found next to nothing to free (26 objects in 26 full collections);
- its second generation held 40,000–85,000 parked pops' objects, all alive: 30–110 ms a collection,
  several times a minute.

So `serve` takes full collections off the automatic schedule and runs them itself, rarely: when the process
has doubled since the last one (what is left uncollected meanwhile is the cycle that outlived a young
collection), or FULL_COLLECTION_MAX_SECONDS after it. A full collection still stops the loop as long (1.1 s
at 10,000 parked nodes), but it comes once per doubling, not every few seconds.

Young collections free the cycles that die young; what survives one is frozen at once (`freeze_survivors`),
so no young collection walks it again, and only full collections (which unfreeze everything first) look at
it. They run on CPython's schedule, and also whenever YOUNG_COLLECTION_MAX_SECONDS passed without one:
CPython counts allocations less deallocations, and once the network is steady every parked pop that
answers frees as many old objects as a new one makes, so the count stood still while the young generation
grew to tens of thousands of objects, 30–80 ms a collection.
"""

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from transport.process import resident_bytes

log = logging.getLogger("horde.coordinator.gc")

YOUNG_COLLECTION_MAX_SECONDS = 0.1
FULL_COLLECTION_CHECK_SECONDS = 5.0
FULL_COLLECTION_MAX_SECONDS = 3600.0
FULL_COLLECTION_GROWTH = 2.0  # resident memory over that after the last full collection
NEVER = 2**31 - 1  # as gc's third threshold: no automatic full collection


def defer_full_collections() -> None:
    """Leave full collections to `run_collections`; what start-up built (modules, the app) is frozen,
    and so is what survives each young collection from now on, so no young collection walks it again."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)
    if freeze_survivors not in gc.callbacks:
        gc.callbacks.append(freeze_survivors)


young_collected_at = 0.0  # when the last young collection ended (`freeze_survivors`), on time.monotonic()


def freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """After a young collection, what it left alive joins the frozen objects."""
    global young_collected_at
    if phase == "stop" and info["generation"] < 2:
        gc.freeze()
        young_collected_at = time.monotonic()


def full_collection() -> int:
    """Every object, frozen ones included (they are most of them); the survivors are frozen again."""
    gc.unfreeze()
    freed = gc.collect()
    gc.freeze()
    return freed


def full_collection_due(rss: int, rss_after_last: int, seconds_since_last: float) -> bool:
    return rss > rss_after_last * FULL_COLLECTION_GROWTH or seconds_since_last >= FULL_COLLECTION_MAX_SECONDS


async def run_collections(
    check_seconds: float = FULL_COLLECTION_CHECK_SECONDS,
    rss: Callable[[], int] = resident_bytes,
    young_seconds: float = YOUNG_COLLECTION_MAX_SECONDS,
    full: bool = True,
) -> None:
    """Forever: a young collection when `young_seconds` passed without one, and (`full`) a full collection
    whenever `full_collection_due`, looked at every `check_seconds`."""
    rss_after, collected_at = rss(), time.monotonic()
    checked_at = collected_at
    while True:
        await asyncio.sleep(young_seconds)
        if time.monotonic() - young_collected_at > young_seconds:
            gc.collect(0)
        if not full or time.monotonic() - checked_at < check_seconds:
            continue
        checked_at = time.monotonic()
        if not full_collection_due(rss(), rss_after, checked_at - collected_at):
            continue
        started = time.perf_counter()
        freed = full_collection()
        rss_after, collected_at = rss(), time.monotonic()
        log.info(
            "full garbage collection: %d objects freed in %.0f ms",
            freed,
            (time.perf_counter() - started) * 1000,
            extra={"resident_bytes": rss_after},
        )
