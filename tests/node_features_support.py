"""Shared pieces of the node-feature tests (tests/test_node_features_*.py): a small job for the tiny
pipeline, a requester and a node's config for the end-to-end ones, and the pixels of an image as a status
answer gives it (URL or inline base64)."""

import base64
import io
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import torch
from PIL import Image

from node.config import NodeConfig
from node.jobspec import JobSpec
from tests.conftest import RunningCoordinator
from tests.helpers import Api
from tests.node_support import node_config

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


async def requester_and_node(
    coordinator: RunningCoordinator, tmp_path: Path, tiny_model_dir: Path, **settings: Any
) -> tuple[Api, NodeConfig]:
    """A funded requester's API, and the config of a node of another owner that returns lossless images (so
    pixels compare exactly); `settings` add to the config or change it."""
    requester = await coordinator.create_account("requester", kudos=1000)
    owner = await coordinator.create_account("owner")
    settings = {"image_lossless": True, **settings}
    config = node_config(tmp_path, coordinator.url, owner.apikey, tiny_model_dir, **settings)
    return Api(coordinator.url, apikey=requester.apikey), config


async def fetch_pixels(img: str) -> np.ndarray:
    """An image of a status answer (its URL, or inline base64) as float RGB pixels."""
    if img.startswith("http"):
        async with aiohttp.ClientSession() as session, session.get(img) as response:
            data = await response.read()
    else:
        data = base64.b64decode(img)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
