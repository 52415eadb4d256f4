"""Post-processing with spandrel: AI Horde's upscaler and face fixer names mapped to weight files the
operator has.

The node's post-processor folder holds files named after AI Horde's post-processors (RealESRGAN_x4plus.pth,
as Real-ESRGAN publishes it, GFPGAN.pth for GFPGAN's GFPGANv1.4.pth, or .safetensors); each file found is
a post-processor the node serves and declares, and no other is.

spandrel recognises the architecture from the weights alone (ESRGAN/Real-ESRGAN, SRVGG "Compact",
SwinIR, GFPGAN, ...), so `RealESRGAN_x4plus` is whatever RealESRGAN_x4plus.pth-like file the operator
points it at, loaded the same way whether it is the real one or the tiny random one the tests build. A file
whose scale is not the name's (protocol.samplers.UPSCALE_FACTORS, the size rule the coordinator checks
results against) is refused at load, never run; so is a face fixer's file of another architecture.

Face fixers (node/facefix.py): `GFPGAN` on the faces OpenCV's Haar cascades find, served only where OpenCV
bundles them; `CodeFormers` never (spandrel leaves CodeFormer out for its non-commercial licence).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from node.facefix import FACE_FIXER_ARCHITECTURES, FaceFixer, cascades_available
from node.spandrel_loader import PostProcessingError, load_descriptor, weight_file
from protocol.samplers import FACEFIXERS, UPSCALE_FACTORS

__all__ = ["PostProcessingError", "PostProcessors", "Upscaler", "available", "in_order"]


class Upscaler:
    """One named upscaler, loaded on first use and kept."""

    def __init__(self, name: str, path: Path, device: torch.device) -> None:
        self.name, self.path, self.device = name, path, device
        self.scale = UPSCALE_FACTORS[name]
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                self._model = self._load()

    def _load(self) -> Any:
        descriptor, path = load_descriptor(self.name, self.path, self.device), self.path
        if descriptor.purpose != "SR":
            raise PostProcessingError(f"{self.name}: {path} is not an upscaler ({descriptor.architecture.name})")
        if descriptor.scale != self.scale:
            raise PostProcessingError(f"{self.name}: {path} scales by {descriptor.scale}, the name means {self.scale}")
        return descriptor.eval()

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Image.Image:
        self.load()
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        tensor = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(self.device)
        output = self._model(tensor).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
        return Image.fromarray((output * 255).round().astype(np.uint8))


class PostProcessors:
    """The upscalers and face fixers this node serves, by AI Horde name."""

    def __init__(self, files: Mapping[str, Path], device: torch.device) -> None:
        self._upscalers = {
            name: Upscaler(name, path, device) for name, path in files.items() if name in UPSCALE_FACTORS
        }
        self._fixers = {
            name: FaceFixer(name, path, device) for name, path in files.items() if name not in UPSCALE_FACTORS
        }

    @property
    def names(self) -> list[str]:
        return sorted([*self._upscalers, *self._fixers])

    def missing(self, names: list[str]) -> list[str]:
        return [name for name in names if name not in self._upscalers and name not in self._fixers]

    def load(self, names: list[str]) -> None:
        for name in names:
            (self._upscalers.get(name) or self._fixers[name]).load()

    def apply(
        self, image: Image.Image, names: list[str], order: str = "custom", strength: float = 0.75
    ) -> tuple[Image.Image, list[dict[str, str]]]:
        """The image through each named post-processor in the job's order (face fixers at `strength`), and
        gen_metadata entries saying what the face fixers found."""
        metadata = []
        for name in in_order(names, order):
            if name in self._fixers:
                image, faces = self._fixers[name](image, strength)
                # AI Horde's informational entry: the requester sees whether a face was found to fix.
                metadata.append({"type": "information", "value": "see_ref", "ref": f"{name}: {faces} face(s) fixed"})
            else:
                image = self._upscalers[name](image)
        return image, metadata


def in_order(names: list[str], order: str) -> list[str]:
    """AI Horde's post_processing_order: face fixers before the rest (`facefixers_first`, its default),
    after them (`upscalers_first`), or exactly as listed (`custom`)."""
    fixers = [name for name in names if name in FACEFIXERS]
    others = [name for name in names if name not in fixers]
    if order == "facefixers_first":
        return fixers + others
    if order == "upscalers_first":
        return others + fixers
    return list(names)


def available(folder: Path) -> dict[str, Path]:
    """The post-processors in `folder`: files named after AI Horde's (RealESRGAN_x4plus.pth, GFPGAN.pth, ...)."""
    if not folder.is_dir() or importlib.util.find_spec("spandrel") is None:
        return {}
    # A face fixer needs faces found first: without OpenCV's cascades the node cannot run one.
    names = [*UPSCALE_FACTORS, *(FACE_FIXER_ARCHITECTURES if cascades_available() else ())]
    files = {name: weight_file(folder, name) for name in names}
    return {name: file for name, file in files.items() if file is not None}
