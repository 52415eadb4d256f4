"""A node killed mid-job: its job goes to another node after the time limit, and only that node is paid."""

import asyncio
import os
import signal
import sys
from pathlib import Path

from node.config_file import write_config
from node.daemon import NodeDaemon
from tests.api_support import expire_job, fetch_one
from tests.conftest import RunningCoordinator
from tests.helpers import Api
from tests.node_support import RecordingConsole, finished, node_config, request_images, running, until


async def test_a_killed_nodes_job_is_reissued_and_paid_to_the_node_that_finishes_it(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    requester = await coordinator.create_account("requester", kudos=100)
    doomed_owner = await coordinator.create_account("doomed-owner")
    rescuer_owner = await coordinator.create_account("rescuer-owner")
    api = Api(coordinator.url, apikey=requester.apikey)
    # Enough steps that the job is still running when the node is killed.
    request_id = await request_images(api, steps=400)

    config = node_config(tmp_path / "doomed", coordinator.url, doomed_owner.apikey, tiny_model_dir, name="doomed")
    write_config(config, tmp_path / "doomed" / "config.toml")
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        "run",
        "--config",
        str(tmp_path / "doomed" / "config.toml"),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        job = await _assigned_job(coordinator, request_id, timeout=120)
        assert job["worker_id"] is not None
    finally:
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()

    await expire_job(coordinator, job["id"])  # its time limit passes; upkeep hands it out again
    rescuer = NodeDaemon(
        node_config(tmp_path / "rescuer", coordinator.url, rescuer_owner.apikey, tiny_model_dir, name="rescuer"),
        console=RecordingConsole(),
    )
    await _shorten_steps(coordinator, request_id)
    async with running(rescuer):
        status = await finished(api, request_id, timeout=90)
        await until(lambda: rescuer.jobs_done == 1, what="the rescuer's delivery")
    [generation] = status["generations"]
    assert generation["worker_name"] == "rescuer"
    assert (await coordinator.account(rescuer_owner.id)).kudos > 0
    assert (await coordinator.account(doomed_owner.id)).kudos == 0
    assert (await coordinator.broker.bank.audit()).ok


async def _assigned_job(coordinator: RunningCoordinator, request_id: str, timeout: float) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await fetch_one(
            coordinator, "SELECT id, worker_id FROM jobs WHERE request_id = ? AND state = ?", request_id, "processing"
        )
        if row:
            await asyncio.sleep(0.5)  # well into its 400 steps
            return row
        assert asyncio.get_running_loop().time() < deadline, "the node never took the job"
        await asyncio.sleep(0.1)


async def _shorten_steps(coordinator: RunningCoordinator, request_id: str) -> None:
    """The rescuer need not run 400 steps: the test is about who gets the job, not the image."""
    async with coordinator.broker.services.database.transaction() as tx:
        request = await tx.get_request(request_id)
        assert request is not None
        request.body["params"]["steps"] = 3
        await tx.update_request(request)
