"""Where images live: results, uploads and source images, each named by a random id.

`Images` is the one interface the broker uses. `ImageStore` (this module, the default) keeps
them as files in a folder; `objectstore.S3ImageStore` keeps them in an S3-compatible bucket,
for coordinators on several hosts, and can hand out presigned URLs so nodes and requesters
move image bytes straight to and from the bucket. `open_images` picks one from the config.

Folder files are written to a temporary name and renamed, so a crash never leaves a
half-written image under a name the database points to.
"""

import asyncio
import os
import secrets
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from coordinator.config import CoordinatorConfig
from coordinator.storage import StorageUnavailable


class Images(Protocol):
    async def open(self) -> "Images": ...

    async def close(self) -> None: ...

    def new_name(self, suffix: str = "webp") -> str: ...

    async def write(self, name: str, data: bytes) -> None: ...

    async def read(self, name: str) -> bytes | None:
        """The image's bytes, or None when there is none."""

    async def size(self, name: str) -> int | None:
        """Bytes in the image, or None when there is none (check an upload before reading it)."""

    async def exists(self, name: str) -> bool: ...

    async def delete(self, name: str | None) -> None:
        """Remove the image; a missing one (or None) is fine."""

    async def presigned_get(self, name: str, lifetime: float) -> str | None:
        """A URL anyone holding it may GET the image from for `lifetime` seconds; None when
        this store cannot make one (clients then get the coordinator's own URL)."""

    async def presigned_put(self, name: str, lifetime: float) -> str | None:
        """A URL a node may PUT the image to; None when this store cannot make one."""


def new_image_name(suffix: str = "webp") -> str:
    return f"{secrets.token_urlsafe(18)}.{suffix}"


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` → ("bucket", "some/prefix/")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


# A file name is at most 255 bytes (ext4, xfs, APFS); the temporary name a write uses adds 19 (`.NAME.<12 hex>.tmp`).
# Our own names are ~30 bytes (results, sources) or ~80 (uploads: job id and worker id).
MAX_NAME_BYTES = 200


def check_name(name: str) -> str:
    """Refuse names that could leave the folder (or the bucket's prefix), or that no file could have: a name
    past the file system's limit would raise OSError (ENAMETOOLONG) instead of reading as "no such image"."""
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"bad image name {name[:80]!r}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"image name longer than {MAX_NAME_BYTES} bytes")
    return name


INLINE_WRITE_BYTES = 256 * 1024


class ImageStore:
    """Images as files in one folder (shared storage, for replicas on one host)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    async def open(self) -> "ImageStore":
        return self

    async def close(self) -> None:
        return None

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    @staticmethod
    def new_name(suffix: str = "webp") -> str:
        return new_image_name(suffix)

    async def write(self, name: str, data: bytes) -> None:
        path = self.path(name)
        if len(data) <= INLINE_WRITE_BYTES:  # a thread hop would cost more than the write
            self._write_whole(path, data)
        else:
            await asyncio.to_thread(self._write_whole, path, data)

    @staticmethod
    def _write_whole(path: Path, data: bytes) -> None:
        """Write under a temporary name, then rename: a reader never sees half an image.

        No fsync: the database commits with synchronous=NORMAL, which survives a killed
        process but not a power cut, and the image needs no more than the row naming it.
        """
        # A temporary name of its own, so two writers of one name never rename each other's file away.
        # (os calls rather than pathlib's: this runs on the event loop for every result.)
        temporary = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            remaining = memoryview(data)
            while remaining:
                remaining = remaining[os.write(descriptor, remaining) :]
        finally:
            os.close(descriptor)
        os.replace(temporary, path)

    async def read(self, name: str) -> bytes | None:
        path = self.path(name)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    # Metadata calls are quick and run inline: no thread hop, and a delete in a cancelled task's
    # cleanup completes without waiting on anything.
    async def size(self, name: str) -> int | None:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            return None

    async def exists(self, name: str) -> bool:
        return self.path(name).exists()

    async def delete(self, name: str | None) -> None:
        if name:
            self.path(name).unlink(missing_ok=True)

    async def presigned_get(self, name: str, lifetime: float) -> str | None:
        return None

    async def presigned_put(self, name: str, lifetime: float) -> str | None:
        return None


async def open_images(config: CoordinatorConfig) -> Images:
    """The store the config names: a bucket (`s3://bucket/prefix`) or a folder."""
    if config.images_bucket:
        try:  # imported here: aiobotocore is the optional `s3` extra
            from coordinator.objectstore import S3ImageStore
        except ImportError as error:
            hint = "images on S3 need the s3 extra (pip install 'horde-network[s3]')"
            raise StorageUnavailable(f"{hint}: {error}") from error
        store: Images = S3ImageStore.from_url(
            config.images_bucket, endpoint_url=config.s3_endpoint_url, public_endpoint_url=config.s3_public_url
        )
    else:
        store = ImageStore(config.image_root)
    return await store.open()
