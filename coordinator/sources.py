"""Decoding and checking images that arrive as base64: requesters' sources and nodes' results.

A node's upload may also be raw pixels, exactly the job's width × height × 3 (RGB) or × 4 (RGBA) bytes
(horde-sdk's own CI worker uploads `Image.tobytes()`): no decoder reads them, they are reshaped to the
job's size and stored as the coordinator's lossless WebP, so requesters always get an image file.

A requester's source image or mask reaches volunteers' machines, so the coordinator never passes the
requester's bytes on: it opens them under protocol/images.py's rules (PNG, JPEG or WebP, dimensions
bounded on the header) and stores its own lossless re-encoding, without EXIF, ICC or XMP. The job
document's source hash is the hash of that re-encoding.
"""

import base64
import binascii
import io
import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from coordinator.errors import bad_request
from protocol.errors import RC
from protocol.images import MAX_SOURCE_BYTES, MAX_SOURCE_PIXELS, SourceImageError, open_source

# Every decoder plugin loaded at start-up: Pillow otherwise imports them inside the first request that
# opens a WebP (~20 ms of one request). What each open accepts is still its `formats`.
Image.init()

# What a node may send back (AI Horde workers send WebP). Naming them spares Pillow trying each
# of its ~40 formats in turn, which was most of the cost of checking a result.
RESULT_FORMATS = ("WEBP", "PNG", "JPEG")
RAW_MODES = {3: "RGB", 4: "RGBA"}  # bytes per pixel of an upload of raw pixels
# Lossless WebP at its fastest effort: about PNG's size at its fastest level, encoded in a third of the
# time (measured: 3072² in 0.35 s against 0.45 s; method 4 halves the size of a photo but takes 2.2 s).
SOURCE_ENCODING: dict[str, Any] = {"format": "WEBP", "lossless": True, "quality": 0, "method": 0, "exact": True}
# Re-encoding a source at the bound takes about a second and ~150 MB, and the encoder holds the GIL
# for stretches of up to ~30 ms: one at a time, so a burst of large sources neither piles up memory
# nor takes the event loop's turn more than one encoder does (docs/security.md).
_REENCODING = threading.BoundedSemaphore(1)
ORIENTATION = 0x0112  # the EXIF tag
_SOURCE_RC = {
    "size": RC.SOURCE_IMAGE_SIZE_EXCEEDED,
    "dimensions": RC.SOURCE_IMAGE_RESOLUTION_EXCEEDED,
    "unreadable": RC.SOURCE_IMAGE_UNREADABLE,
}


@dataclass(frozen=True)
class Source:
    data: bytes  # the coordinator's own encoding: what nodes receive and the job document hashes
    alpha: bool


def read_source(text: str, field: str) -> Source:
    """A requester's base64 source as the coordinator re-encodes it, or a 400 naming the field.
    Blocking (a large source takes a second): call it off the event loop."""
    raw = _base64(text, field)
    with _REENCODING:
        try:
            image = open_source(raw)
        except SourceImageError as error:
            raise bad_request(_SOURCE_RC[error.problem], f"{field} {error}.", {field: error.problem}) from None
        try:
            source = _reencode(image)
        except (OSError, ValueError):  # a pixel mode Pillow cannot convert: ours to refuse, not a 500
            raise bad_request(
                RC.SOURCE_IMAGE_UNREADABLE, f"{field} has pixels of a kind we cannot convert.", {field: "unreadable"}
            ) from None
    if len(source.data) > MAX_SOURCE_BYTES:  # never, by the bound's arithmetic; a node would refuse it
        raise bad_request(RC.SOURCE_IMAGE_SIZE_EXCEEDED, f"{field} is too large once re-encoded.", {field: "size"})
    return source


def _reencode(image: Image.Image) -> Source:
    try:  # the orientation a viewer shows (the tag itself is dropped below)
        if image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block costs only its orientation, not the request
        pass
    alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    pixels = image.convert("RGBA" if alpha else "RGB")
    pixels.info.clear()  # some of Pillow's encoders (PNG's) copy the ICC profile from here
    buffer = io.BytesIO()
    pixels.save(buffer, **SOURCE_ENCODING)
    return Source(buffer.getvalue(), alpha)


def _base64(data: str, field: str) -> bytes:
    if "," in data[:100] and data.startswith("data:"):
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(RC.SOURCE_IMAGE_UNREADABLE, f"{field} is not valid base64.", {field: "not base64"}) from error


def check_image(
    raw: bytes, field: str, rc: str = RC.IMAGE_VALIDATION_FAILED, formats: tuple[str, ...] | None = None
) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(raw), formats=formats) as image:
            size = image.size
            if size[0] * size[1] > MAX_SOURCE_PIXELS:
                raise bad_request(rc, f"{field} is too large ({size[0]}x{size[1]}).", {field: "too large"})
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise bad_request(rc, f"{field} is not a readable image.", {field: "unreadable image"}) from error
    return size


def raw_pixels_mode(data: bytes, size: tuple[int, int] | None) -> str | None:
    """`RGB` or `RGBA` when `data` is exactly `size`'s pixels of that mode and not an image file (a file
    whose length happens to match stays a file); None otherwise, and always when the size is unknown."""
    if size is None or size[0] * size[1] <= 0:
        return None
    channels, rest = divmod(len(data), size[0] * size[1])
    if rest or channels not in RAW_MODES:
        return None
    try:
        Image.open(io.BytesIO(data), formats=RESULT_FORMATS).close()  # reads the header only
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return RAW_MODES[channels]
    return None


def encode_pixels(data: bytes, mode: str, size: tuple[int, int]) -> bytes:
    """Raw pixels (`raw_pixels_mode`) as the coordinator's lossless WebP. Blocking: call it off the event loop;
    one at a time, as source re-encodings are."""
    with _REENCODING:
        buffer = io.BytesIO()
        Image.frombytes(mode, size, data).save(buffer, **SOURCE_ENCODING)
        return buffer.getvalue()
