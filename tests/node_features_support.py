"""Shared pieces of the node-feature tests (tests/test_node_features_*.py): a small job for the tiny
pipeline, and the pixels of an image as a status answer gives it (URL or inline base64)."""

import base64
import io

import aiohttp
import numpy as np
import torch
from PIL import Image

from node.jobspec import JobSpec

CPU = torch.device("cpu")


def tiny_job(**overrides: object) -> JobSpec:
    """A job the tiny model runs in milliseconds: 64×64, 2 steps, one seed; `overrides` change any field."""
    values: dict[str, object] = {
        "model": "tiny-sd",
        "prompt": "a red cat",
        "negative_prompt": None,
        "width": 64,
        "height": 64,
        "steps": 2,
        "cfg_scale": 7.0,
        "seeds": [7],
        **overrides,
    }
    return JobSpec(**values)  # type: ignore[arg-type]


async def fetch_pixels(img: str) -> np.ndarray:
    """An image of a status answer (its URL, or inline base64) as float RGB pixels."""
    if img.startswith("http"):
        async with aiohttp.ClientSession() as session, session.get(img) as response:
            data = await response.read()
    else:
        data = base64.b64decode(img)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
