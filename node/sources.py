"""A pop's source image and mask, from the URL or base64 in the pop to decoded pixels
(docs/security.md, "Images that reach volunteers").

The worker checks the coordinator's signature on every job before calling `load_sources`, so an
unsigned pop never makes the node connect anywhere. Then, for each source:

1. a URL is fetched only from the coordinator's own origin, or from a URL every job's signed document
   names (a bucket's presigned URL); with a coordinator that signs nothing (AI Horde), from its origin
   or over https;
2. the fetch follows no redirect and stops at MAX_SOURCE_BYTES or FETCH_SECONDS;
3. with signed jobs, the bytes must hash to what every document signs;
4. only PNG, JPEG or WebP within protocol/images.py's bounds is decoded, on a thread.

A failure is reported with a fixed reason and AI Horde's gen_metadata, `{type: source_image |
source_mask, value: download_failed | parse_failed}`, never with the fetched bytes: they came from a
host the node may not trust, and a fault reason travels back to the coordinator.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from PIL import Image
from yarl import URL

from node.coordinator_api import CoordinatorClient, DownloadFailed
from node.jobs import ImageJob, PopUnit, source_mismatch, source_url_signed
from protocol.images import MAX_SOURCE_BYTES, SourceImageError, open_source

FIELDS = ("source_image", "source_mask")
# The longest a source may take to arrive: the largest one at ~6 Mbit/s.
FETCH_SECONDS = 60.0
# A base64 source in the pop (AI Horde may inline one): the largest source's length, and a data: prefix.
INLINE_CHARS_MAX = (MAX_SOURCE_BYTES + 2) // 3 * 4 + 100


class SourceProblem(Exception):
    """A source the node will not use. `refused`: the coordinator's promises do not hold (reported
    loudly, as a refusal); otherwise the request's own problem. Neither counts against the node."""

    def __init__(self, field: str, value: str, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.field, self.value, self.reason, self.refused = field, value, reason, refused


async def load_sources(
    client: CoordinatorClient, unit: PopUnit, jobs: list[ImageJob], *, signed: bool
) -> tuple[Image.Image | None, Image.Image | None]:
    """The decoded source image and mask of `jobs` (the pop's jobs whose signatures checked out)."""
    decoded: list[Image.Image | None] = []
    for field, value in zip(FIELDS, (unit.source_image, unit.source_mask), strict=True):
        data = await _bytes_of(client, field, value, jobs, signed=signed) if value else None
        for job in jobs if signed else []:
            mismatch = source_mismatch(job, field, data)
            if mismatch:
                raise SourceProblem(field, "download_failed", mismatch, refused=True)
        decoded.append(await asyncio.to_thread(_decode, field, data) if data is not None else None)
    return decoded[0], decoded[1]


async def _bytes_of(client: CoordinatorClient, field: str, value: str, jobs: list[ImageJob], *, signed: bool) -> bytes:
    label = _label(field)
    if not value.startswith(("http://", "https://")):
        return _inline(field, value)
    if not client.is_own_url(value):
        if signed and not all(source_url_signed(job, field, value) for job in jobs):
            raise SourceProblem(
                field,
                "download_failed",
                f"the {label}'s URL is neither the coordinator's nor one it signed",
                refused=True,
            )
        if not signed and URL(value).scheme != "https":
            raise SourceProblem(
                field, "download_failed", f"the {label}'s URL is on another host over plain http", refused=True
            )
    try:
        return await client.download(value, max_bytes=MAX_SOURCE_BYTES, limit_s=FETCH_SECONDS)
    except DownloadFailed as failure:
        raise SourceProblem(field, "download_failed", f"could not fetch the {label}: {failure}") from None


def _inline(field: str, value: str) -> bytes:
    if len(value) > INLINE_CHARS_MAX:
        raise SourceProblem(field, "parse_failed", f"the inline {_label(field)} is over {MAX_SOURCE_BYTES} bytes")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SourceProblem(field, "parse_failed", f"the {_label(field)} is neither a URL nor base64") from None


def _decode(field: str, data: bytes) -> Image.Image:
    try:
        return open_source(data)
    except SourceImageError as error:
        raise SourceProblem(field, "parse_failed", f"the {_label(field)} {error}") from None


def _label(field: str) -> str:
    return field.replace("_", " ")
