"""The pop loop: long-poll for work while there is room for it, and say why none comes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from node.config import NodeConfig
from node.console import Console
from node.coordinator_api import ApiError, CoordinatorClient, Unreachable
from node.delivery import Backoff
from node.features import declared
from node.jobs import PopUnit, split_pop
from node.results import Results
from node.samplers import declared_samplers
from protocol.errors import RC
from protocol.jobs import PopRequest

BRIDGE_AGENT = "horde-network-node:1:https://github.com/horde-network"
MIN_POP_INTERVAL = 1.0
IDLE_REPORT_SECONDS = 60.0
MAINTENANCE_PAUSE = 60.0
# For a coordinator whose WorkerMaintenance answer says nothing more (ours gives the reason and the remedy).
MAINTENANCE_REMEDY = 'its owner can lift it: PUT /v2/workers/{id} {"maintenance": false}'
SKIP_REASONS = {
    "models": "want a model not served here",
    "max_pixels": "are larger than max_pixels",
    "nsfw": "are NSFW",
    "img2img": "are img2img",
    "painting": "are inpainting",
    "lora": "use LoRAs",
    "blacklist": "match the blacklist",
    "worker_id": "are for other workers",
    "untrusted": "want trusted workers",
    "kudos": "need upfront kudos",
    "post-processing": "want post-processing",
    "controlnet": "use ControlNet",
    "step_count": "want more steps than this node takes",
    "bridge_version": "need a feature or sampler this node does not declare",
    "failed_here": "failed on this node before (they go to other nodes)",
}


class Popper:
    """Pops while fewer than `threads + queue_size` pops are in hand, the coordinator takes results,
    and no pause is in force. Each pop goes on `queue`; workers call `done()` when one is finished."""

    def __init__(
        self,
        client: CoordinatorClient,
        config: NodeConfig,
        console: Console,
        results: Results,
        online: asyncio.Event,
        fail: Callable[[str], object],
    ) -> None:
        self.client, self.config, self.console, self.results = client, config, console, results
        self.online = online
        self.models: list[str] = []
        self.queue: asyncio.Queue[PopUnit | None] = asyncio.Queue()
        self._fail = fail
        self._in_hand = 0
        self._room = asyncio.Event()
        self._pause_until = 0.0
        self._announce_resume = False
        self._in_maintenance_since: float | None = None
        self._stopping = False
        self._in_pop = False
        self._backoff = Backoff(cap=config.max_retry_delay)
        self._idle = _IdleReporter(console)

    def pause(self, seconds: float, reason: str) -> None:
        self._pause_until = time.monotonic() + seconds
        self._announce_resume = True
        self.console.event("paused", logging.WARNING, seconds=seconds, reason=reason)

    def stop(self) -> bool:
        """Pop no more. True when no pop is in flight. The daemon cancels the loop either way: a
        coordinator gives back the jobs it claimed for a pop whose connection hangs up."""
        self._stopping = True
        return not self._in_pop

    def done(self) -> None:
        self._in_hand -= 1
        self._room.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._ready()
            began = loop.time()
            try:
                self._in_pop = True
                pop = await self.client.pop(self.request())
            except Unreachable as exc:
                await self._retry_later(exc)
                continue
            except ApiError as exc:
                if exc.is_auth:
                    self._fail(f"the coordinator refuses this node: {exc}")
                    return
                await self._refused(exc)
                continue
            finally:
                self._in_pop = False
            self._reachable()
            self._out_of_maintenance()
            unit = split_pop(pop)
            if not unit.jobs:
                self._idle.report(pop.skipped)
                # A coordinator without long-poll answers at once: don't spin.
                await asyncio.sleep(max(0.0, MIN_POP_INTERVAL - (loop.time() - began)))
                continue
            self.results.taken(unit.jobs)
            self._in_hand += 1
            self.queue.put_nowait(unit)

    def request(self) -> PopRequest:
        config = self.config
        return PopRequest(
            name=config.name,
            models=self.models,
            max_pixels=config.max_pixels,
            nsfw=config.nsfw,
            threads=config.threads,
            amount=config.max_batch,
            bridge_agent=BRIDGE_AGENT,
            allow_img2img=config.allow_img2img,
            allow_painting=config.allow_painting,
            allow_lora=config.allow_lora,
            wait=config.pop_wait,
            # What the node's extras let it honour (node/features.py): never more than it can run.
            **declared(config),
            **declared_samplers(),  # the samplers it runs, and which are approximations (node/samplers.py)
        )

    async def _ready(self) -> None:
        # Undeliverable results come first: no new work while the coordinator can't take results.
        await self.online.wait()
        while self._in_hand >= self.config.threads + self.config.queue_size:
            self._room.clear()
            await self._room.wait()
        remaining = self._pause_until - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
            if self._announce_resume:
                self.console.event("resumed")
        self._announce_resume = False

    async def _retry_later(self, exc: Exception) -> None:
        delay = self._backoff.next_delay()
        if self._backoff.attempts % 5 == 1:
            self.console.event("unreachable", logging.WARNING, error=str(exc), delay=delay)
        await asyncio.sleep(delay)

    def _reachable(self) -> None:
        if self._backoff.attempts:
            self.console.event("reachable")
        self._backoff.reset()

    async def _refused(self, exc: ApiError) -> None:
        if exc.rc == RC.WORKER_MAINTENANCE:
            self._in_maintenance(exc.message)
            return
        delay = self._backoff.next_delay()
        self.console.event("log", logging.WARNING, message=f"pop refused: {exc}; retrying in {delay:.0f}s")
        await asyncio.sleep(delay)

    def _in_maintenance(self, message: str) -> None:
        """No jobs while the coordinator has this node in maintenance: say so, with the coordinator's
        reason and remedy (never "the queue is empty"), and ask again in a while."""
        self._pause_until = time.monotonic() + MAINTENANCE_PAUSE
        self._in_maintenance_since = self._in_maintenance_since or time.monotonic()
        reason = message.strip() or f"no reason given; {MAINTENANCE_REMEDY}"
        self.console.event("maintenance", logging.WARNING, reason=reason, seconds=MAINTENANCE_PAUSE)

    def _out_of_maintenance(self) -> None:
        if self._in_maintenance_since is not None:
            minutes = (time.monotonic() - self._in_maintenance_since) / 60
            self._in_maintenance_since = None
            self.console.event("maintenance_over", minutes=minutes)


def describe_skipped(reasons: dict[str, int]) -> str:
    if not reasons:
        return "the queue is empty"
    parts = [f"{count} {SKIP_REASONS.get(key, key)}" for key, count in sorted(reasons.items())]
    return "waiting requests " + ", ".join(parts)


class _IdleReporter:
    """Says why no jobs arrive, when the reasons change or once a minute."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._last: dict[str, int] | None = None
        self._at = 0.0

    def report(self, skipped: dict[str, int]) -> None:
        reasons = {key: value for key, value in skipped.items() if value}
        now = time.monotonic()
        if reasons == self._last and now - self._at < IDLE_REPORT_SECONDS:
            return
        self._last, self._at = reasons, now
        self.console.event("idle", reasons=describe_skipped(reasons), skipped=reasons)
