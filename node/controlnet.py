"""ControlNet (AI Horde's `control_type`): the source image turned into a control map, and an SD 1.x
model guided by the ControlNet for that type, through diffusers' StableDiffusionControlNetPipeline.

The node's ControlNet folder holds one diffusers-format ControlNet per AI Horde control type, in a
subfolder of that name (`canny/` from lllyasviel/sd-controlnet-canny, `depth/` from
lllyasviel/sd-controlnet-depth, ...). With `image_is_control` the source already is the map, so every
type whose ControlNet is there is served (`control_types` in the pop). From a plain image the node makes
the map of two types only (`annotators` in the pop): `canny` (OpenCV's Canny edges, the thresholds
ControlNet was trained with) and `scribble` (the requester's dark-on-light drawing as light-on-dark
lines). The other types need annotator networks (HED for hed and fakescribbles, MiDaS for depth and
normal, OpenPose, a segmenter, M-LSD for hough) that the node does not have; an image operation in
their place would make a map their ControlNet was not trained on, so they are not declared, and the
coordinator sends such jobs only to nodes that declare the annotator (AI Horde's workers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import ControlNetModel, DiffusionPipeline, StableDiffusionControlNetPipeline
from PIL import Image

from node.devices import pick_dtype
from node.jobspec import JobRejected, JobSpec
from node.pipelines import MODULE_BUILD_LOCK
from protocol.samplers import CONTROL_TYPES

CANNY_THRESHOLDS = (100, 200)  # lllyasviel's ControlNet annotator's (and AI Horde's) defaults
SCRIBBLE_INK = 127  # darker than this is a line


def canny(image: Image.Image) -> Image.Image:
    edges = cv2.Canny(np.asarray(image.convert("RGB")), *CANNY_THRESHOLDS)
    return Image.fromarray(edges).convert("RGB")


def scribble(image: Image.Image) -> Image.Image:
    ink = np.asarray(image.convert("RGB")).min(axis=2) < SCRIBBLE_INK
    return Image.fromarray(np.where(ink, 255, 0).astype(np.uint8)).convert("RGB")


ANNOTATORS: dict[str, Callable[[Image.Image], Image.Image]] = {"canny": canny, "scribble": scribble}


def control_map(image: Image.Image, control_type: str, image_is_control: bool, size: tuple[int, int]) -> Image.Image:
    """The map the ControlNet is guided by, at the job's size."""
    source = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return source if image_is_control else ANNOTATORS[control_type](source)


class ControlNets:
    """The ControlNets in the node's folder, by control type, each loaded on first use and kept."""

    def __init__(self, folder: Path | None, device: torch.device) -> None:
        self.device = device
        self.folders = available(folder) if folder is not None else {}
        self._models: dict[str, ControlNetModel] = {}
        self._lock = threading.Lock()

    def serves(self, control_type: str, image_is_control: bool) -> bool:
        return control_type in self.folders and (image_is_control or control_type in ANNOTATORS)

    def load(self, control_type: str) -> ControlNetModel:
        with self._lock:
            if control_type not in self._models:
                with MODULE_BUILD_LOCK:
                    model = ControlNetModel.from_pretrained(self.folders[control_type], dtype=pick_dtype(self.device))
                self._models[control_type] = model.to(self.device).eval()
            return self._models[control_type]

    def pipeline(self, base: DiffusionPipeline, control_type: str) -> StableDiffusionControlNetPipeline:
        """A ControlNet pipeline sharing the loaded model's modules (no copy of its weights)."""
        pipe = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=self.load(control_type), dtype=base.dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def check_control(job: JobSpec, baseline: str, controlnets: ControlNets) -> str | None:
    """The job's control type, once it is known this node can honour it (JobRejected otherwise)."""
    control = job.control_type
    if control is None:
        return None
    if control in controlnets.folders and not controlnets.serves(control, job.image_is_control):
        raise JobRejected(f"this node cannot make a {control!r} map; send the map itself with image_is_control")
    if not controlnets.serves(control, job.image_is_control):
        raise JobRejected(f"ControlNet {control!r} is not served by this node")
    if baseline != "stable_diffusion_1":
        raise JobRejected(f"this node's ControlNets are for SD 1.x models, not {baseline}")
    if job.source_image is None:
        raise JobRejected("ControlNet needs a source image")
    if job.source_processing not in ("txt2img", "img2img"):
        raise JobRejected(f"ControlNet with {job.source_processing} is not supported by this node")
    if job.hires_fix:
        raise JobRejected("hires_fix with ControlNet is not supported by this node")
    return control


def available(folder: Path) -> dict[str, Path]:
    """Subfolders named after a control type that hold a diffusers ControlNet."""
    if not folder.is_dir():
        return {}
    return {path.name: path for path in sorted(folder.iterdir()) if (path / "config.json").is_file()}


def declared_types(folder: Path) -> tuple[list[str], list[str]]:
    """The control types a node with this folder runs (with `image_is_control`, any of AI Horde's types
    it has a ControlNet for), and those among them whose map it can also make from a plain image."""
    present = [name for name in available(folder) if name in CONTROL_TYPES]
    return present, [name for name in present if name in ANNOTATORS]
