"""Whether two nodes made the same image: the comparison behind spot checks (docs/security.md, "Verified work").

Same model, sampler, seed and steps give the same pixels on one kind of hardware, and nearly the same
across devices and precisions. So two images agree when their decoded pixels are identical and both nodes
are of one declared, deterministic hardware class; otherwise when their 16×16 greyscale versions differ by
at most `max_distance` on average (out of 255). 16×16 keeps the composition and drops the high-frequency
noise that float rounding moves. Calibrated on the tiny pipeline (bench/verify.py): float32 against
bfloat16, and 1 against 2 CPU threads, differ by < 0.5; another seed by > 12; a quarter of the steps by > 5.

Pure functions on image bytes (Pillow and numpy); the coordinator calls them on a thread.
"""

import hashlib
import io
from dataclasses import dataclass
from typing import cast

import numpy as np
from PIL import Image

SIDE = 16


@dataclass(frozen=True)
class Fingerprint:
    pixels_sha256: str  # of the decoded RGB pixels, so two encodings of one image are one image
    size: tuple[int, int]
    small: np.ndarray  # SIDE × SIDE greyscale, float32
    flat: bool = False  # one colour throughout (what a broken model gives for any job)


def fingerprint(data: bytes) -> Fingerprint:
    with Image.open(io.BytesIO(data)) as opened:
        rgb = opened.convert("RGB")
    digest = hashlib.sha256(rgb.tobytes()).hexdigest()
    small = np.asarray(rgb.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR), dtype=np.float32)
    bands = cast("tuple[tuple[int, int], ...]", rgb.getextrema())  # per band, for an RGB image
    flat = all(low == high for low, high in bands)
    return Fingerprint(digest, rgb.size, small, flat)


def distance(a: Fingerprint, b: Fingerprint) -> float:
    """Mean absolute difference of the 16×16 greyscale versions, 0 (same) to 255; inf for other sizes."""
    if a.size != b.size:
        return float("inf")
    return float(np.abs(a.small - b.small).mean())


def deterministic_class(hardware: str) -> bool:
    """A declared hardware class whose images repeat bit for bit (the node says so with `deterministic`)."""
    return "deterministic" in hardware.split("/")


def agree(a: Fingerprint, b: Fingerprint, class_a: str, class_b: str, max_distance: float) -> bool:
    """Whether two images of one job agree, given the nodes' declared hardware classes."""
    if a.pixels_sha256 == b.pixels_sha256:
        return True
    if class_a and class_a == class_b and deterministic_class(class_a):
        return False  # one deterministic class: anything but the same pixels is another image
    return distance(a, b) <= max_distance
