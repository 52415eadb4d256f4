"""The images bench/abuse.py's attackers send: right-sized solid answers, incompressible noise, and poison
sources (exotic formats, a PNG whose header lies about its size, a truncated one)."""

import io
import os
import struct
import zlib
from typing import Any

from PIL import Image


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def solid_webp(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), (30, 90, 160)), "WEBP")


def noise_webp(size: int) -> bytes:
    return encode(Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)), "WEBP", lossless=True)


def png_claiming(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose header claims `width`×`height`: a decoder that trusts it allocates
    width × height × 3 bytes before it finds the data is short."""
    real = bytearray(encode(Image.new("RGB", (8, 8)), "PNG"))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(real[24:29])
    real[12:29] = header
    real[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(real)


def poison_sources() -> dict[str, bytes]:
    picture = Image.new("RGB", (64, 64), (120, 40, 40))
    sources = {fmt: encode(picture, fmt) for fmt in ("EPS", "TIFF", "PCX", "SGI", "BMP", "GIF", "TGA")}
    sources["PNG 60000x60000"] = png_claiming(60000, 60000)
    sources["PNG truncated"] = encode(picture, "PNG")[:-40]
    return sources
