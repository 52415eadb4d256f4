"""The node daemon: pop jobs, run them, spool and deliver the results, survive faults.

    daemon = NodeDaemon(config)
    exit_code = await daemon.run_until(stop_event, hard_stop_event)

Setting `stop` stops popping, finishes the jobs in hand and delivers what it can within
`shutdown_grace`; setting `hard_stop` (the second signal) submits the unfinished jobs as faulted
and returns at once. Inside: one Popper task, one Worker task per inference slot (`threads`), and
one Delivery task, joined by a queue of pops (popper → workers) and the spool (workers → delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from node import startup
from node.config import NodeConfig
from node.console import Console
from node.coordinator_api import CoordinatorClient
from node.delivery import Backoff, Delivery, NodeStats
from node.pipelines import PipelineCache
from node.popper import Popper
from node.results import Results
from node.runner import GeneratorLike, Slot
from node.spool import Spool
from node.worker import Worker
from protocol.keys import Identity, PublicKey

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_FORCED = 0, 1, 130
HARD_STOP_SUBMIT_SECONDS = 5.0


class NodeDaemon:
    """A volunteer node. Counters are in `stats`; `ready_models` are the models loaded and offered.

    `cache` and `generator_factory` let tests share a pipeline cache or wrap the generator.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        console: Console | None = None,
        identity: Identity | None = None,
        cache: PipelineCache | None = None,
        generator_factory: Callable[[PipelineCache], GeneratorLike] | None = None,
    ) -> None:
        self.config = config
        self.console = console or Console()
        self.stats = NodeStats()
        self.spool = Spool(config.spool_path)
        self.identity = identity if identity is not None else config.load_identity()
        self.ready_models: list[str] = []
        self.verify_key: PublicKey | None = None
        self.signed = False
        self.fatal_reason: str | None = None
        self._cache = cache
        self._generator_factory = generator_factory or startup.default_generator_factory(config)
        self._tasks: list[asyncio.Task[Any]] = []
        self._model_locks: dict[str, asyncio.Lock] = {}

    @property
    def jobs_done(self) -> int:
        return self.stats.jobs_done

    @property
    def jobs_faulted(self) -> int:
        return self.stats.jobs_faulted

    @property
    def kudos_earned(self) -> float:
        return self.stats.kudos_earned

    async def run_until(self, stop: asyncio.Event, hard_stop: asyncio.Event | None = None) -> int:
        """Run until `stop` (graceful) or `hard_stop` (abandon); returns the process exit code."""
        hard_stop = hard_stop or asyncio.Event()
        self._fatal = asyncio.Event()
        config = self.config
        async with CoordinatorClient(config.coordinator_url, apikey=config.apikey, identity=self.identity) as client:
            self.client = client
            backoff = Backoff(cap=config.max_retry_delay)
            self.delivery = Delivery(
                client, self.spool, self.console, self.stats, image_format=config.image_format, backoff=backoff
            )
            self.results = Results(
                self.spool,
                self.delivery,
                self.stats,
                self.console,
                max_faults=config.max_consecutive_faults,
                on_unhealthy=self._unhealthy,
            )
            self.popper = Popper(client, config, self.console, self.results, self.delivery.online, self._fail)
            try:
                code = await self._serve(stop, hard_stop)
            finally:
                await self._cancel_tasks()
        self.console.event(
            "stopped",
            done=self.stats.jobs_done,
            faulted=self.stats.jobs_faulted,
            kudos=self.stats.kudos_earned,
            pending=len(self.spool),
        )
        return code

    # -- phases ------------------------------------------------------------------------------------

    async def _serve(self, stop: asyncio.Event, hard_stop: asyncio.Event) -> int:
        info = await startup.handshake(self.client, self.console, stop, self.config.max_retry_delay)
        if info is startup.STOPPED:
            return EXIT_OK
        try:
            self.verify_key, self.signed = startup.adopt(info, self.config, self.identity, self.client, self.console)
        except ValueError as exc:
            return self._fail(str(exc))
        self.results.signer = self.identity if self.signed else None
        self._spawn(self.delivery.run())
        self.delivery.replay()
        loaded = await startup.preload(self.config, self.console, self._cache, stop)
        if isinstance(loaded, str):
            return self._fail(loaded) if loaded else EXIT_OK
        cache, self.ready_models = loaded
        self.popper.models = self.ready_models
        self.stats.started_at = asyncio.get_running_loop().time()
        slots = [Slot(i, lambda: self._generator_factory(cache)) for i in range(self.config.threads)]
        try:
            popper = self._spawn(self.popper.run())
            workers = [self._spawn(self._worker(slot).run(self.popper.queue, self.popper.done)) for slot in slots]
            await _first_of(stop.wait(), hard_stop.wait(), self._fatal.wait())
            if hard_stop.is_set():
                return await self._abandon(popper, workers)
            return await self._wind_down(popper, workers, hard_stop)
        finally:
            for slot in slots:
                slot.close()

    def _worker(self, slot: Slot) -> Worker:
        locks = self._model_locks
        return Worker(slot, self.client, self.config, self.console, self.results, self.verify_key, locks)

    async def _wind_down(
        self, popper: asyncio.Task[None], workers: list[asyncio.Task[None]], hard_stop: asyncio.Event
    ) -> int:
        in_hand = len(self.results.unfinished)
        self.console.event("stopping", reason=f"finishing {in_hand} job(s) in hand; stop again to abandon")
        self.popper.stop()
        # Even a pop in flight: the coordinator gives back jobs it claimed for a connection that hangs
        # up (dispatch._claim_for_connection), so an idle node stops now, not after its long-poll.
        popper.cancel()
        if not await _first_of(asyncio.gather(popper, return_exceptions=True), hard_stop.wait()):
            return await self._abandon(popper, workers)
        for _ in workers:
            self.popper.queue.put_nowait(None)
        if not await _first_of(asyncio.gather(*workers), hard_stop.wait()):
            return await self._abandon(popper, workers)
        # Deliver what is finished; whatever the coordinator can't take now stays in the spool.
        with contextlib.suppress(TimeoutError):
            delivered = asyncio.wait_for(self.delivery.join(), self.config.shutdown_grace)
            if not await _first_of(delivered, hard_stop.wait()):
                return EXIT_FORCED
        return EXIT_FATAL if self.fatal_reason else EXIT_OK

    async def _abandon(self, popper: asyncio.Task[None], workers: list[asyncio.Task[None]]) -> int:
        """Second signal: give every unfinished job back as faulted, briefly try to deliver, return."""
        self.console.event("stopping", logging.WARNING, reason="abandoning unfinished jobs")
        for task in (popper, *workers):
            task.cancel()
        await asyncio.gather(popper, *workers, return_exceptions=True)
        self.results.abandon_all("the node was stopped before finishing this job")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.delivery.join(), min(HARD_STOP_SUBMIT_SECONDS, self.config.shutdown_grace))
        return EXIT_FORCED

    def _unhealthy(self, reason: str) -> None:
        self.popper.pause(self.config.fault_pause, reason)

    def _fail(self, reason: str) -> int:
        self.fatal_reason = reason
        self.console.event("stopping", logging.ERROR, reason=reason)
        self._fatal.set()
        return EXIT_FATAL

    # -- tasks -------------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for result in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("node task failed: %r", result)
        self._tasks.clear()


async def _first_of(*awaitables: Awaitable[Any]) -> bool:
    """Wait for the first to finish, cancel the rest; True when it was the first awaitable."""
    tasks = [asyncio.ensure_future(item) for item in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
            # A cancelled gather() ends with CancelledError as its exception; unread, asyncio prints it
            # with a traceback when the future is collected (the second signal's stray traceback).
            task.add_done_callback(_retrieve)
    if tasks[0] in done:
        tasks[0].result()
        return True
    return False


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
