"""What a requester asks is what a node is told, and what the node makes (issue 12, item 1).

A real coordinator hands jobs to a popping node over HTTP; the payload it pops (AI Horde's
`ModelPayloadStable`, the same values in the signed job document) is fed to the node's own parser and
the tiny random-weight pipeline, so a parameter lost anywhere between the request and the image shows.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch
from PIL import Image

from node.inference import Generator
from node.jobspec import JobSpec
from node.pipelines import PipelineCache
from node.tiny_model import TINY_MODEL_NAME
from tests.api_support import MODEL, generate, node, pop_job, requester, small
from tests.conftest import RunningCoordinator
from tests.fixtures_models import tiny_catalog

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")
PROMPT = "a photo of a cat sitting on a red chair, highly detailed"


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path) -> Generator:
    return Generator(PipelineCache(tiny_catalog(tiny_model_dir), CPU), CPU)


@pytest.fixture(scope="module")
def source(generator: Generator) -> Image.Image:
    [made] = generator.run(
        JobSpec.from_payload(
            TINY_MODEL_NAME, {**small(PROMPT)["params"], "prompt": PROMPT, "ddim_steps": 4, "seed": "7"}
        )
    )
    assert made.image is not None
    return made.image


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


async def popped_payload(
    coordinator: RunningCoordinator, body: dict[str, Any], round_: int = 0, **flags: Any
) -> dict[str, Any]:
    """Submit `body`, pop it as a node declaring `flags`; the payload, checked equal to the signed one.
    Each `round_` has its own requester and node, so one test can pop several requests in turn."""
    alice = await coordinator.create_account(f"alice{round_}", kudos=1000)
    await generate(requester(coordinator, alice), body)
    owner = await coordinator.create_account(f"owner{round_}")
    popped = await pop_job(node(coordinator, owner, f"n{round_}", extra=flags))
    payload = popped.body["payload"]
    assert popped.body["jobs"][0]["document"]["payload"] == payload  # what the node is told is what is signed
    return {**payload, "_source_url": popped.body["source_image"], "_processing": popped.body["source_processing"]}


async def run_popped(generator: Generator, payload: dict[str, Any]) -> Image.Image:
    """The node's side: fetch the source the pop names, parse the payload, generate."""
    source = None
    if payload["_source_url"]:
        async with aiohttp.ClientSession() as session, session.get(payload["_source_url"]) as response:
            assert response.status == 200
            source = Image.open(io.BytesIO(await response.read())).convert("RGB")
    spec = JobSpec.from_payload(MODEL, payload, source, None, payload["_processing"])
    [made] = generator.run(spec)
    assert made.faulted_reason is None and made.image is not None
    return made.image


async def test_img2img_strength_reaches_the_node_and_scales_the_change(
    coordinator: RunningCoordinator, generator: Generator, source: Image.Image
) -> None:
    changes = []
    for round_, strength in enumerate((0.3, 0.6, 1.0)):
        body = {**small(PROMPT, steps=10, seed="3", denoising_strength=strength), "source_image": png_b64(source)}
        payload = await popped_payload(coordinator, body, round_)
        assert payload["denoising_strength"] == strength and payload["_processing"] == "img2img"
        image = await run_popped(generator, payload)
        changes.append(float(np.abs(pixels(image) - pixels(source)).mean()))
    assert changes[0] < changes[1] < changes[2], changes


async def test_a_negative_prompt_reaches_the_node_and_changes_the_image(
    coordinator: RunningCoordinator, generator: Generator
) -> None:
    images, payloads = [], []
    for round_, prompt in enumerate((PROMPT, f"{PROMPT} ### green, dark, blurry")):
        payload = await popped_payload(coordinator, small(prompt, seed="5"), round_)
        payloads.append(payload)
        images.append(await run_popped(generator, payload))
    assert payloads[1]["prompt"] == f"{PROMPT} ### green, dark, blurry"  # AI Horde's one-field form
    assert JobSpec.from_payload(MODEL, payloads[1]).negative_prompt == "green, dark, blurry"
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 1


async def test_every_accepted_parameter_is_in_the_payload_as_ai_horde_sends_it(
    coordinator: RunningCoordinator, source: Image.Image
) -> None:
    params = {
        "steps": 12,
        "seed": "42",
        "sampler_name": "k_dpmpp_2m",
        "cfg_scale": 6.5,
        "karras": True,
        "clip_skip": 2,
        "tiling": True,
        "denoising_strength": 0.55,
        "hires_fix": True,
        "hires_fix_denoising_strength": 0.4,
        "loras": [{"name": "12345", "model": 0.8, "clip": 0.6, "is_version": True, "inject_trigger": "any"}],
        "tis": [{"name": "negfix", "inject_ti": "negprompt", "strength": 0.5}],
        "post_processing": ["RealESRGAN_x2plus", "GFPGAN"],
        "post_processing_order": "upscalers_first",
        "facefixer_strength": 0.3,
        "control_type": "canny",
        "image_is_control": True,
        "return_control_map": False,
    }
    body = {**small("a castle ### fog", **params), "censor_nsfw": True, "source_image": png_b64(source)}
    payload = await popped_payload(coordinator, body, allow_lora=True, allow_controlnet=True)
    assert {key: value for key, value in payload.items() if not key.startswith("_")} == {
        "prompt": "a castle ### fog",
        "ddim_steps": 12,
        "n_iter": 1,
        "width": 64,
        "height": 64,
        "seed": "42",
        "sampler_name": "k_dpmpp_2m",
        "cfg_scale": 6.5,
        "karras": True,
        "clip_skip": 2,
        "tiling": True,
        "denoising_strength": 0.55,
        "hires_fix": True,
        "hires_fix_denoising_strength": 0.4,
        "loras": [{"name": "12345", "model": 0.8, "clip": 0.6, "is_version": True, "inject_trigger": "any"}],
        "tis": [{"name": "negfix", "inject_ti": "negprompt", "strength": 0.5}],
        "post_processing": ["RealESRGAN_x2plus", "GFPGAN"],
        "post_processing_order": "upscalers_first",
        "facefixer_strength": 0.3,
        "control_type": "canny",
        "image_is_control": True,
        "return_control_map": False,
        "use_nsfw_censor": True,
    }
    assert payload["_processing"] == "img2img" and payload["_source_url"]


async def test_txt2img_carries_no_strength_nor_unused_knobs(coordinator: RunningCoordinator) -> None:
    payload = await popped_payload(coordinator, small("a cat", denoising_strength=0.4, facefixer_strength=0.9))
    for absent in ("denoising_strength", "hires_fix_denoising_strength", "facefixer_strength", "control_type"):
        assert absent not in payload, absent
    assert payload["_processing"] == "txt2img"


async def test_seed_variation_spaces_the_batchs_seeds(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=1000)
    await generate(requester(coordinator, alice), small(n=3, seed="1000", seed_variation=5))
    owner = await coordinator.create_account("owner")
    popped = await pop_job(node(coordinator, owner, "n1"), amount=3)
    seeds = [job["document"]["payload"]["seed"] for job in popped.body["jobs"]]
    assert seeds == ["1000", "1005", "1010"]


async def test_cfg_scale_reaches_the_node_and_changes_the_image(
    coordinator: RunningCoordinator, generator: Generator
) -> None:
    images = []
    for round_, cfg in enumerate((2.0, 12.0)):
        payload = await popped_payload(coordinator, small(PROMPT, seed="8", cfg_scale=cfg), round_)
        assert payload["cfg_scale"] == cfg
        images.append(await run_popped(generator, payload))
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 1
