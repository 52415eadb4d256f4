"""Images in an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Garage...), for
coordinators on several hosts that cannot share a folder.

The `images.Images` interface (results, uploads and source images, each an object named by
a random id), plus presigned URLs so nodes can upload results and fetch sources, and
requesters fetch images, straight from the bucket instead of through a coordinator.

A PUT is atomic on every S3-compatible store: an object is either absent or complete,
so, as with the folder store's rename, a name the database points to is never half-written.
"""

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable

from coordinator.images import check_name, new_image_name, parse_s3_url
from coordinator.storage import StorageUnavailable

CONTENT_TYPES = {"webp": "image/webp", "png": "image/png", "jpg": "image/jpeg"}
MISSING = ("404", "NoSuchKey", "NotFound")
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")


class S3ImageStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Credentials and region default to botocore's usual sources (AWS_* variables,
        ~/.aws). `public_endpoint_url` is the address clients use in presigned URLs when
        it differs from ours (a bucket we reach on a private network)."""
        self.bucket = bucket
        self.prefix = prefix
        self._region = region
        self._settings: dict[str, Any] = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
        self._endpoints = (endpoint_url, public_endpoint_url or endpoint_url)
        # Fail in seconds, not minutes, when the store is away: the request gets a 503.
        self._config = AioConfig(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            signature_version="s3v4",
        )
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._signer: Any = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "S3ImageStore":
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, **options)

    async def open(self) -> "S3ImageStore":
        session = get_session()
        # AWS_DEFAULT_REGION or ~/.aws when not given; us-east-1 suits MinIO, R2 and moto.
        self._settings["region_name"] = self._region or session.get_config_variable("region") or "us-east-1"
        internal, public = self._endpoints
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", endpoint_url=internal, config=self._config, **self._settings)
        )
        self._signer = self._client
        if public != internal:  # presigning is local; this client never opens a connection
            self._signer = await self._stack.enter_async_context(
                session.create_client("s3", endpoint_url=public, config=self._config, **self._settings)
            )
        return self

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = self._signer = None

    # --- the Images interface ----------------------------------------------------------------
    def key(self, name: str) -> str:
        """The object key for an image name; the same names are refused as in ImageStore."""
        return self.prefix + check_name(name)

    @staticmethod
    def new_name(suffix: str = "webp") -> str:
        return new_image_name(suffix)

    async def write(self, name: str, data: bytes) -> None:
        async with self._calls():
            await self._client.put_object(
                Bucket=self.bucket, Key=self.key(name), Body=data, ContentType=content_type(name)
            )

    async def read(self, name: str) -> bytes | None:
        key = self.key(name)
        async with self._calls():
            try:
                response = await self._client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as error:
                if _code(error) in MISSING:
                    return None
                raise
            async with response["Body"] as body:
                return await body.read()

    async def exists(self, name: str) -> bool:
        return await self.size(name) is not None

    async def size(self, name: str) -> int | None:
        """Bytes in the object, or None when there is none: check a node's presigned upload
        (S3 cannot cap its size) before reading it."""
        key = self.key(name)
        async with self._calls():
            try:
                head = await self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as error:
                if _code(error) in MISSING:
                    return None
                raise
        return int(head["ContentLength"])

    async def delete(self, name: str | None) -> None:
        if name:  # deleting a missing object succeeds on S3
            key = self.key(name)
            async with self._calls():
                await self._client.delete_object(Bucket=self.bucket, Key=key)

    # --- presigned URLs -----------------------------------------------------------------------
    async def presigned_get(self, name: str, lifetime: float = 3600) -> str:
        """A URL anyone holding it may GET the image from, for `lifetime` seconds. It names
        the content type, since an object a node uploaded may not carry one."""
        return await self._presign("get_object", name, lifetime, ResponseContentType=content_type(name))

    async def presigned_put(self, name: str, lifetime: float = 600) -> str:
        """A URL a node PUTs its result to (AI Horde's `r2_upload`). Neither the content type
        nor the size can be limited: the coordinator checks both when the node submits."""
        return await self._presign("put_object", name, lifetime)

    async def _presign(self, operation: str, name: str, lifetime: float, **extra: str) -> str:
        if self._signer is None:
            raise StorageUnavailable("the image store is closed")
        params = {"Bucket": self.bucket, "Key": self.key(name), **extra}
        expires = min(max(int(lifetime), 1), MAX_PRESIGN_SECONDS)
        return await self._signer.generate_presigned_url(operation, Params=params, ExpiresIn=expires)

    @contextlib.asynccontextmanager
    async def _calls(self) -> AsyncIterator[None]:
        """Network trouble means "try again later" (503), like a database outage."""
        if self._client is None:
            raise StorageUnavailable("the image store is closed")
        try:
            yield
        except (EndpointUnreachable, HTTPClientError, OSError) as error:
            raise StorageUnavailable(f"image store: {error}") from error
        except ClientError as error:
            if _code(error) in ("SlowDown", "ServiceUnavailable", "503", "500", "InternalError"):
                raise StorageUnavailable(f"image store: {error}") from error
            raise


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
