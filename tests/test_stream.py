"""Live progress: a real node's step reports and images arrive on the request's event stream, in order;
the progress call is the assigned node's alone; streams count among an address's long-polls."""

import asyncio
import io
import itertools
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from client import flow
from client.api import HordeClient
from client.progress import WaitDisplay
from client.stream import Event, StreamUnavailable, follow
from coordinator.config import ConnectionLimits
from coordinator.connections import CONNECTIONS
from node import worker as node_worker
from node.daemon import NodeDaemon
from node.inference import Generator
from tests.api_support import custom_coordinator, generate, node, pop_job, requester, seed_of, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api
from tests.node_support import RecordingConsole, node_config, request_images, running, until


class HeldAtFirstStep:
    """Generators that stop after their first step until the test has seen it reported."""

    def __init__(self) -> None:
        self.seen = threading.Event()

    def factory(self) -> Any:
        held = self

        class Held(Generator):
            def run(self, job: Any, on_step: Any = None, should_abort: Any = None) -> Any:
                def step(done: int, total: int) -> None:
                    if on_step:
                        on_step(done, total)
                    if done == 1:
                        held.seen.wait(30)

                return super().run(job, step, should_abort)

        return lambda cache: Held(cache, cache.device)


async def collect(coordinator: RunningCoordinator, request_id: str, on_event: Any = None) -> list[Event]:
    events = []
    async with aiohttp.ClientSession() as session:
        async for event in follow(session, f"{coordinator.url}/api/v2", request_id):
            events.append(event)
            if on_event:
                on_event(event)
    return events


@pytest.mark.timeout(120)
async def test_stream_delivers_steps_then_images_of_a_real_job(
    coordinator: RunningCoordinator, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_worker, "STEP_REPORT_SECONDS", 0.0)  # report every step the slot sees
    owner = await coordinator.create_account("owner")
    alice = await coordinator.create_account("alice", kudos=100)
    api = Api(coordinator.url, apikey=alice.apikey)
    held = HeldAtFirstStep()
    daemon = NodeDaemon(
        node_config(tmp_path, coordinator.url, owner.apikey, tiny_model_dir),
        console=RecordingConsole(),
        generator_factory=held.factory(),
    )
    request_id = await request_images(api, n=1, steps=4)

    def release_on_progress(event: Event) -> None:
        if event.name == "progress":
            held.seen.set()

    async with running(daemon):
        events = await asyncio.wait_for(collect(coordinator, request_id, release_on_progress), 60)
    names = [event.name for event in events]
    assert names[0] == "check" and names[-1] == "end"
    assert "progress" in names and "image" in names
    assert names.index("progress") < names.index("image")
    progress = next(event.data for event in events if event.name == "progress")
    image = next(event.data for event in events if event.name == "image")
    assert progress["job"] == image["id"] and progress["index"] == 0
    assert 1 <= progress["step"] <= progress["total"] == 4
    assert image["img"] and image["signature"] and image["job_signature"]
    final = events[-1].data
    assert final["done"] and final["finished"] == 1
    # Each check event differs from the one before (only changes are sent).
    checks = [event.data for event in events if event.name == "check"]
    assert all(a != b for a, b in itertools.pairwise(checks))
    assert checks[0]["finished"] == 0 and checks[-1]["finished"] == 1


