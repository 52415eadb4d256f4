"""A real coordinator keeping its images in S3 (moto's server on a loopback port): nodes upload
to presigned PUT URLs and fetch sources from presigned GET URLs, requesters fetch results from
presigned GET URLs, and pruning deletes the objects. On both engines, like the API tests."""

import io
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import get_session
from PIL import Image

from coordinator.results import upload_name
from node.daemon import NodeDaemon
from protocol.provenance import sha256_hex
from tests.api_support import b64, expire_job, generate, node, png, pop_job, requester, seed_of, small
from tests.conftest import RunningCoordinator, coordinator_config, free_port, start_coordinator
from tests.helpers import tiny_webp
from tests.node_support import RecordingConsole, finished, node_config, record_uploads, request_images, running

PREFIX = "horde"
# The standard variables: the coordinator has no S3 credential settings of its own.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
async def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    name = f"images-{free_port()}"
    async with s3_client(s3_endpoint) as client:
        await client.create_bucket(Bucket=name)
    return name


def s3_client(endpoint: str) -> Any:
    return get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


async def objects(endpoint: str, bucket: str) -> list[str]:
    async with s3_client(endpoint) as client:
        listed = await client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


async def read_object(endpoint: str, bucket: str, key: str) -> bytes:
    async with s3_client(endpoint) as client:
        answer = await client.get_object(Bucket=bucket, Key=key)
        async with answer["Body"] as body:
            return bytes(await body.read())


@pytest.fixture
async def s3_coordinator(
    tmp_path: Path, database_url: str | None, s3_endpoint: str, bucket: str
) -> AsyncIterator[RunningCoordinator]:
    config = replace(
        coordinator_config(tmp_path / "coordinator", database_url),
        images_bucket=f"s3://{bucket}/{PREFIX}",
        s3_endpoint_url=s3_endpoint,
        max_body_bytes=256 * 1024,
    )
    running = await start_coordinator(config)
    try:
        yield running
    finally:
        await running.stop()


