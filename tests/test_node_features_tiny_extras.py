"""`horde-node make-tiny-extras`: the tiny companions build from nothing, small and identical each time,
in the formats of the real weights they stand in for; and the pop of a node that has them declares them."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from node import cli
from node.config import build_config
from node.console import Console
from node.features import declared
from node.popper import Popper
from node.postprocess import available
from node.tiny_extras import CONTROLNET_FOLDER, EXTRAS_INDEX, TI_FOLDER, TINY_FACE_FIXER, TINY_TI
from protocol.samplers import CONTROL_TYPES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_the_command_builds_the_same_small_extras_every_time(
    tmp_path: Path, tiny_extras_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["make-tiny-extras", str(tmp_path / "extras")]) == 0
    assert "RealESRGAN_x4plus" in capsys.readouterr().out
    built = tmp_path / "extras"
    assert digests(built) == digests(tiny_extras_dir)
    # Small but for GFPGAN, which spandrel builds at full size only (174 MB): nine ControlNets of about
    # 0.6 MB (one per AI Horde control type) are most of the rest.
    sizes = {path.name: path.stat().st_size for path in built.rglob("*") if path.is_file()}
    assert sizes.pop(f"{TINY_FACE_FIXER}.safetensors") < 180 * 1024 * 1024
    assert sum(sizes.values()) < 8 * 1024 * 1024
    index = json.loads((built / EXTRAS_INDEX).read_text())
    assert index[TINY_TI] == f"{TI_FOLDER}/{TINY_TI}.safetensors"
    # Real formats: a checker folder with its image processor, upscaler files named as AI Horde names
    # them, diffusers ControlNet folders; no pickles anywhere.
    assert (built / "safety-flag-all" / "preprocessor_config.json").is_file()
    assert sorted(available(built)) == ["GFPGAN", "RealESRGAN_x2plus", "RealESRGAN_x4plus"]
    assert (built / CONTROLNET_FOLDER / "canny" / "diffusion_pytorch_model.safetensors").is_file()
    assert not [path for path in built.rglob("*") if path.suffix in (".bin", ".pt", ".pth", ".ckpt")]


def test_a_pop_carries_everything_the_node_declares(tmp_path: Path, tiny_extras_dir: Path) -> None:
    """The declarations reach the wire: PopRequest ignores fields it does not know, so a misspelt one
    would silently declare nothing."""
    config = build_config(
        {
            "allow_lora": True,
            "blacklist": ["dragon"],
            "ti_dir": str(tiny_extras_dir / TI_FOLDER),
            "safety_checker": str(tiny_extras_dir / "safety-pass-all"),
            "post_processor_dir": str(tiny_extras_dir),
            "controlnet_dir": str(tiny_extras_dir / CONTROLNET_FOLDER),
        },
        tmp_path,
    )
    popper = Popper(None, config, Console(), None, asyncio.Event(), print)  # type: ignore[arg-type]
    pop = popper.request().model_dump()
    assert {key: pop[key] for key in declared(config)} == declared(config)
    assert pop["features"] == ["hires_fix", "censor_nsfw", "tis"] and pop["blacklist"] == ["dragon"]
    assert pop["allow_post_processing"]
    assert pop["post_processors"] == ["GFPGAN", "RealESRGAN_x2plus", "RealESRGAN_x4plus"]
    # A tiny ControlNet for each of AI Horde's types; the node makes only canny and scribble maps itself.
    assert pop["allow_controlnet"] and pop["control_types"] == sorted(CONTROL_TYPES)
    assert pop["annotators"] == ["canny", "scribble"] and pop["allow_sdxl_controlnet"] is False
