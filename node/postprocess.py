"""Post-processing with spandrel: AI Horde's upscaler names mapped to weight files the operator has.

The node's post-processor folder holds files named after AI Horde's upscalers (RealESRGAN_x4plus.pth,
as Real-ESRGAN publishes it, or .safetensors); each file found is an upscaler the node serves.

spandrel recognises the architecture from the weights alone (ESRGAN/Real-ESRGAN, SRVGG "Compact",
SwinIR, ...), so `RealESRGAN_x4plus` is whatever RealESRGAN_x4plus.pth-like file the operator points it
at, loaded the same way whether it is the real one or the tiny random one the tests build. A file whose
scale is not the name's (protocol.samplers.UPSCALE_FACTORS, the size rule the coordinator checks
results against) is refused at load, never run.

Face fixers are not offered: spandrel's GFPGAN needs faces found and aligned first (facexlib, which
AI Horde's workers run), and CodeFormer's licence is non-commercial; a node declares only what it runs.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from node.pipelines import MODULE_BUILD_LOCK
from protocol.samplers import UPSCALE_FACTORS

# The formats spandrel reads, in the order a name's file is looked for.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".ckpt")


class PostProcessingError(RuntimeError):
    """A post-processor's weights are missing, unreadable or not what its name promises."""


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
        spandrel, path = import_spandrel(), self.path
        with MODULE_BUILD_LOCK:
            try:
                descriptor = spandrel.ModelLoader(device=self.device).load_from_file(path)
            except Exception as error:
                raise PostProcessingError(f"{self.name}: cannot load {path}: {error}") from error
        if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
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
    """The upscalers this node serves, by AI Horde name."""

    def __init__(self, files: Mapping[str, Path], device: torch.device) -> None:
        self._upscalers = {name: Upscaler(name, path, device) for name, path in files.items()}

    @property
    def names(self) -> list[str]:
        return sorted(self._upscalers)

    def missing(self, names: list[str]) -> list[str]:
        return [name for name in names if name not in self._upscalers]

    def load(self, names: list[str]) -> None:
        for name in names:
            self._upscalers[name].load()

    def apply(self, image: Image.Image, names: list[str]) -> Image.Image:
        """The image through each named post-processor, in the order the job lists them."""
        for name in names:
            image = self._upscalers[name](image)
        return image


def available(folder: Path) -> dict[str, Path]:
    """The upscalers in `folder`: files named after AI Horde's upscalers (RealESRGAN_x4plus.pth, ...)."""
    if not folder.is_dir() or importlib.util.find_spec("spandrel") is None:
        return {}
    found: dict[str, Path] = {}
    for name in UPSCALE_FACTORS:
        files = [folder / f"{name}{suffix}" for suffix in WEIGHT_SUFFIXES]
        existing = [file for file in files if file.is_file()]
        if existing:
            found[name] = existing[0]
    return found


def import_spandrel() -> Any:
    """spandrel, importable beside a CPU-only torch.

    spandrel imports torchvision for two architectures (LaMa inpainting, RestoreFormer) that the node
    never loads; PyPI's torchvision wheels are built for CUDA torch and fail beside a CPU build. Where
    torchvision is absent, a stand-in module gives those two imports names that fail if ever called.
    """
    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel
    stand_ins = _torchvision_stand_in()
    sys.modules.update(stand_ins)
    try:
        import spandrel
    finally:
        # spandrel keeps what it imported; other libraries must go on seeing no torchvision at all.
        for name in stand_ins:
            sys.modules.pop(name, None)
    return spandrel


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def unavailable(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("this model needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")  # type: ignore[attr-defined,misc]
    functional.rotate = unavailable  # type: ignore[attr-defined]
    functional.normalize = unavailable  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    root = types.ModuleType("torchvision")
    root.transforms = transforms  # type: ignore[attr-defined]
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
