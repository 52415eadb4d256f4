"""hires_fix: a first pass at the model's native size, resized, then img2img at the job's strength.

The tiny model's native size is 64 px (its UNet's sample size 8 × the VAE's factor 8), so a 128 px
job makes its first pass at 64 px, as a 1024 px job on SD 1.x makes its first at 512.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.catalog import Catalog
from node.config import build_config
from node.daemon import NodeDaemon
from node.features import HIRES_FIX, declared
from node.hires import first_pass_size
from node.inference import Generator
from node.jobspec import JobRejected, JobSpec
from node.pipelines import PipelineCache
from tests.conftest import RunningCoordinator
from tests.fixtures_models import tiny_spec
from tests.helpers import Api
from tests.node_features_support import CPU, fetch_pixels, tiny_job
from tests.node_support import finished, node_config, running

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def job(**overrides: object) -> JobSpec:
    return tiny_job(**{"width": 128, "height": 128, "steps": 4, **overrides})


@pytest.fixture(scope="module")
def node(tiny_model_dir: Path) -> Generator:
    return Generator(PipelineCache(Catalog({"tiny-sd": tiny_spec(tiny_model_dir)}), CPU), CPU)


def pixels(spec: JobSpec, node: Generator) -> np.ndarray:
    [generated] = node.run(spec)
    assert generated.image is not None and generated.image.size == (spec.width, spec.height)
    return np.asarray(generated.image, dtype=np.float64)


def test_first_pass_keeps_the_aspect_at_the_native_pixel_count() -> None:
    assert first_pass_size(1024, 1024, 512) == (512, 512)
    assert first_pass_size(1024, 768, 512) == (584, 440)
    assert first_pass_size(512, 512, 512) is None and first_pass_size(384, 512, 512) is None


def test_hires_fix_changes_the_image_and_its_strength_matters(node: Generator) -> None:
    plain = pixels(job(), node)
    weak = pixels(job(hires_fix=True, hires_fix_denoising_strength=0.3), node)
    strong = pixels(job(hires_fix=True, hires_fix_denoising_strength=0.9), node)
    assert np.abs(weak - plain).mean() > 1
    assert np.abs(strong - weak).mean() > 1
    # The same job twice is the same image: the difference is hires fix's, not noise.
    assert np.array_equal(weak, pixels(job(hires_fix=True, hires_fix_denoising_strength=0.3), node))


def test_at_the_native_size_the_first_pass_is_the_image(node: Generator) -> None:
    small = {"width": 64, "height": 64}
    assert np.array_equal(pixels(job(**small), node), pixels(job(hires_fix=True, **small), node))


def test_hires_fix_with_a_source_image_is_refused(node: Generator) -> None:
    source = Image.new("RGB", (128, 128), (200, 30, 30))
    with pytest.raises(JobRejected, match="txt2img only"):
        node.run(job(hires_fix=True, source_image=source, source_processing="img2img"))
    with pytest.raises(JobRejected, match="hires_fix_denoising_strength"):
        node.run(job(hires_fix=True, hires_fix_denoising_strength=0.1, steps=4))


async def test_hires_fix_reaches_the_node_end_to_end(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    requester = await coordinator.create_account("requester", kudos=1000)
    owner = await coordinator.create_account("owner")
    api = Api(coordinator.url, apikey=requester.apikey)
    config = node_config(tmp_path, coordinator.url, owner.apikey, tiny_model_dir, image_lossless=True)
    assert HIRES_FIX in declared(config)["features"]
    images = []
    async with running(NodeDaemon(config)):
        for hires in (False, True):
            params = {
                "width": 128,
                "height": 128,
                "steps": 4,
                "seed": "7",
                "sampler_name": "k_euler",
                "hires_fix": hires,
                "hires_fix_denoising_strength": 0.5,
            }
            body = {"prompt": "a red cat", "models": ["tiny-sd"], "params": params}
            reply = await api.post("/v2/generate/async", body)
            assert reply.status == 202, reply.body
            [generation] = (await finished(api, reply.body["id"]))["generations"]
            images.append(await fetch_pixels(generation["img"]))
    assert images[0].shape == images[1].shape == (128, 128, 3)
    assert np.abs(images[0] - images[1]).mean() > 1
    # Nothing to configure: every node declares it.
    assert HIRES_FIX in declared(build_config({}, tmp_path))["features"]
