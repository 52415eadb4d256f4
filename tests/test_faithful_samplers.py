"""Every sampler name means its own algorithm (issue 12, item 4), on the real tiny pipeline.

Same prompt, seed and steps for every AI Horde sampler name: each image must differ from every other
name's, so a name that silently ran another sampler (say, everything as k_euler) fails here. Karras
sigmas are asked for, so `dpmsolver` (the LDM sampler, time-uniform steps by definition) and
`k_dpmpp_2m` (Karras steps here) are different runs of one solver, as they are on AI Horde's workers.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coordinator.capabilities import declared
from node.inference import Generator
from node.jobspec import JobSpec
from node.pipelines import PipelineCache
from node.samplers import SAMPLERS, declared_samplers
from node.tiny_model import TINY_MODEL_NAME
from protocol.jobs import PopRequest
from protocol.samplers import SamplerName
from tests.fixtures_models import tiny_catalog

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(tiny_model_dir: Path) -> dict[str, np.ndarray]:
    generator = Generator(PipelineCache(tiny_catalog(tiny_model_dir), CPU), CPU)
    made = {}
    for name in declared_samplers()["samplers"]:
        payload = {
            "prompt": "a red fox in the snow ### blurry",
            "ddim_steps": 6,
            "width": 64,
            "height": 64,
            "seed": "99",
            "sampler_name": name,
            "cfg_scale": 7.0,
            "karras": True,
        }
        [result] = generator.run(JobSpec.from_payload(TINY_MODEL_NAME, payload))
        assert result.image is not None, (name, result.faulted_reason)
        made[name] = pixels(result.image)
    return made


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_each_sampler_name_gives_its_own_image(images: dict[str, np.ndarray]) -> None:
    assert len(images) >= len(SAMPLERS) - 1  # k_dpmpp_sde only where torchsde is installed
    same = [(a, b) for a, b in itertools.combinations(sorted(images), 2) if np.abs(images[a] - images[b]).mean() < 0.5]
    assert not same, f"these sampler names gave the same image: {same}"


def test_a_sampler_is_repeatable(tiny_model_dir: Path, images: dict[str, np.ndarray]) -> None:
    """The differences above are the algorithms', not noise: one name twice gives one image."""
    generator = Generator(PipelineCache(tiny_catalog(tiny_model_dir), CPU), CPU)
    payload = {
        "prompt": "a red fox in the snow ### blurry",
        "ddim_steps": 6,
        "width": 64,
        "height": 64,
        "seed": "99",
        "sampler_name": "k_dpm_2",
        "cfg_scale": 7.0,
        "karras": True,
    }
    [again] = generator.run(JobSpec.from_payload(TINY_MODEL_NAME, payload))
    assert again.image is not None and np.abs(pixels(again.image) - images["k_dpm_2"]).max() <= 1


def test_the_node_declares_its_samplers_and_names_each_approximation() -> None:
    pop = PopRequest(name="n", **declared_samplers())
    worker_fields = declared(pop)
    assert set(worker_fields["samplers"]) == {name.lower() for name in SamplerName.__args__} - (
        set() if "k_dpmpp_sde" in worker_fields["samplers"] else {"k_dpmpp_sde"}
    )
    approximations = worker_fields["approximate_samplers"]
    assert set(approximations) == {name for name, recipe in SAMPLERS.items() if not recipe.exact}
    assert {"k_dpm_fast", "k_dpm_adaptive", "k_dpmpp_2s_a"} <= set(approximations)
    assert all(len(note) > 20 for note in approximations.values())
