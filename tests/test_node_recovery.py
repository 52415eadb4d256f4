"""Finished work survives a coordinator outage and a node restart: the spool delivers it later."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.daemon import EXIT_OK, NodeDaemon
from tests.conftest import RunningCoordinator, coordinator_config, start_coordinator
from tests.helpers import Api
from tests.node_support import (
    Gate,
    RecordingConsole,
    finished,
    node_config,
    request_images,
    running,
    until,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Restartable:
    """A coordinator on a fixed port that a test can stop and start again over the same data."""

    def __init__(self, data_dir: Path) -> None:
        self.config = coordinator_config(data_dir)
        self.current: RunningCoordinator | None = None
        self.port: int | None = None

    async def start(self) -> RunningCoordinator:
        self.current = await start_coordinator(self.config, self.port)
        self.port = int(self.current.url.rsplit(":", 1)[1])
        return self.current

    async def stop(self) -> None:
        if self.current is not None:
            await self.current.stop()
            self.current = None


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[Restartable]:
    coordinator = Restartable(tmp_path / "coordinator")
    await coordinator.start()
    try:
        yield coordinator
    finally:
        await coordinator.stop()


async def prepare(restartable: Restartable, tmp_path: Path, tiny: Path) -> tuple[Api, Gate, NodeDaemon, str]:
    coordinator = restartable.current
    assert coordinator is not None
    requester = await coordinator.create_account("requester", kudos=100)
    owner = await coordinator.create_account("owner")
    api = Api(coordinator.url, apikey=requester.apikey)
    config = node_config(
        tmp_path / "node",
        coordinator.url,
        owner.apikey,
        tiny,
        max_retry_delay=0.5,
        shutdown_grace=0.5,
        coordinator_public_key=coordinator.public_key.text(),
    )
    gate = Gate()
    daemon = NodeDaemon(config, console=RecordingConsole(), generator_factory=gate.factory())
    return api, gate, daemon, await request_images(api)


async def test_coordinator_outage_mid_job_is_bridged_by_the_spool(
    restartable: Restartable, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, gate, daemon, request_id = await prepare(restartable, tmp_path, tiny_model_dir)
    async with running(daemon):
        await gate.wait_started()
        await restartable.stop()
        gate.release.set()
        await until(lambda: daemon.jobs_done == 1, what="the job to finish")
        await until(lambda: "unreachable" in daemon.console.kinds(), what="the failed submit")  # type: ignore[attr-defined]
        assert len(daemon.spool) == 1 and daemon.stats.jobs_submitted == 0
        await restartable.start()
        await until(lambda: daemon.stats.jobs_submitted == 1, what="the resubmit")
        status = await finished(api, request_id)
    assert status["generations"][0]["state"] == "ok"
    assert len(daemon.spool) == 0 and daemon.kudos_earned > 0


async def test_a_restarted_node_replays_its_spool(
    restartable: Restartable, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, gate, first, request_id = await prepare(restartable, tmp_path, tiny_model_dir)
    async with running(first) as (stop, task):
        await gate.wait_started()
        await restartable.stop()
        gate.release.set()
        await until(lambda: first.jobs_done == 1, what="the job to finish")
        stop.set()
        assert await task == EXIT_OK  # gives up after shutdown_grace, keeping the result
    assert len(first.spool) == 1

    await restartable.start()
    second = NodeDaemon(first.config, console=RecordingConsole())
    async with running(second):
        await until(lambda: second.stats.jobs_submitted == 1, what="the replayed submit")
        status = await finished(api, request_id)
    assert "spool_replay" in second.console.kinds()  # type: ignore[attr-defined]
    assert second.jobs_done == 0  # delivered from disk, not made again
    assert status["generations"][0]["state"] == "ok"
    assert len(second.spool) == 0
