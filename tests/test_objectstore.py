"""The S3 image store against a real S3 API: moto's server on a loopback port."""

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiobotocore.session import get_session

from coordinator.objectstore import S3ImageStore, parse_s3_url
from coordinator.storage import StorageUnavailable
from tests.conftest import free_port
from tests.helpers import tiny_webp

CREDENTIALS = {"access_key": "test-key", "secret_key": "test-secret", "region": "us-east-1"}


@pytest.fixture
async def bucket(s3_endpoint: str) -> str:
    name = f"images-{free_port()}"
    async with get_session().create_client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    ) as client:
        await client.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def store(s3_endpoint: str, bucket: str) -> AsyncIterator[S3ImageStore]:
    opened = await S3ImageStore.from_url(f"s3://{bucket}/horde", endpoint_url=s3_endpoint, **CREDENTIALS).open()
    yield opened
    await opened.close()


def test_s3_urls_name_a_bucket_and_an_optional_prefix() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    for bad in ("bucket", "https://bucket/x", "s3:///x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


async def test_write_read_exists_delete(store: S3ImageStore) -> None:
    name, image = store.new_name(), tiny_webp()
    assert await store.read(name) is None and not await store.exists(name) and await store.size(name) is None
    await store.write(name, image)
    assert await store.read(name) == image and await store.exists(name)
    assert await store.size(name) == len(image)
    await store.write(name, b"replaced")
    assert await store.read(name) == b"replaced"
    await store.delete(name)
    await store.delete(name)  # already gone: fine
    await store.delete(None)
    assert await store.read(name) is None


async def test_names_that_could_escape_the_prefix_are_refused(store: S3ImageStore) -> None:
    for bad in ("", "../x.webp", "a/b.webp", ".hidden"):
        with pytest.raises(ValueError):
            await store.write(bad, b"x")
        with pytest.raises(ValueError):
            await store.read(bad)


async def test_prefixes_keep_coordinators_apart(s3_endpoint: str, bucket: str, store: S3ImageStore) -> None:
    other = await S3ImageStore(bucket, "other/", endpoint_url=s3_endpoint, **CREDENTIALS).open()
    try:
        await store.write("same.webp", b"ours")
        assert await other.read("same.webp") is None
    finally:
        await other.close()


async def test_presigned_urls_let_clients_upload_and_download_directly(store: S3ImageStore) -> None:
    name, image = store.new_name(), tiny_webp()
    async with aiohttp.ClientSession() as session:
        async with session.put(await store.presigned_put(name), data=image) as response:
            assert response.status == 200, await response.text()
        assert await store.read(name) == image  # the coordinator sees what the node uploaded
        async with session.get(await store.presigned_get(name)) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "image/webp"
            assert await response.read() == image
        forged = (await store.presigned_get(name)).replace(name, store.new_name())
        async with session.get(forged) as response:
            assert response.status == 403  # the signature covers the key


async def test_presigned_urls_can_use_a_public_address(s3_endpoint: str, bucket: str) -> None:
    public = "https://images.example.org"
    store = await S3ImageStore(bucket, endpoint_url=s3_endpoint, public_endpoint_url=public, **CREDENTIALS).open()
    try:
        assert (await store.presigned_get("a.webp")).startswith(f"{public}/{bucket}/a.webp?")
    finally:
        await store.close()


async def test_an_unreachable_store_is_storage_unavailable() -> None:
    store = await S3ImageStore(
        "bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", timeout=2, **CREDENTIALS
    ).open()
    try:
        with pytest.raises(StorageUnavailable):
            await store.write("a.webp", b"x")
        with pytest.raises(StorageUnavailable):
            await store.read("a.webp")
    finally:
        await store.close()


async def test_a_closed_store_is_storage_unavailable(store: S3ImageStore) -> None:
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.read("a.webp")
