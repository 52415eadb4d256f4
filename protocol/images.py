"""Source images: the formats and bounds a coordinator accepts and a node decodes, and the one way
both open them (docs/security.md, "Images that reach volunteers").

Pillow reads some forty formats, several through large C decoders or external programs (EPS runs
Ghostscript). A source image travels from any requester to volunteers' machines, so both ends decode
only three well-worn formats, and refuse on the header (format, dimensions) before any pixel is
decoded.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_SOURCE_PIXELS = 3072 * 3072  # AI Horde's bound on a source's resolution
MAX_SOURCE_SIDE = 8192  # keeps a 1-pixel-high strip of MAX_SOURCE_PIXELS out (and within WebP's 16383)
# The largest source a node fetches: MAX_SOURCE_PIXELS as 4-byte RGBA pixels that did not compress
# (the coordinator's lossless re-encoding of pure noise) is 36 MiB, plus room for the container.
MAX_SOURCE_BYTES = 40 * 1024 * 1024
_BOUNDS = f"at most {MAX_SOURCE_PIXELS} pixels and {MAX_SOURCE_SIDE} on a side"


class SourceImageError(ValueError):
    """Why bytes are not a source image we decode. `problem`: "size" (bytes), "dimensions" or "unreadable";
    the message completes "the source image …" and never quotes the bytes."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


def open_source(data: bytes) -> Image.Image:
    """The decoded image in `data`, which must be PNG, JPEG or WebP within the bounds above. The
    format is told by the three allowed plugins alone (no other decoder sees the bytes) and the
    dimensions are checked on the header, before any pixel is decoded."""
    if len(data) > MAX_SOURCE_BYTES:
        raise SourceImageError("size", f"is {len(data)} bytes, more than {MAX_SOURCE_BYTES}")
    try:
        image = Image.open(io.BytesIO(data), formats=SOURCE_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own header check, past ~179 M pixels
        raise SourceImageError("dimensions", f"declares over 179 million pixels; {_BOUNDS}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise SourceImageError("unreadable", "is not a readable PNG, JPEG or WebP image") from None
    width, height = image.size
    if width * height > MAX_SOURCE_PIXELS or max(width, height) > MAX_SOURCE_SIDE or not width or not height:
        raise SourceImageError("dimensions", f"is {width}x{height}; {_BOUNDS}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        raise SourceImageError("unreadable", "is a damaged PNG, JPEG or WebP image") from None
    return image
