"""Helpers for the node's integration tests (a plain module): configs, a requester, a gated generator."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from node.config import NodeConfig, build_config
from node.console import Console
from node.daemon import NodeDaemon
from node.inference import Generator
from node.jobspec import InferenceAborted
from node.pipelines import PipelineCache
from tests.helpers import Api


class RecordingConsole(Console):
    """A JSON console into memory that also keeps the events, for assertions."""

    def __init__(self) -> None:
        super().__init__(io.StringIO(), "json")
        self.events: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, level: int = 20, /, **fields: Any) -> None:
        self.events.append((kind, fields))
        super().event(kind, level, **fields)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()  # type: ignore[attr-defined]


def node_config(folder: Path, url: str, apikey: str | None, tiny: Path, **overrides: Any) -> NodeConfig:
    models = overrides.pop("models", ["tiny-sd"])
    values: dict[str, Any] = {
        "coordinator_url": url,
        "name": "node-1",
        "apikey": apikey,
        "models": models,
        "catalog": {model: {"source": str(tiny)} for model in models},
        "device": "cpu",
        "pop_wait": 1.0,
        "shutdown_grace": 5.0,
        "key_file": "node.key",
        "spool_dir": "spool",
        **overrides,
    }
    folder.mkdir(parents=True, exist_ok=True)
    return build_config(values, folder)


class Gate:
    """Wraps generators so a test can hold a job mid-run: `started` is set, then it waits for `release`."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def factory(self) -> Callable[[PipelineCache], Any]:
        gate = self

        class Gated(Generator):
            def run(self, job, on_step=None, should_abort=None):
                gate.started.set()
                while not gate.release.wait(0.02):
                    if should_abort and should_abort():
                        raise InferenceAborted("aborted while held by the test")
                return super().run(job, on_step, should_abort)

        return lambda cache: Gated(cache, cache.device)

    async def wait_started(self, timeout: float = 30) -> None:
        assert await asyncio.to_thread(self.started.wait, timeout), "no job started"


async def until(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(daemon: NodeDaemon) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[int]]]:
    """Run the daemon in the background; stops it gracefully (if still running) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run_until(stop))
    try:
        yield stop, task
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)


async def request_images(api: Api, model: str = "tiny-sd", n: int = 1, steps: int = 3) -> str:
    body = {
        "prompt": "a red cat",
        "models": [model],
        "params": {"width": 64, "height": 64, "steps": steps, "n": n, "sampler_name": "k_euler"},
    }
    reply = await api.post("/v2/generate/async", body)
    assert reply.status == 202, reply.body
    return reply.body["id"]


async def finished(api: Api, request_id: str, timeout: float = 30) -> dict[str, Any]:
    """The request's status once done (long-polls check, then reads status)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        check = await api.get(f"/v2/generate/check/{request_id}?wait=2")
        if check.body.get("done"):
            return (await api.get(f"/v2/generate/status/{request_id}")).body
        assert asyncio.get_running_loop().time() < deadline, f"request not done: {check.body}"


def record_uploads(monkeypatch: Any) -> list[str]:
    """The URLs the node PUTs result images to (the real upload still runs)."""
    from node.coordinator_api import CoordinatorClient

    urls: list[str] = []
    original = CoordinatorClient.upload

    async def upload(self: CoordinatorClient, url: str, data: bytes, content_type: str) -> None:
        urls.append(url)
        await original(self, url, data, content_type)

    monkeypatch.setattr(CoordinatorClient, "upload", upload)
    return urls
