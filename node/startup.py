"""The daemon's setup steps: the coordinator handshake (and the trust mode it decides), model preload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import torch

from node.catalog import Catalog, table_problems
from node.config import NodeConfig
from node.console import Console
from node.coordinator_api import ApiError, CoordinatorClient, Unreachable
from node.delivery import Backoff
from node.devices import configured_dtype, pick_device, torch_threads
from node.features import SharedFeatures
from node.inference import Generator
from node.pipelines import PipelineCache
from node.runner import GeneratorLike
from protocol.accounts import CoordinatorInfo
from protocol.keys import Identity, KeyFormatError, PublicKey

log = logging.getLogger(__name__)


class _Stopped:
    pass


STOPPED: Final = _Stopped()


def device_of(config: NodeConfig) -> str | None:
    return None if config.device == "auto" else config.device


def default_generator_factory(config: NodeConfig) -> Callable[[PipelineCache], GeneratorLike]:
    shared = SharedFeatures(config)  # one safety checker and set of post-processors for every slot

    def make(cache: PipelineCache) -> GeneratorLike:
        features = shared.get(cache.device)
        return Generator(cache, cache.device, config.lora_path, config.allow_lora, features)

    return make


# -- handshake --------------------------------------------------------------------------------------


async def handshake(
    client: CoordinatorClient, console: Console, stop: asyncio.Event, cap: float = 60.0
) -> CoordinatorInfo | _Stopped | None:
    """`GET /v2/coordinator`, retried until it answers or `stop` is set."""
    backoff = Backoff(cap=cap)
    while not stop.is_set():
        try:
            return await client.coordinator_info()
        except Unreachable as exc:
            delay = backoff.next_delay()
            if backoff.attempts % 5 == 1:
                console.event("unreachable", logging.WARNING, error=str(exc), delay=delay)
            await _sleep_unless(stop, delay)
        except ApiError as exc:
            console.event("log", logging.WARNING, message=f"GET /v2/coordinator: {exc}; assuming apikey-only")
            return None
    return STOPPED


def adopt(
    info: CoordinatorInfo | _Stopped | None,
    config: NodeConfig,
    identity: Identity | None,
    client: CoordinatorClient,
    console: Console,
) -> tuple[PublicKey | None, bool]:
    """Decide the mode: (key to verify jobs with, whether this node signs). ValueError: unusable."""
    url = config.coordinator_url
    if not isinstance(info, CoordinatorInfo):
        client.signing = False
        console.event("coordinator", url=url, mode="apikey-only (no /v2/coordinator: signatures not used)")
        return None, False
    try:
        presented = PublicKey.from_text(info.public_key)
    except KeyFormatError as exc:
        raise ValueError(f"the coordinator's public key is unreadable: {exc}") from None
    key = presented
    if config.coordinator_public_key:
        try:
            key = PublicKey.from_text(config.coordinator_public_key)
        except KeyFormatError as exc:
            raise ValueError(f"coordinator_public_key: {exc}") from None
        if key != presented:
            log.error("coordinator key mismatch: presented %s, pinned %s", presented.text(), key.text())
            console.event("key_mismatch", logging.ERROR, presented=presented.text(), pinned=key.text())
    else:
        console.event("not_pinned", logging.WARNING, presented=presented.text())
    signed = identity is not None
    client.signing = signed
    mode = f"signed as {identity.public_key.text()}" if identity else "apikey-only (no node key)"
    console.event("coordinator", url=url, mode=mode, version=info.version)
    if not config.apikey:
        console.event("log", logging.WARNING, message="no apikey configured: kudos have no owner account")
    return key, signed


# -- models -----------------------------------------------------------------------------------------


async def preload(
    config: NodeConfig, console: Console, cache: PipelineCache | None, stop: asyncio.Event
) -> tuple[PipelineCache, list[str]] | str:
    """Load the served models; returns (cache, ready names), or a fatal reason ("" if stopped)."""
    if not config.models:
        return "no models configured: add model names to `models` (and their [catalog] entries)"
    try:
        if cache is None:
            problems = table_problems(config.catalog_table(), config.models)
            if problems:
                return "catalog: " + "; ".join(problems)
            catalog = Catalog.from_config(config.catalog_table())
            device = pick_device(device_of(config))
            dtype = configured_dtype(device, config.dtype)
            cache = PipelineCache(catalog, device, dtype=dtype, budget_bytes=config.budget_bytes)
    except ValueError as exc:
        return f"catalog: {exc}"

    threads = torch_threads(cache.device, config.torch_threads)
    if threads is not None:
        torch.set_num_threads(threads)

    def progress(name: str, fraction: float) -> None:
        console.event("model_loading", model=name, percent=fraction * 100)

    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1, thread_name_prefix="preload")
    # The loading thread is not waited for on stop: it cannot be interrupted, and it holds no job.
    future = loop.run_in_executor(executor, cache.preload, config.models, progress)
    executor.shutdown(wait=False)
    stopper = asyncio.ensure_future(stop.wait())
    waited: set[asyncio.Future[Any]] = {future, stopper}
    done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if future not in done:
        return ""
    failed = future.result()
    for name, reason in failed.items():
        console.event("model_failed", logging.ERROR, model=name, reason=reason)
    ready = [name for name in config.models if name not in failed]
    if not ready:
        return "none of the configured models could be loaded"
    console.event("models_ready", models=", ".join(ready), device=str(cache.device), threads=torch.get_num_threads())
    return cache, ready


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