async def get_bytes(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def put_bytes(url: str, data: bytes) -> int:
    async with aiohttp.ClientSession() as session, session.put(url, data=data) as response:
        return response.status


def presigned_for(url: str, endpoint: str, bucket: str, name: str) -> bool:
    return url.startswith(f"{endpoint}/{bucket}/{PREFIX}/{name}?") and "X-Amz-Signature=" in url


async def test_results_go_through_presigned_urls(
    s3_coordinator: RunningCoordinator, s3_endpoint: str, bucket: str
) -> None:
    alice = await s3_coordinator.create_account("alice", kudos=100)
    api = requester(s3_coordinator, alice)
    request_id = await generate(api, small())
    owner = await s3_coordinator.create_account("owner")
    worker = node(s3_coordinator, owner, "n1")
    popped = await pop_job(worker)
    job_id, document = popped.body["ids"][0], popped.body["jobs"][0]["document"]
    upload = popped.body["r2_upload"]
    assert presigned_for(upload, s3_endpoint, bucket, upload_name(job_id, document["worker_id"])), upload
    image = tiny_webp((10, 200, 90))  # the job's 64×64: another size is refused (ImageSizeMismatch)
    submitted = await worker.submit(job_id, seed_of(popped), image=image, upload_url=upload)
    assert submitted.status == 200 and submitted.body["reward"] > 0, submitted.body

    [generation] = (await api.get(f"/v2/generate/status/{request_id}")).body["generations"]
    assert generation["image_sha256"] == sha256_hex(image)
    assert generation["img"].startswith(f"{s3_endpoint}/{bucket}/{PREFIX}/"), generation["img"]
    assert await get_bytes(generation["img"]) == (200, image)
    # The upload was consumed; only the result is left, and nothing was written to local disk.
    [result] = await objects(s3_endpoint, bucket)
    assert generation["img"].split("?", 1)[0].endswith(result)
    assert not (s3_coordinator.data_dir / "images").exists()
    # Our own image URL still works: it reads from the bucket.
    name = result.rsplit("/", 1)[1]
    assert await get_bytes(f"{s3_coordinator.api_url}v2/images/{name}") == (200, image)


@pytest.mark.usefixtures("one_torch_thread")
async def test_the_node_uploads_its_result_to_the_bucket(
    s3_coordinator: RunningCoordinator,
    s3_endpoint: str,
    bucket: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A presigned URL points at the bucket, not the coordinator: the real node PUTs the image there."""
    uploads = record_uploads(monkeypatch)
    api = requester(s3_coordinator, await s3_coordinator.create_account("alice", kudos=100))
    owner = await s3_coordinator.create_account("owner")
    daemon = NodeDaemon(
        node_config(tmp_path / "node", s3_coordinator.url, owner.apikey, tiny_model_dir), console=RecordingConsole()
    )
    async with running(daemon):
        status = await finished(api, await request_images(api))
    [generation] = status["generations"]
    [upload] = uploads
    assert upload.startswith(f"{s3_endpoint}/{bucket}/{PREFIX}/"), upload
    status_code, image = await get_bytes(generation["img"])
    assert status_code == 200 and sha256_hex(image) == generation["image_sha256"]
    [result] = await objects(s3_endpoint, bucket)  # the upload was consumed
    assert generation["img"].split("?", 1)[0].endswith(result)


async def test_img2img_source_is_fetched_from_the_bucket(
    s3_coordinator: RunningCoordinator, s3_endpoint: str, bucket: str
) -> None:
    alice = await s3_coordinator.create_account("alice", kudos=100)
    source = png(128)
    request_id = await generate(
        requester(s3_coordinator, alice), {**small(), "source_image": b64(source), "source_processing": "img2img"}
    )
    owner = await s3_coordinator.create_account("owner")
    worker = node(s3_coordinator, owner, "n1")
    popped = await pop_job(worker)
    url = popped.body["source_image"]
    assert url.startswith(f"{s3_endpoint}/{bucket}/{PREFIX}/") and "X-Amz-Signature=" in url, url
    status, fetched = await get_bytes(url)
    assert status == 200 and fetched != source  # the coordinator's own lossless re-encoding
    with Image.open(io.BytesIO(fetched)) as image, Image.open(io.BytesIO(source)) as original:
        assert image.convert("RGB").tobytes() == original.convert("RGB").tobytes()
    document = popped.body["jobs"][0]["document"]
    assert sha256_hex(fetched) == document["source_image_sha256"]
    assert document["source_image_url"] == url  # signed: a node fetches from another host only so
    assert (await worker.submit(popped.body["ids"][0], seed_of(popped))).status == 200
    status_body = (await requester(s3_coordinator, alice).get(f"/v2/generate/status/{request_id}")).body
    assert status_body["done"] is True


async def test_uploads_are_checked_at_submit(s3_coordinator: RunningCoordinator, s3_endpoint: str, bucket: str) -> None:
    """A presigned PUT takes anything: the submit measures and checks what arrived."""
    alice = await s3_coordinator.create_account("alice", kudos=100)
    await generate(requester(s3_coordinator, alice), small())
    owner = await s3_coordinator.create_account("owner")
    worker = node(s3_coordinator, owner, "n1", signed=False)
    popped = await pop_job(worker)
    job_id, upload = popped.body["ids"][0], popped.body["r2_upload"]
    r2 = {"id": job_id, "generation": "R2", "state": "ok", "seed": seed_of(popped)}
    assert (await worker.api.post("/v2/generate/submit", r2)).rc == "UploadMissing"
    assert await put_bytes(upload, os.urandom(300 * 1024)) == 200
    too_large = await worker.api.post("/v2/generate/submit", r2)
    assert (too_large.status, too_large.rc) == (413, "BodyTooLarge"), too_large.body
    assert await put_bytes(upload, b"not an image") == 200
    unreadable = await worker.api.post("/v2/generate/submit", r2)
    assert (unreadable.status, unreadable.rc) == (400, "ImageValidationFailed"), unreadable.body
    # Raw pixels of the job's size (horde-sdk's CI worker uploads `Image.tobytes()`): encoded at the submit.
    raw = Image.new("RGB", (64, 64), (1, 2, 3)).tobytes()
    assert await put_bytes(upload, raw[:-1]) == 200
    assert (await worker.api.post("/v2/generate/submit", r2)).rc == "ImageValidationFailed"
    assert await put_bytes(upload, raw) == 200
    assert (await worker.api.post("/v2/generate/submit", r2)).status == 200
    [result] = await objects(s3_endpoint, bucket)
    stored = Image.open(io.BytesIO(await read_object(s3_endpoint, bucket, result)))
    assert (stored.format, stored.size, stored.tobytes()) == ("WEBP", (64, 64), raw)


async def test_a_late_upload_misses_the_new_node_and_pruning_empties_the_bucket(
    s3_coordinator: RunningCoordinator, s3_endpoint: str, bucket: str
) -> None:
    owner = await s3_coordinator.create_account("owner")
    slow, quick = node(s3_coordinator, owner, "slow"), node(s3_coordinator, owner, "quick", signed=False)
    await quick.pop()
    alice = await s3_coordinator.create_account("alice", kudos=100)
    api = requester(s3_coordinator, alice)
    request_id = await generate(api, {**small(), "source_image": b64(png()), "source_processing": "img2img"})
    first = await pop_job(slow)
    job_id = first.body["ids"][0]
    await expire_job(s3_coordinator, job_id)
    await s3_coordinator.broker.upkeep.reissue_overdue()
    second = await pop_job(quick)
    assert second.body["ids"] == [job_id]
    good, stale = tiny_webp((250, 250, 250)), tiny_webp((0, 0, 0))
    assert await put_bytes(second.body["r2_upload"], good) == 200
    # The first node's presigned URL still works at the bucket, but names its own object.
    assert await put_bytes(first.body["r2_upload"], stale) == 200
    reply = await quick.api.post(
        "/v2/generate/submit", {"id": job_id, "generation": "R2", "state": "ok", "seed": seed_of(second)}
    )
    assert reply.status == 200, reply.body
    [generation] = (await api.get(f"/v2/generate/status/{request_id}")).body["generations"]
    assert await get_bytes(generation["img"]) == (200, good)
    assert len(await objects(s3_endpoint, bucket)) == 3  # the result, the source and the stale upload

    services = s3_coordinator.broker.services
    aged = services.clock() - 48 * 3600
    async with services.database.transaction() as tx:
        await tx.driver.execute("UPDATE requests SET updated = ? WHERE id = ?", (aged, request_id))
    assert await s3_coordinator.broker.upkeep.prune() == 1
    assert await objects(s3_endpoint, bucket) == []
    assert (await get_bytes(generation["img"]))[0] in (403, 404)  # S3 says 403 to who may not list the bucket
