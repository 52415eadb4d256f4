"""Post-processing through spandrel: tiny random Real-ESRGAN-architecture upscalers under AI Horde's
names, loaded from the node's post-processor folder like real RealESRGAN_x4plus.pth files (face fixers:
tests/test_node_features_facefix.py)."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from node.catalog import Catalog
from node.config import build_config
from node.daemon import NodeDaemon
from node.features import Features, declared
from node.inference import Generator
from node.jobspec import InferenceFailed, JobRejected, JobSpec
from node.pipelines import PipelineCache
from node.postprocess import PostProcessingError, PostProcessors, Upscaler, available
from tests.conftest import RunningCoordinator
from tests.fixtures_models import tiny_spec
from tests.helpers import Api
from tests.node_features_support import CPU, tiny_job
from tests.node_support import finished, node_config, running

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def job(**overrides: object) -> JobSpec:
    return tiny_job(**{"height": 48, **overrides})


@pytest.fixture(scope="module")
def cache(tiny_model_dir: Path) -> PipelineCache:
    return PipelineCache(Catalog({"tiny-sd": tiny_spec(tiny_model_dir)}), CPU)


def generator(cache: PipelineCache, folder: Path) -> Generator:
    return Generator(cache, CPU, features=Features(postprocessors=PostProcessors(available(folder), CPU)))


async def fetch_image(img: str) -> Image.Image:
    if not img.startswith("http"):
        return Image.open(io.BytesIO(base64.b64decode(img)))
    async with aiohttp.ClientSession() as session, session.get(img) as response:
        assert response.status == 200
        return Image.open(io.BytesIO(await response.read()))


async def test_an_upscaler_returns_the_scaled_size_end_to_end(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tiny_extras_dir: Path, tmp_path: Path
) -> None:
    requester = await coordinator.create_account("requester", kudos=1000)
    owner = await coordinator.create_account("owner")
    api = Api(coordinator.url, apikey=requester.apikey)
    config = node_config(
        tmp_path, coordinator.url, owner.apikey, tiny_model_dir, post_processor_dir=str(tiny_extras_dir)
    )
    body = {
        "prompt": "a red cat",
        "models": ["tiny-sd"],
        "params": {
            "width": 64,
            "height": 64,
            "steps": 2,
            "sampler_name": "k_euler",
            "post_processing": ["RealESRGAN_x4plus"],
        },
    }
    async with running(NodeDaemon(config)):
        reply = await api.post("/v2/generate/async", body)
        assert reply.status == 202, reply.body
        [generation] = (await finished(api, reply.body["id"]))["generations"]

    assert generation["state"] == "ok", generation
    # The coordinator checked the same size against its own rule before accepting it.
    assert (await fetch_image(generation["img"])).size == (256, 256)


def test_each_upscaler_scales_by_its_names_factor(cache: PipelineCache, tiny_extras_dir: Path) -> None:
    node = generator(cache, tiny_extras_dir)
    [plain] = Generator(cache, CPU).run(job())
    [twice] = node.run(job(post_processing=["RealESRGAN_x2plus"]))
    [both] = node.run(job(post_processing=["RealESRGAN_x2plus", "RealESRGAN_x4plus"]))
    assert plain.image is not None and plain.image.size == (64, 48)
    assert twice.image is not None and twice.image.size == (128, 96)
    assert both.image is not None and both.image.size == (512, 384)


def test_a_post_processor_the_node_lacks_is_refused_before_running(
    cache: PipelineCache, tiny_extras_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(JobRejected, match="CodeFormers"):
        generator(cache, tiny_extras_dir).run(job(post_processing=["CodeFormers"]))
    with pytest.raises(JobRejected, match="RealESRGAN_x2plus"):
        generator(cache, tmp_path).run(job(post_processing=["RealESRGAN_x2plus"]))


def test_weights_whose_scale_is_not_the_names_are_never_run(
    cache: PipelineCache, tiny_extras_dir: Path, tmp_path: Path
) -> None:
    # An x2 file saved under an x4 name would make results the coordinator refuses: caught at load.
    shutil.copy(tiny_extras_dir / "RealESRGAN_x2plus.safetensors", tmp_path / "RealESRGAN_x4plus.safetensors")
    with pytest.raises(PostProcessingError, match="scales by 2"):
        Upscaler("RealESRGAN_x4plus", tmp_path / "RealESRGAN_x4plus.safetensors", CPU).load()
    with pytest.raises(InferenceFailed, match="scales by 2"):
        generator(cache, tmp_path).run(job(post_processing=["RealESRGAN_x4plus"]))


def test_a_node_declares_the_upscalers_in_its_folder(tmp_path: Path, tiny_extras_dir: Path) -> None:
    bare = declared(build_config({"post_processor_dir": str(tmp_path)}, tmp_path))
    served = declared(build_config({"post_processor_dir": str(tiny_extras_dir)}, tmp_path))
    assert bare["allow_post_processing"] is False and bare["post_processors"] == []
    assert served["allow_post_processing"] is True
    assert served["post_processors"] == ["GFPGAN", "RealESRGAN_x2plus", "RealESRGAN_x4plus"]
    payload = {"prompt": "p", "post_processing": ["RealESRGAN_x4plus"]}
    assert JobSpec.from_payload("m", payload).post_processing == ["RealESRGAN_x4plus"]
