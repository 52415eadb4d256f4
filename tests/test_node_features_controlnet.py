"""ControlNet: tiny random ControlNets shaped for the tiny UNet (their zero convolutions randomised, so
they steer), the canny and scribble maps, image_is_control and return_control_map."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from node.catalog import Catalog, ModelSpec
from node.config import build_config
from node.controlnet import ControlNets, canny, scribble
from node.daemon import NodeDaemon
from node.features import Features, declared
from node.inference import Generator
from node.jobspec import JobRejected, JobSpec
from node.pipelines import PipelineCache
from node.tiny_extras import CONTROLNET_FOLDER, build_tiny_controlnet
from protocol.samplers import CONTROL_TYPES
from tests.conftest import RunningCoordinator
from tests.fixtures_models import tiny_spec
from tests.node_features_support import CPU, fetch_pixels, requester_and_node, tiny_job
from tests.node_support import finished, running

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def drawing(box: tuple[int, int, int, int]) -> Image.Image:
    """Dark strokes on white, like a scribble (and with edges for canny)."""
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle(box, outline="black", width=3)
    return image


SQUARE, BAR = drawing((12, 12, 52, 52)), drawing((4, 24, 60, 36))


def job(**overrides: object) -> JobSpec:
    return tiny_job(**{"steps": 3, "source_processing": "img2img", **overrides})


@pytest.fixture(scope="module")
def controlnet_dir(tiny_extras_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ControlNet per AI Horde type: the tiny extras' (a prebuilt folder may predate the seven types
    beyond canny and scribble: those are built here the same way)."""
    folder = tmp_path_factory.mktemp("controlnets")
    for control_type in CONTROL_TYPES:
        built = tiny_extras_dir / CONTROLNET_FOLDER / control_type
        if built.is_dir():
            (folder / control_type).symlink_to(built)
        else:
            build_tiny_controlnet(folder / control_type)
    return folder


@pytest.fixture(scope="module")
def node(tiny_model_dir: Path, controlnet_dir: Path) -> Generator:
    specs = {
        "tiny-sd": tiny_spec(tiny_model_dir),
        "tiny-sd2": ModelSpec("tiny-sd2", str(tiny_model_dir), "stable_diffusion_2"),
    }
    controlnets = ControlNets(controlnet_dir, CPU)
    return Generator(PipelineCache(Catalog(specs), CPU), CPU, features=Features(controlnets=controlnets))


def pixels(node: Generator, spec: JobSpec) -> np.ndarray:
    [generated] = node.run(spec)
    assert generated.image is not None and generated.image.size == (64, 64)
    return np.asarray(generated.image.convert("RGB"), dtype=np.float64)


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).mean() > 1)


def test_the_control_map_changes_the_image(node: Generator) -> None:
    plain = pixels(node, job(source_processing="txt2img"))
    square = pixels(node, job(source_image=SQUARE, control_type="canny"))
    bar = pixels(node, job(source_image=BAR, control_type="canny"))
    scribbled = pixels(node, job(source_image=SQUARE, control_type="scribble"))
    assert differ(square, plain) and differ(bar, square) and differ(scribbled, square)
    assert np.array_equal(square, pixels(node, job(source_image=SQUARE, control_type="canny")))
    # Nothing of the ControlNet stays on the cached pipeline.
    assert np.array_equal(plain, pixels(node, job(source_processing="txt2img")))


def test_return_control_map_returns_the_map_and_image_is_control_takes_the_source_as_it(node: Generator) -> None:
    expected = np.asarray(canny(SQUARE), dtype=np.float64)
    assert expected.max() == 255 and expected.min() == 0  # the square's edges, on black
    returned = job(source_image=SQUARE, control_type="canny", return_control_map=True)
    assert np.array_equal(pixels(node, returned), expected)
    as_is = job(source_image=SQUARE, control_type="canny", image_is_control=True, return_control_map=True)
    assert np.array_equal(pixels(node, as_is), np.asarray(SQUARE, dtype=np.float64))
    lines = np.asarray(scribble(SQUARE))
    assert lines[12, 30].tolist() == [255, 255, 255] and lines[30, 30].tolist() == [0, 0, 0]
    used_as_is = pixels(node, job(source_image=canny(SQUARE), control_type="canny", image_is_control=True))
    assert np.array_equal(used_as_is, pixels(node, job(source_image=SQUARE, control_type="canny")))


def test_any_type_takes_its_map_as_is_with_image_is_control(node: Generator) -> None:
    """The types the node has no annotator for run from a map the requester made, and the map steers."""
    plain = pixels(node, job(source_processing="txt2img"))
    for control_type in ("depth", "openpose", "hough"):
        square = pixels(node, job(source_image=SQUARE, control_type=control_type, image_is_control=True))
        bar = pixels(node, job(source_image=BAR, control_type=control_type, image_is_control=True))
        assert differ(square, plain) and differ(bar, square), control_type
    depth = pixels(node, job(source_image=SQUARE, control_type="depth", image_is_control=True))
    assert differ(depth, pixels(node, job(source_image=SQUARE, control_type="seg", image_is_control=True)))


