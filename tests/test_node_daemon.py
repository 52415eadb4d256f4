"""The real node against a real coordinator on loopback, running the tiny pipeline at 64×64."""

import asyncio
import base64
import json
import os
from pathlib import Path

import aiohttp
import pytest
import torch

from node.daemon import EXIT_FORCED, EXIT_OK, NodeDaemon
from node.jobspec import InferenceFailed
from protocol.keys import Identity, PublicKey
from protocol.provenance import JobDocument, ResultDocument, sha256_hex, verify_provenance
from tests.conftest import RunningCoordinator
from tests.helpers import Api, tiny_webp
from tests.node_support import (
    Gate,
    RecordingConsole,
    finished,
    node_config,
    record_uploads,
    request_images,
    running,
    until,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


async def fetch_image(img: str) -> bytes:
    if not img.startswith("http"):
        return base64.b64decode(img)
    async with aiohttp.ClientSession() as session, session.get(img) as response:
        assert response.status == 200
        return await response.read()


async def setup(coordinator: RunningCoordinator) -> tuple[Api, str]:
    requester = await coordinator.create_account("requester", kudos=1000)
    owner = await coordinator.create_account("owner")
    return Api(coordinator.url, apikey=requester.apikey), owner.apikey


async def test_txt2img_end_to_end_with_verifiable_provenance(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, apikey = await setup(coordinator)
    config = node_config(
        tmp_path, coordinator.url, apikey, tiny_model_dir, coordinator_public_key=coordinator.public_key.text()
    )
    console = RecordingConsole()
    daemon = NodeDaemon(config, console=console)
    async with running(daemon) as (stop, task):
        status = await finished(api, await request_images(api))
        await until(lambda: daemon.stats.jobs_submitted == 1, what="the submit")
        stop.set()
        assert await task == EXIT_OK

    [generation] = status["generations"]
    assert generation["state"] == "ok" and generation["worker_name"] == "node-1"
    assert generation["worker_key"] == daemon.identity.public_key.text()
    image = await fetch_image(generation["img"])
    assert image[:4] == b"RIFF" and image[8:12] == b"WEBP"
    result = ResultDocument(
        job_id=generation["id"], image_sha256=generation["image_sha256"], seed=generation["seed"], state="ok"
    )
    problems = verify_provenance(
        image,
        JobDocument.model_validate(generation["job"]),
        generation["job_signature"],
        coordinator.public_key,
        result,
        generation["signature"],
        PublicKey.from_text(generation["worker_key"]),
    )
    assert problems == []
    assert (daemon.jobs_done, daemon.jobs_faulted) == (1, 0)
    assert daemon.kudos_earned > 0
    assert len(daemon.spool) == 0
    # --log-format json: every line is one JSON object; the operator sees the model load, job and kudos.
    records = [json.loads(line) for line in console.lines()]
    kinds = [record["event"] for record in records]
    for kind in ("coordinator", "model_loading", "models_ready", "job_started", "job_done", "submitted", "stopped"):
        assert kind in kinds, kind
    ready = next(record for record in records if record["event"] == "models_ready")
    # On the CPU the node leaves a core to its own work (node.devices.torch_threads).
    assert ready["threads"] == torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)) - 1)
    started = next(record for record in records if record["event"] == "job_started")
    assert (started["model"], started["width"], started["steps"]) == ("tiny-sd", 64, 3)


