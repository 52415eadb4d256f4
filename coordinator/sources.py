"""Decoding and checking images that arrive as base64: requesters' sources and nodes' results."""

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from coordinator.errors import bad_request
from protocol.errors import RC

MAX_SOURCE_PIXELS = 3072 * 3072
# What a node may send back (AI Horde workers send WebP). Naming them spares Pillow trying each
# of its ~40 formats in turn, which was most of the cost of checking a result.
RESULT_FORMATS = ("WEBP", "PNG", "JPEG")


def decode_base64_image(data: str, field: str, rc: str = RC.SOURCE_IMAGE_UNREADABLE) -> bytes:
    """The bytes of a base64 image that Pillow can open, or a 400 naming the field."""
    if "," in data[:100] and data.startswith("data:"):
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(rc, f"{field} is not valid base64.", {field: "not base64"}) from error
    check_image(raw, field, rc)
    return raw


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


def has_alpha(raw: bytes) -> bool:
    with Image.open(io.BytesIO(raw)) as image:
        return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
