"""Saving delivered images next to a JSON sidecar that holds everything needed to verify them offline.

The node signs the exact bytes it uploaded (WebP). Those bytes are what we save by default; with
`--format png` the PNG is saved for use and the signed WebP is kept beside it, and verification
checks that the PNG holds the same pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from client.errors import UserError
from protocol.generation import Generation
from protocol.provenance import ResultDocument, sha256_hex

SIDECAR_FORMAT = "horde-network-sidecar/1"
ImageFormat = Literal["webp", "png"]
# Inputs that would bloat every sidecar; they are recorded by hash instead.
BULKY_REQUEST_FIELDS = ("source_image", "source_mask")


@dataclass(frozen=True)
class CoordinatorRecord:
    url: str
    public_key: str | None


@dataclass(frozen=True)
class SavedImage:
    image: Path
    sidecar: Path
    signed_original: Path | None
    generation: Generation

    def summary(self) -> dict[str, Any]:
        return {
            "file": str(self.image),
            "sidecar": str(self.sidecar),
            "signed_original": str(self.signed_original) if self.signed_original else None,
            "id": self.generation.id,
            "seed": self.generation.seed,
            "model": self.generation.model,
            "worker_id": self.generation.worker_id,
            "worker_name": self.generation.worker_name,
            "state": self.generation.state,
        }


def request_record(request: dict[str, Any]) -> dict[str, Any]:
    """The request as sent, with base64 inputs replaced by the SHA-256 of their bytes, the form in which
    the signed job document names them."""
    record = dict(request)
    for name in BULKY_REQUEST_FIELDS:
        value = record.pop(name, None)
        if isinstance(value, str):
            record[f"{name}_sha256"] = sha256_hex(_decoded(value))
    return record


def _decoded(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text.encode("utf-8", errors="replace")


def result_document(generation: Generation, image: bytes) -> ResultDocument:
    """The document the node signed, rebuilt from what the coordinator relays."""
    return ResultDocument(
        job_id=generation.id,
        image_sha256=generation.image_sha256 or sha256_hex(image),
        seed=generation.seed,
        state=generation.state,
    )


def sidecar_document(
    generation: Generation,
    image: bytes,
    *,
    request_id: str,
    request: dict[str, Any] | None,
    coordinator: CoordinatorRecord,
    saved_file: Path,
    signed_file: Path,
) -> dict[str, Any]:
    saved_bytes_sha = sha256_hex(saved_file.read_bytes()) if saved_file != signed_file else sha256_hex(image)
    return {
        "format": SIDECAR_FORMAT,
        "saved_at": int(time.time()),
        "file": saved_file.name,
        "file_sha256": saved_bytes_sha,
        "signed_file": signed_file.name,
        "image_sha256": sha256_hex(image),
        "request_id": request_id,
        "generation_id": generation.id,
        "seed": generation.seed,
        "model": generation.model,
        "state": generation.state,
        "censored": generation.censored,
        "request": request_record(request) if request is not None else None,
        "node": {
            "worker_id": generation.worker_id,
            "worker_name": generation.worker_name,
            "public_key": generation.worker_key,
        },
        "job": {"document": generation.job, "signature": generation.job_signature},
        "result": {
            "document": result_document(generation, image).model_dump(mode="json"),
            "signature": generation.signature,
        },
        "coordinator": {"url": coordinator.url, "public_key": coordinator.public_key},
        "gen_metadata": [entry.model_dump(mode="json") for entry in generation.gen_metadata],
    }


def save_generation(
    out_dir: Path,
    stem: str,
    generation: Generation,
    image: bytes,
    *,
    fmt: ImageFormat,
    request_id: str,
    request: dict[str, Any] | None,
    coordinator: CoordinatorRecord,
) -> SavedImage:
    """Write the image (and the signed original, for PNG) and its sidecar `<stem>.json`."""
    ensure_folder(out_dir)
    signed = out_dir / f"{stem}.{signed_extension(image)}"
    _write(signed, image)
    saved, original = signed, None
    if fmt == "png" and signed.suffix != ".png":
        saved, original = out_dir / f"{stem}.png", signed
        _write(saved, to_png(image))
    sidecar = out_dir / f"{stem}.json"
    document = sidecar_document(
        generation,
        image,
        request_id=request_id,
        request=request,
        coordinator=coordinator,
        saved_file=saved,
        signed_file=signed,
    )
    _write(sidecar, (json.dumps(document, indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return SavedImage(image=saved, sidecar=sidecar, signed_original=original, generation=generation)


def signed_extension(image: bytes) -> str:
    """The file extension the delivered bytes really have (nodes send WebP, but trust the bytes)."""
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "webp"
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if image[:3] == b"\xff\xd8\xff":
        return "jpg"
    return "bin"


def to_png(image: bytes) -> bytes:
    with Image.open(io.BytesIO(image)) as decoded:
        out = io.BytesIO()
        decoded.save(out, format="PNG")
        return out.getvalue()


def ensure_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None


def _write(path: Path, data: bytes) -> None:
    # Write then rename, so an interrupted save never leaves a truncated image behind a sidecar.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