def test_what_the_node_cannot_honour_is_refused_before_running(node: Generator) -> None:
    refusals = {
        "cannot make a 'depth' map": job(source_image=SQUARE, control_type="depth"),
        "SD 1.x models": job(model="tiny-sd2", source_image=SQUARE, control_type="canny"),
        "needs a source image": job(control_type="canny"),
        "inpainting": job(source_image=SQUARE, control_type="canny", source_processing="inpainting"),
        "hires_fix": job(source_image=SQUARE, control_type="canny", hires_fix=True),
    }
    for reason, spec in refusals.items():
        with pytest.raises(JobRejected, match=reason):
            node.run(spec)
    without = Generator(node.cache, CPU)
    with pytest.raises(JobRejected, match="not served"):
        without.run(job(source_image=SQUARE, control_type="canny"))


def test_a_node_declares_its_control_types_the_maps_it_makes_and_its_models_baselines(
    tmp_path: Path, controlnet_dir: Path, tiny_model_dir: Path
) -> None:
    bare = declared(build_config({"controlnet_dir": str(tmp_path)}, tmp_path))
    catalog = {"tiny-sd2": {"source": str(tiny_model_dir), "baseline": "stable_diffusion_2"}}
    served = declared(
        build_config(
            {"controlnet_dir": str(controlnet_dir), "models": ["tiny-sd2", "stable_diffusion"], "catalog": catalog},
            tmp_path,
        )
    )
    assert bare["allow_controlnet"] is False and bare["control_types"] == [] and bare["model_baselines"] == {}
    assert served["allow_controlnet"] is True and served["control_types"] == sorted(CONTROL_TYPES)
    assert served["annotators"] == ["canny", "scribble"]  # the others only as maps (image_is_control)
    # Its ControlNets fit SD 1.x: the coordinator sends ControlNet jobs only for the SD 1.x model.
    assert served["model_baselines"] == {"tiny-sd2": "stable_diffusion_2", "stable_diffusion": "stable_diffusion_1"}
    assert "sd2_controlnet" not in served["features"] and "sdxl_tis" not in served["features"]
    payload = {"prompt": "p", "control_type": "canny", "image_is_control": True, "return_control_map": True}
    spec = JobSpec.from_payload("m", payload)
    assert (spec.control_type, spec.image_is_control, spec.return_control_map) == ("canny", True, True)


def webp(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", lossless=True)
    return base64.b64encode(buffer.getvalue()).decode()


async def test_a_controlnet_job_runs_end_to_end(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tiny_extras_dir: Path, tmp_path: Path
) -> None:
    api, config = await requester_and_node(
        coordinator, tmp_path, tiny_model_dir, controlnet_dir=str(tiny_extras_dir / CONTROLNET_FOLDER)
    )
    results = []
    async with running(NodeDaemon(config)):
        for source, extra in ((SQUARE, {}), (BAR, {}), (SQUARE, {"return_control_map": True})):
            params = {
                "width": 64,
                "height": 64,
                "steps": 3,
                "seed": "7",
                "sampler_name": "k_euler",
                "control_type": "canny",
                **extra,
            }
            body = {"prompt": "a red cat", "models": ["tiny-sd"], "source_image": webp(source), "params": params}
            reply = await api.post("/v2/generate/async", body)
            assert reply.status == 202, reply.body
            [generation] = (await finished(api, reply.body["id"]))["generations"]
            assert generation["state"] == "ok", generation
            results.append(await fetch_pixels(generation["img"]))
    square, bar, control_map = results
    assert differ(square, bar)
    assert np.array_equal(control_map, np.asarray(canny(SQUARE), dtype=np.float64))


async def test_the_real_node_is_sent_only_the_controlnet_jobs_it_can_run(
    coordinator: RunningCoordinator, tiny_model_dir: Path, controlnet_dir: Path, tmp_path: Path
) -> None:
    """The real node takes a depth job whose source is the map; never one that asks it to make a depth map,
    nor a ControlNet job on its model whose catalog says SD 2.x (its ControlNets are SD 1.x ones). Those
    were queued first, so a node allowed to take them would have taken them first."""
    catalog = {
        "tiny-sd": {"source": str(tiny_model_dir)},
        "tiny-sd2": {"source": str(tiny_model_dir), "baseline": "stable_diffusion_2"},
    }
    api, config = await requester_and_node(
        coordinator,
        tmp_path,
        tiny_model_dir,
        catalog=catalog,
        models=["tiny-sd", "tiny-sd2"],
        controlnet_dir=str(controlnet_dir),
    )
    ids = []
    for model, control_type, image_is_control in (
        ("tiny-sd", "depth", False),
        ("tiny-sd2", "canny", False),
        ("tiny-sd", "depth", True),
    ):
        params = {
            "width": 64,
            "height": 64,
            "steps": 3,
            "seed": "7",
            "sampler_name": "k_euler",
            "control_type": control_type,
            "image_is_control": image_is_control,
        }
        body = {"prompt": "a red cat", "models": [model], "source_image": webp(SQUARE), "params": params}
        reply = await api.post("/v2/generate/async", body)
        assert reply.status == 202, reply.body
        ids.append(reply.body["id"])
    async with running(NodeDaemon(config)):
        [generation] = (await finished(api, ids[2]))["generations"]
        assert generation["state"] == "ok", generation
        checks = [(await api.get(f"/v2/generate/check/{request_id}")).body for request_id in ids[:2]]
    for check in checks:
        assert (check["waiting"], check["processing"], check["finished"], check["is_possible"]) == (1, 0, 0, False)
    image = await fetch_pixels(generation["img"])
    assert image.shape == (64, 64, 3) and image.std() > 1