async def test_progress_is_the_assigned_nodes_alone(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    stranger = await coordinator.create_account("stranger")
    alice = await coordinator.create_account("alice", kudos=100)
    worker = node(coordinator, owner, "stepper")
    request_id = await generate(requester(coordinator, alice), small())
    job_id = (await pop_job(worker)).body["ids"][0]
    report = {"id": job_id, "step": 2, "total": 4}
    refused = await node(coordinator, stranger, "other").api.post("/v2/generate/progress", report)
    assert refused.status == 403 and refused.body["rc"] == "WrongCredentials"
    anonymous = await Api(coordinator.url).post("/v2/generate/progress", report)
    assert anonymous.status == 401 or anonymous.body["rc"] == "AnonForbiddenWorker"
    missing = await worker.api.post("/v2/generate/progress", {**report, "id": "no-such-job"})
    assert missing.status == 404 and missing.body["rc"] == "InvalidJobID"
    bad = await worker.api.post("/v2/generate/progress", {**report, "step": -1})
    assert bad.status == 400 and "rc" in bad.body
    accepted = await worker.api.post("/v2/generate/progress", report)
    assert accepted.status == 200 and accepted.body == {"accepted": True}
    too_soon = await worker.api.post("/v2/generate/progress", {**report, "step": 3})
    assert too_soon.status == 200 and too_soon.body == {"accepted": False}
    # A stream opened now starts with the latest accepted step.
    async with aiohttp.ClientSession() as session:
        events = follow(session, f"{coordinator.url}/api/v2", request_id)
        first = [await anext(events), await anext(events)]
        await events.aclose()
    assert [event.name for event in first] == ["progress", "check"]
    assert first[0].data == {"job": job_id, "index": 0, "step": 2, "total": 4}


async def test_unknown_request_has_no_stream(coordinator: RunningCoordinator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{coordinator.url}/api/v2/generate/stream/nope") as response:
            assert response.status == 404
            assert (await response.json())["rc"] == "RequestNotFound"
        with pytest.raises(StreamUnavailable):
            async for _ in follow(session, f"{coordinator.url}/api/v2", "nope"):
                pass


async def test_streams_count_as_long_polls(tmp_path: Path, database_url: str | None) -> None:
    limits = ConnectionLimits(long_polls_per_ip=3)
    async with custom_coordinator(tmp_path, database_url, connection_limits=limits) as coordinator:
        await streams_past_the_cap(coordinator)


async def streams_past_the_cap(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    request_id = await generate(requester(coordinator, alice), small())
    guard = coordinator.app[CONNECTIONS]
    cap = guard.limits.long_polls_per_ip
    async with aiohttp.ClientSession() as session:
        opened = [follow(session, f"{coordinator.url}/api/v2", request_id) for _ in range(cap)]
        for events in opened:
            assert (await anext(events)).name == "check"
        assert guard.long_polls_from("127.0.0.1") == cap
        async with session.get(f"{coordinator.url}/api/v2/generate/stream/{request_id}") as response:
            assert response.status == 429
            assert (await response.json())["rc"] == "TooManyLongPolls"
        for events in opened:
            await events.aclose()


async def test_a_step_reported_to_one_process_reaches_a_stream_on_another(
    tmp_path: Path, database_url: str | None
) -> None:
    """Two coordinators on one PostgreSQL database: the node reports to the first, the stream is on the second."""
    if database_url is None:
        pytest.skip("one SQLite file serves one process")
    async with (
        custom_coordinator(tmp_path / "a", database_url) as first,
        custom_coordinator(tmp_path / "b", database_url) as second,
    ):
        owner = await first.create_account("owner")
        alice = await first.create_account("alice", kudos=100)
        worker = node(first, owner, "stepper")
        request_id = await generate(requester(first, alice), small())
        job_id = (await pop_job(worker)).body["ids"][0]
        async with aiohttp.ClientSession() as session:
            events = follow(session, f"{second.url}/api/v2", request_id)
            assert (await anext(events)).name == "check"
            report = await worker.api.post("/v2/generate/progress", {"id": job_id, "step": 3, "total": 4})
            assert report.body == {"accepted": True}
            relayed = await asyncio.wait_for(anext(events), 15)
            await events.aclose()
        assert relayed.name == "progress"
        assert relayed.data == {"job": job_id, "index": 0, "step": 3, "total": 4}


async def follow_with(coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch, *, stream: bool) -> str:
    """What `horde generate`'s wait shows for a request whose node reports a step, then finishes it."""
    owner = await coordinator.create_account("owner")
    alice = await coordinator.create_account("alice", kudos=100)
    worker = node(coordinator, owner, "stepper")
    request_id = await generate(requester(coordinator, alice), small())
    if not stream:

        async def no_stream(*args: Any) -> Any:
            raise StreamUnavailable("HTTP 404 application/json")
            yield  # an async generator, like follow

        monkeypatch.setattr(flow, "follow", no_stream)
    shown = io.StringIO()
    display = WaitDisplay(request_id, console=Console(file=shown, width=200), enabled=True)
    async with HordeClient(coordinator.url) as client:
        waiting = asyncio.create_task(flow.wait_for(client, request_id, display))
        popped = await pop_job(worker)
        job_id = popped.body["ids"][0]
        if stream:  # a long-poll may miss a change `finished` does not show; the stream misses none
            await until(lambda: "processing" in shown.getvalue(), 30, "the job shown as being made")
            report = {"id": job_id, "step": 2, "total": 4}
            assert (await worker.api.post("/v2/generate/progress", report)).status == 200
            await until(lambda: "step 2/4" in shown.getvalue(), 30, "the step shown")
        assert (await worker.submit(job_id, seed_of(popped))).status == 200
        check = await asyncio.wait_for(waiting, 30)
    assert check.done and check.finished == 1
    return shown.getvalue()


async def test_horde_generate_follows_the_stream(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "image 1: step 2/4" in await follow_with(coordinator, monkeypatch, stream=True)


async def test_horde_generate_long_polls_without_a_stream(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = await follow_with(coordinator, monkeypatch, stream=False)
    assert "step" not in shown, shown  # no stream, no steps; follow_with checked it still ended done


async def test_the_coordinator_says_it_streams(coordinator: RunningCoordinator) -> None:
    info = (await Api(coordinator.url).get("/v2/coordinator")).body
    assert {"progress-stream", "step-progress", "signed-webhooks", "metrics"} <= set(info["features"])
