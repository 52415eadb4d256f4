"""Face fixing: AI Horde's `GFPGAN` through spandrel on the faces OpenCV finds, with the full-size random
GFPGAN that `make-tiny-extras` builds, loaded from the node's post-processor folder like GFPGANv1.4.pth.

tests/data/astronaut.jpg is NASA's portrait of Eileen Collins (public domain), as scikit-image ships it
(skimage.data.astronaut), scaled to 256×256.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import node.postprocess
from node.config import build_config
from node.daemon import NodeDaemon
from node.facefix import FaceFixer
from node.features import declared
from node.jobspec import JobRejected, JobSpec
from node.postprocess import PostProcessingError, PostProcessors, available, in_order
from tests.conftest import RunningCoordinator
from tests.helpers import Api
from tests.node_features_support import CPU, fetch_pixels
from tests.node_support import finished, node_config, running

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
# Where the Haar cascade finds the face in PHOTO (x, y, w, h): about her eyes to her chin.
FACE = (86, 31, 53, 53)


@pytest.fixture(scope="module")
def fixers(tiny_extras_dir: Path) -> PostProcessors:
    return PostProcessors(available(tiny_extras_dir), CPU)


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)).sum(axis=2)


def test_gfpgan_restores_the_face_of_a_photo_and_nothing_else(fixers: PostProcessors) -> None:
    photo = Image.open(PHOTO).convert("RGB")
    full, notes = fixers.apply(photo, ["GFPGAN"], strength=1.0)
    half, _ = fixers.apply(photo, ["GFPGAN"], strength=0.5)
    untouched, none = fixers.apply(photo, ["GFPGAN"], strength=0.0)
    assert notes == [{"type": "information", "value": "see_ref", "ref": "GFPGAN: 1 face(s) fixed"}]
    assert none == [{"type": "information", "value": "see_ref", "ref": "GFPGAN: 0 face(s) fixed"}]
    assert full.size == photo.size
    x, y, w, h = FACE
    difference = changed(photo, full)
    # The face is GFPGAN's (random weights: a very different one) ...
    assert difference[y : y + h, x : x + w].mean() > 60
    # ... pasted over its crop alone: her shoulders, the flag and the shuttle stay exactly as they were.
    rows, columns = np.nonzero(difference)
    assert rows.max() < y + 2 * h and columns.min() > x - w and columns.max() < x + 2 * w
    assert (difference[y + 2 * h :, :] == 0).all()
    # facefixer_strength mixes GFPGAN's face with the photo's: half-way at 0.5, the photo itself at 0.
    ratio = changed(photo, half)[y : y + h, x : x + w].mean() / difference[y : y + h, x : x + w].mean()
    assert 0.4 < ratio < 0.6
    assert np.array_equal(np.asarray(untouched), np.asarray(photo))


def test_an_image_without_a_face_is_left_as_it_is(fixers: PostProcessors) -> None:
    sky = Image.new("RGB", (96, 64), (90, 140, 220))
    image, notes = fixers.apply(sky, ["GFPGAN"], strength=1.0)
    assert np.array_equal(np.asarray(image), np.asarray(sky))
    assert notes[0]["ref"] == "GFPGAN: 0 face(s) fixed"


def test_face_fixers_run_in_the_jobs_post_processing_order() -> None:
    names = ["RealESRGAN_x2plus", "GFPGAN", "RealESRGAN_x4plus"]
    assert in_order(names, "facefixers_first") == ["GFPGAN", "RealESRGAN_x2plus", "RealESRGAN_x4plus"]
    assert in_order(names, "upscalers_first") == ["RealESRGAN_x2plus", "RealESRGAN_x4plus", "GFPGAN"]
    assert in_order(names, "custom") == names
    payload = {"prompt": "p", "post_processing": names, "post_processing_order": "custom", "facefixer_strength": 0}
    spec = JobSpec.from_payload("m", payload)
    assert (spec.post_processing_order, spec.facefixer_strength) == ("custom", 0.0)
    assert JobSpec.from_payload("m", {"prompt": "p"}).facefixer_strength == 0.75
    for bad in ({"facefixer_strength": 1.5}, {"post_processing_order": "sideways"}):
        with pytest.raises(JobRejected, match="malformed"):
            JobSpec.from_payload("m", {"prompt": "p", **bad})


def test_a_node_declares_gfpgan_only_with_its_weights_and_opencvs_cascades(
    tiny_extras_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upscalers_only = tmp_path / "upscalers"
    upscalers_only.mkdir()
    shutil.copy(tiny_extras_dir / "RealESRGAN_x2plus.safetensors", upscalers_only)
    assert declared(build_config({"post_processor_dir": str(upscalers_only)}, tmp_path))["post_processors"] == [
        "RealESRGAN_x2plus"
    ]
    served = build_config({"post_processor_dir": str(tiny_extras_dir)}, tmp_path)
    assert "GFPGAN" in declared(served)["post_processors"] and "CodeFormers" not in declared(served)["post_processors"]
    # OpenCV 5's wheels bundle no cascades: no faces found, so no face fixer declared.
    monkeypatch.setattr(node.postprocess, "cascades_available", lambda: False)
    assert "GFPGAN" not in declared(served)["post_processors"]


def test_weights_of_another_architecture_under_gfpgans_name_are_never_run(
    tiny_extras_dir: Path, tmp_path: Path
) -> None:
    shutil.copy(tiny_extras_dir / "RealESRGAN_x2plus.safetensors", tmp_path / "GFPGAN.safetensors")
    with pytest.raises(PostProcessingError, match="is not a GFPGAN face fixer"):
        FaceFixer("GFPGAN", tmp_path / "GFPGAN.safetensors", CPU).load()


def test_gfpgans_own_pth_layout_loads_the_same_way(tiny_extras_dir: Path, tmp_path: Path) -> None:
    """GFPGANv1.4.pth, as GFPGAN publishes it: a pickle with the weights under `params_ema`."""
    weights = load_file(tiny_extras_dir / "GFPGAN.safetensors")
    torch.save({"params_ema": weights}, tmp_path / "GFPGAN.pth")
    assert available(tmp_path) == {"GFPGAN": tmp_path / "GFPGAN.pth"}
    FaceFixer("GFPGAN", tmp_path / "GFPGAN.pth", CPU).load()


async def test_a_gfpgan_job_runs_end_to_end_on_a_node_that_declares_it(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tiny_extras_dir: Path, tmp_path: Path
) -> None:
    requester = await coordinator.create_account("requester", kudos=1000)
    owner = await coordinator.create_account("owner")
    api = Api(coordinator.url, apikey=requester.apikey)
    config = node_config(
        tmp_path, coordinator.url, owner.apikey, tiny_model_dir, post_processor_dir=str(tiny_extras_dir)
    )
    params = {"width": 64, "height": 64, "steps": 2, "post_processing": ["GFPGAN"], "facefixer_strength": 0.9}
    body = {"prompt": "a red cat", "models": ["tiny-sd"], "params": params}
    async with running(NodeDaemon(config)):
        reply = await api.post("/v2/generate/async", body)
        assert reply.status == 202, reply.body
        [generation] = (await finished(api, reply.body["id"]))["generations"]

    assert generation["state"] == "ok", generation
    assert (await fetch_pixels(generation["img"])).shape == (64, 64, 3)
    # The tiny model paints no face; the node says it looked for one, in AI Horde's gen_metadata shape.
    assert {"type": "information", "value": "see_ref", "ref": "GFPGAN: 0 face(s) fixed"} in generation["gen_metadata"]