async def test_images_go_inline_to_the_coordinators_own_upload_url(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pop offers the coordinator's own r2_upload URL (for AI Horde workers); our node saves
    the round trip and submits the image inline."""
    uploads = record_uploads(monkeypatch)
    api, apikey = await setup(coordinator)
    daemon = NodeDaemon(node_config(tmp_path, coordinator.url, apikey, tiny_model_dir), console=RecordingConsole())
    async with running(daemon):
        status = await finished(api, await request_images(api))
    [generation] = status["generations"]
    assert generation["state"] == "ok" and generation["image_sha256"]
    assert uploads == []
    assert sha256_hex(await fetch_image(generation["img"])) == generation["image_sha256"]


async def test_a_batch_of_four_gives_four_distinct_images(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, apikey = await setup(coordinator)
    config = node_config(tmp_path, coordinator.url, apikey, tiny_model_dir, queue_size=2)
    daemon = NodeDaemon(config, console=RecordingConsole())
    async with running(daemon):
        status = await finished(api, await request_images(api, n=4, steps=2), timeout=60)
    generations = status["generations"]
    assert len(generations) == 4 and {g["state"] for g in generations} == {"ok"}
    assert len({g["seed"] for g in generations}) == 4
    assert len({g["image_sha256"] for g in generations}) == 4


async def test_stop_finishes_the_job_in_hand(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, apikey = await setup(coordinator)
    gate = Gate()
    daemon = NodeDaemon(
        node_config(tmp_path, coordinator.url, apikey, tiny_model_dir),
        console=RecordingConsole(),
        generator_factory=gate.factory(),
    )
    request_id = await request_images(api)
    async with running(daemon) as (stop, task):
        await gate.wait_started()
        stop.set()  # as on the first SIGTERM
        await asyncio.sleep(0.3)
        assert not task.done()
        gate.release.set()
        assert await task == EXIT_OK
    assert (daemon.jobs_done, daemon.stats.jobs_submitted) == (1, 1)
    status = (await api.get(f"/v2/generate/status/{request_id}")).body
    assert status["done"] and status["generations"][0]["state"] == "ok"


async def test_second_stop_gives_unfinished_jobs_back_as_faulted(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, apikey = await setup(coordinator)
    gate = Gate()
    daemon = NodeDaemon(
        node_config(tmp_path, coordinator.url, apikey, tiny_model_dir),
        console=RecordingConsole(),
        generator_factory=gate.factory(),
    )
    await request_images(api)
    stop, hard_stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(daemon.run_until(stop, hard_stop))
    try:
        await gate.wait_started()
        stop.set()
        hard_stop.set()  # the second signal
        assert await asyncio.wait_for(task, 10) == EXIT_FORCED
    finally:
        gate.release.set()
    assert (daemon.jobs_done, daemon.jobs_faulted, daemon.stats.jobs_submitted) == (0, 1, 1)
    assert len(daemon.spool) == 0


async def test_a_job_with_a_forged_coordinator_signature_is_refused(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, apikey = await setup(coordinator)
    impostor = Identity.generate().public_key.text()  # the node trusts a different coordinator key
    console = RecordingConsole()
    daemon = NodeDaemon(
        node_config(tmp_path, coordinator.url, apikey, tiny_model_dir, coordinator_public_key=impostor), console=console
    )
    async with running(daemon):
        await request_images(api)
        await until(lambda: daemon.stats.jobs_refused >= 1 and daemon.stats.jobs_submitted >= 1, what="a refusal")
    assert daemon.jobs_done == 0
    assert "key_mismatch" in console.kinds()
    refused = [fields for kind, fields in console.events if kind == "job_refused"]
    assert "does not verify" in refused[0]["reason"]


async def test_two_nodes_each_get_only_their_models_jobs(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, apikey = await setup(coordinator)
    nodes: dict[str, NodeDaemon] = {}
    for model in ("tiny-a", "tiny-b"):
        config = node_config(
            tmp_path / model, coordinator.url, apikey, tiny_model_dir, name=f"node-{model}", models=[model]
        )
        nodes[model] = NodeDaemon(config, console=RecordingConsole())
    async with running(nodes["tiny-a"]):
        # One at a time: diffusers cannot load two pipelines in one process concurrently.
        await until(lambda: bool(nodes["tiny-a"].ready_models), what="node a's model")
        async with running(nodes["tiny-b"]):
            await until(lambda: bool(nodes["tiny-b"].ready_models), what="node b's model")
            requests = {model: await request_images(api, model=model, n=2, steps=2) for model in nodes}
            for model, request_id in requests.items():
                status = await finished(api, request_id, timeout=60)
                served = {(g["model"], g["worker_name"], g["state"]) for g in status["generations"]}
                assert served == {(model, f"node-{model}", "ok")}
    assert nodes["tiny-a"].jobs_done == nodes["tiny-b"].jobs_done == 2


async def test_apikey_only_mode_completes_a_job(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, apikey = await setup(coordinator)
    daemon = NodeDaemon(
        node_config(tmp_path, coordinator.url, apikey, tiny_model_dir, key_file=""), console=RecordingConsole()
    )
    assert daemon.identity is None
    async with running(daemon):
        status = await finished(api, await request_images(api))
    [generation] = status["generations"]
    assert generation["state"] == "ok" and not generation.get("signature")
    assert not (tmp_path / "node.key").exists()


async def test_repeated_faults_pause_popping(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    class Broken:
        def run(self, job, on_step=None, should_abort=None):
            raise InferenceFailed("CUDA out of memory (simulated)")

    api, apikey = await setup(coordinator)
    console = RecordingConsole()
    config = node_config(tmp_path, coordinator.url, apikey, tiny_model_dir, max_consecutive_faults=2, fault_pause=60)
    daemon = NodeDaemon(config, console=console, generator_factory=lambda cache: Broken())
    async with running(daemon):
        await request_images(api, n=2)
        await until(lambda: "paused" in console.kinds(), what="the fault pause")
        await until(lambda: daemon.stats.jobs_submitted >= 2, what="the faulted submits")
    paused = next(fields for kind, fields in console.events if kind == "paused")
    assert paused["reason"] == "2 faults in a row"
    faults = [fields["reason"] for kind, fields in console.events if kind == "job_faulted"]
    assert faults[:2] == ["CUDA out of memory (simulated)"] * 2


async def test_img2img_uses_the_signed_source_image(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api, apikey = await setup(coordinator)
    console = RecordingConsole()
    daemon = NodeDaemon(
        node_config(
            tmp_path, coordinator.url, apikey, tiny_model_dir, coordinator_public_key=coordinator.public_key.text()
        ),
        console=console,
    )
    source = base64.b64encode(tiny_webp((20, 200, 20))).decode()
    body = {
        "prompt": "a green field",
        "models": ["tiny-sd"],
        "source_image": source,
        "source_processing": "img2img",
        "params": {"width": 64, "height": 64, "steps": 4, "denoising_strength": 0.5},
    }
    accepted = await api.post("/v2/generate/async", body)
    assert accepted.status == 202, accepted.body
    async with running(daemon):
        status = await finished(api, accepted.body["id"])
    [generation] = status["generations"]
    assert generation["state"] == "ok" and generation["job"]["source_image_sha256"]
    started = next(fields for kind, fields in console.events if kind == "job_started")
    assert started["processing"] == "img2img"
