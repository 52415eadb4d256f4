"""Face fixing: AI Horde's `GFPGAN` through spandrel on the faces OpenCV finds, with the full-size random
GFPGAN that `make-tiny-extras` builds, loaded from the node's post-processor folder like GFPGANv1.4.pth.

tests/data/astronaut.jpg is NASA's portrait of Eileen Collins (public domain), as scikit-image ships it
(skimage.data.astronaut), scaled to 256×256.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import node.postprocess
from node.config import build_config
from node.daemon import NodeDaemon
from node.facefix import FACE_SIZE, FaceFixer, cascades, crop_transform, find_faces
from node.features import declared
from node.jobspec import JobRejected, JobSpec
from node.postprocess import PostProcessingError, PostProcessors, available, in_order
from node.tiny_extras import CONTROLNET_FOLDER
from tests.conftest import RunningCoordinator
from tests.node_features_support import CPU, fetch_pixels, requester_and_node
from tests.node_support import finished, running

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
# Where the Haar cascade finds the face in PHOTO (x, y, w, h): about her eyes to her chin.
FACE = (86, 31, 53, 53)


@pytest.fixture(scope="module")
def fixers(tiny_extras_dir: Path) -> PostProcessors:
    return PostProcessors(available(tiny_extras_dir), CPU)


@pytest.fixture(scope="module")
def restored(fixers: PostProcessors) -> dict[float, tuple[Image.Image, list[dict[str, str]]]]:
    """The photo through GFPGAN at strengths 1, 0.5 and 0: each run takes seconds on a CPU."""
    return {strength: fixers.apply(photo(), ["GFPGAN"], strength=strength) for strength in (1.0, 0.5, 0.0)}


def photo() -> Image.Image:
    return Image.open(PHOTO).convert("RGB")


def changed(before: Image.Image | np.ndarray, after: Image.Image | np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)).sum(axis=2)


def test_gfpgan_restores_the_face_of_a_photo_and_nothing_else(
    restored: dict[float, tuple[Image.Image, list[dict[str, str]]]],
) -> None:
    (full, notes), (half, _), (untouched, none) = restored[1.0], restored[0.5], restored[0.0]
    assert notes == [{"type": "information", "value": "see_ref", "ref": "GFPGAN: 1 face(s) fixed"}]
    assert none == [{"type": "information", "value": "see_ref", "ref": "GFPGAN: 0 face(s) fixed"}]
    assert full.size == photo().size
    x, y, w, h = FACE
    difference = changed(photo(), full)
    # The face is GFPGAN's (random weights: a very different one) ...
    assert difference[y : y + h, x : x + w].mean() > 60
    # ... pasted over its crop alone: her shoulders, the flag and the shuttle stay exactly as they were.
    rows, columns = np.nonzero(difference)
    assert rows.max() < y + 2 * h and columns.min() > x - w and columns.max() < x + 2 * w
    assert (difference[y + 2 * h :, :] == 0).all()
    # facefixer_strength mixes GFPGAN's face with the photo's: half-way at 0.5, the photo itself at 0.
    ratio = changed(photo(), half)[y : y + h, x : x + w].mean() / difference[y : y + h, x : x + w].mean()
    assert 0.4 < ratio < 0.6
    assert np.array_equal(np.asarray(untouched), np.asarray(photo()))


@pytest.mark.parametrize("degrees", [10, -10])
def test_a_tilted_face_is_cropped_level_by_its_eyes(degrees: int) -> None:
    faces, eyes = cascades()
    tilted = cv2.cvtColor(np.asarray(photo().rotate(degrees, resample=Image.BICUBIC)), cv2.COLOR_RGB2GRAY)
    [(box, tilt)] = find_faces(tilted, faces, eyes)
    # Her head leans about 3° in the photo itself; turned 10° either way, the eyes' line turns with it.
    assert abs(tilt - (3 - degrees)) < 5
    crop = cv2.warpAffine(tilted, crop_transform(box, tilt), (FACE_SIZE, FACE_SIZE))
    [((x, y, w, h), level)] = [face for face in find_faces(crop, faces, eyes) if face[0][2] > FACE_SIZE / 3]
    # In the crop GFPGAN gets, the face is level, about half the crop wide, centred across and a little
    # below the middle (the box reaches from the brows to the chin), as FFHQ's faces are.
    assert abs(level) < 2 and 0.4 < w / FACE_SIZE < 0.6
    assert abs(x + w / 2 - FACE_SIZE / 2) < FACE_SIZE / 20 and 0.5 < (y + h / 2) / FACE_SIZE < 0.7


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


async def test_a_gfpgan_job_fixes_the_face_end_to_end(
    coordinator: RunningCoordinator,
    tiny_model_dir: Path,
    tiny_extras_dir: Path,
    tmp_path: Path,
    restored: dict[float, tuple[Image.Image, list[dict[str, str]]]],
) -> None:
    """The tiny model paints no face, so the photo comes back as its own control map (image_is_control,
    return_control_map), through GFPGAN on a real node, over the coordinator's HTTP API."""
    api, config = await requester_and_node(
        coordinator,
        tmp_path,
        tiny_model_dir,
        post_processor_dir=str(tiny_extras_dir),
        controlnet_dir=str(tiny_extras_dir / CONTROLNET_FOLDER),
    )
    params = {
        **{"width": 256, "height": 256, "steps": 2, "control_type": "canny", "image_is_control": True},
        **{"return_control_map": True, "post_processing": ["GFPGAN"], "facefixer_strength": 0.5},
    }
    body = {"prompt": "a portrait", "models": ["tiny-sd"], "source_image": lossless_webp(photo()), "params": params}
    async with running(NodeDaemon(config)):
        reply = await api.post("/v2/generate/async", body)
        assert reply.status == 202, reply.body
        [generation] = (await finished(api, reply.body["id"]))["generations"]

    assert generation["state"] == "ok", generation
    expected, notes = restored[0.5]
    assert notes[0] in generation["gen_metadata"]  # "GFPGAN: 1 face(s) fixed"
    # The face fixed at the asked strength, as the component test saw it (same weights, stored noise).
    assert changed(expected, await fetch_pixels(generation["img"])).max() <= 3


def lossless_webp(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", lossless=True)
    return base64.b64encode(buffer.getvalue()).decode()
