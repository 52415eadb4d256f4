"""Turning `horde generate` flags into a validated `GenerationRequest`, with flag-named error messages."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from client.errors import UserError
from protocol.generation import GenerationRequest, LoraEntry

_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
# Which flag a request field comes from, so a validation error names what the user typed.
FLAG_OF_FIELD = {
    "prompt": "PROMPT",
    "width": "--size",
    "height": "--size",
    "steps": "--steps",
    "n": "-n",
    "cfg_scale": "--cfg",
    "denoising_strength": "--strength",
    "seed": "--seed",
    "sampler_name": "--sampler",
    "loras": "--lora",
    "models": "--model",
}


@dataclass
class GenerateOptions:
    """The flags of `horde generate` that shape the request (not how to wait or save)."""

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    steps: int | None = None
    sampler: str | None = None
    cfg: float | None = None
    seed: str | None = None
    negative: str | None = None
    source_image: Path | None = None
    strength: float | None = None
    mask: Path | None = None
    loras: list[str] = field(default_factory=list)
    nsfw: bool = False


def parse_size(text: str) -> tuple[int, int]:
    found = _SIZE.match(text)
    if not found:
        raise UserError(f"--size must look like WIDTHxHEIGHT, e.g. 512x512, not {text!r}")
    return int(found.group(1)), int(found.group(2))


def parse_lora(text: str) -> LoraEntry:
    """`NAME` or `NAME:STRENGTH`; a name may itself hold colons, so only a numeric tail is a strength."""
    head, colon, tail = text.rpartition(":")
    name, strength = (head, float(tail)) if colon and _is_number(tail) else (text, 1.0)
    if not name.strip():
        raise UserError(f"--lora needs a name, e.g. --lora mylora:0.8, not {text!r}")
    try:
        return LoraEntry(name=name.strip(), model=strength)
    except ValidationError:
        raise UserError(f"--lora strength must be between -5 and 5, not {tail}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def encode_image(path: Path, flag: str) -> str:
    """The file as base64 WebP (lossless, so the source is not degraded before the node sees it)."""
    try:
        with Image.open(path) as image:
            image.load()
            out = io.BytesIO()
            image.save(out, format="WEBP", lossless=True)
    except FileNotFoundError:
        raise UserError(f"{flag}: no such file: {path}") from None
    except UnidentifiedImageError:
        raise UserError(f"{flag}: {path} is not an image Pillow can read") from None
    except OSError as exc:
        raise UserError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    return base64.b64encode(out.getvalue()).decode("ascii")


def build_request(options: GenerateOptions) -> GenerationRequest:
    if options.strength is not None and options.source_image is None:
        raise UserError("--strength only applies with --source-image")
    if options.mask is not None and options.source_image is None:
        raise UserError("--mask only applies with --source-image")
    body: dict[str, object] = {"prompt": _prompt(options), "params": _params(options), "nsfw": options.nsfw}
    if options.model:
        body["models"] = [options.model]
    if options.source_image is not None:
        body["source_image"] = encode_image(options.source_image, "--source-image")
        body["source_processing"] = "img2img"
    if options.mask is not None:
        body["source_mask"] = encode_image(options.mask, "--mask")
        body["source_processing"] = "inpainting"
    try:
        return GenerationRequest.model_validate(body)
    except ValidationError as exc:
        raise UserError(explain(exc)) from None


def _prompt(options: GenerateOptions) -> str:
    # AI Horde carries the negative prompt after "###" in the one prompt field.
    if options.negative:
        return f"{options.prompt} ### {options.negative}"
    return options.prompt


def _params(options: GenerateOptions) -> dict[str, object]:
    params: dict[str, object] = {
        "n": options.n,
        "steps": options.steps,
        "sampler_name": options.sampler,
        "cfg_scale": options.cfg,
        "seed": options.seed,
        "denoising_strength": options.strength,
    }
    if options.size:
        params["width"], params["height"] = parse_size(options.size)
    if options.loras:
        params["loras"] = [parse_lora(text).model_dump() for text in options.loras]
    return {key: value for key, value in params.items() if value is not None}


def explain(exc: ValidationError) -> str:
    """The first validation problem, named by the flag that caused it."""
    first = exc.errors()[0]
    names = [str(part) for part in first["loc"]]
    flag = next((FLAG_OF_FIELD[name] for name in reversed(names) if name in FLAG_OF_FIELD), ".".join(names))
    return f"{flag}: {first['msg']}"
