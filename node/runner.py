"""Running one job on an inference thread, under a step watchdog.

Each slot is one thread with its own Generator. The event loop never blocks on inference: it polls
the thread's future and the job's step progress. A job whose steps stall is asked to abort; if the
thread does not even come back to check, the slot abandons it (a thread cannot be killed) and starts
over with a fresh thread, so a hung driver call costs one job, not the node.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from node.jobspec import GeneratedImage, JobSpec

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# The first step includes prompt encoding and moving the model, so it gets more time than the rest.
FIRST_STEP_FACTOR = 3.0


class GeneratorLike(Protocol):
    def run(
        self,
        job: JobSpec,
        on_step: Callable[[int, int], None] | None = None,
        should_abort: Callable[[], bool] | None = None,
    ) -> list[GeneratedImage]: ...


class Stalled(Exception):
    """The job's thread stopped making progress and did not answer the abort; it was abandoned."""


@dataclass
class Progress:
    """Shared between the inference thread (writes steps) and the event loop (reads, may abort)."""

    step: int = 0
    total: int = 0
    last_change: float = field(default_factory=time.monotonic)
    abort_reason: str | None = None
    aborted_at: float | None = None
    _abort: threading.Event = field(default_factory=threading.Event)

    def on_step(self, step: int, total: int) -> None:
        self.step, self.total, self.last_change = step, total, time.monotonic()

    def should_abort(self) -> bool:
        return self._abort.is_set()

    def abort(self, reason: str) -> None:
        if not self._abort.is_set():
            self.abort_reason, self.aborted_at = reason, time.monotonic()
            self._abort.set()

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_change


class Slot:
    """One inference thread and its generator."""

    def __init__(self, index: int, make_generator: Callable[[], GeneratorLike]) -> None:
        self.index = index
        self._make_generator = make_generator
        self._start()

    def _start(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"inference-{self.index}")
        self.generator = self._make_generator()

    async def run(
        self,
        spec: JobSpec,
        progress: Progress,
        step_timeout: float,
        on_tick: Callable[[Progress], None] | None = None,
    ) -> list[GeneratedImage]:
        """The job's images; raises what the generator raises, or Stalled."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self.executor, lambda: self.generator.run(spec, progress.on_step, progress.should_abort)
        )
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=POLL_SECONDS)
                if done:
                    return future.result()
                if on_tick:
                    on_tick(progress)
                self._watch(progress, step_timeout)
        except BaseException:
            if not future.done():
                # Cancelled (shutdown) or abandoned: stop the thread at its next step, and since nobody
                # will read its result, keep it from being reported as "never retrieved".
                progress.abort("the node is shutting down")
                future.add_done_callback(_discard)
            raise

    def _watch(self, progress: Progress, step_timeout: float) -> None:
        limit = step_timeout * (FIRST_STEP_FACTOR if progress.step == 0 else 1.0)
        if progress.aborted_at is None and progress.stalled_for() > limit:
            progress.abort(f"watchdog: no step progress for {progress.stalled_for():.0f}s")
        # Grace: a healthy thread notices the abort within a step; one that doesn't is hung.
        if progress.aborted_at is not None and time.monotonic() - progress.aborted_at > step_timeout:
            self.abandon()
            raise Stalled(progress.abort_reason or "the inference thread hung")

    def abandon(self) -> None:
        log.error("inference thread %d is not responding; abandoning it and starting a new one", self.index)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._start()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _discard(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def free_memory() -> None:
    """After a fault, drop what the failed job left referenced, so the next job starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
