"""The files the coordinator serves by name (coordinator/gallery.py): a request's source to its node, a
result image to anyone with its URL, and never a node's upload, which nobody has checked until its submit."""

import aiohttp

from coordinator.results import upload_name
from tests.api_support import b64, generate, node, png, pop_job, requester, small
from tests.conftest import RunningCoordinator
from tests.helpers import tiny_webp


async def test_sources_and_results_are_served_and_uploads_never(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    request_id = await generate(requester(coordinator, alice), {**small(), "source_image": b64(png())})
    worker = node(coordinator, owner, "n1")
    popped = await pop_job(worker)
    job = popped.body["jobs"][0]["document"]
    upload = upload_name(job["job_id"], job["worker_id"])
    image = tiny_webp((10, 200, 30))
    async with aiohttp.ClientSession() as session:
        async with session.get(popped.body["source_image"]) as response:
            assert response.status == 200 and response.content_type == "application/octet-stream"
            assert (await response.read())[:4] == b"RIFF"  # re-encoded by the coordinator (WebP)
        async with session.put(popped.body["r2_upload"], data=image) as response:
            assert response.status == 200
        assert await coordinator.broker.services.images.exists(upload)  # there, but not for anyone to fetch
        async with session.get(f"{coordinator.url}/api/v2/images/{upload}") as response:
            assert response.status == 404 and (await response.json())["rc"] == "NotFound"
        submitted = await worker.submit(job["job_id"], job["payload"]["seed"], image)
        assert submitted.status == 200, submitted.body
        status = (await requester(coordinator, alice).get(f"/v2/generate/status/{request_id}")).body
        async with session.get(status["generations"][0]["img"]) as response:
            assert response.status == 200 and response.content_type == "image/webp"
            assert await response.read() == image
