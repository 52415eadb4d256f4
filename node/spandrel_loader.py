"""Loading post-processor weights with spandrel, which recognises the architecture from the weights alone,
so real files and the tiny random ones the tests build load through the same call."""

from __future__ import annotations

import importlib.util
import sys
import types
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from node.pipelines import MODULE_BUILD_LOCK

# The formats spandrel reads, in the order a name's file is looked for.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".ckpt")


class PostProcessingError(RuntimeError):
    """A post-processor's weights are missing, unreadable or not what its name promises."""


def load_descriptor(name: str, path: Path, device: torch.device) -> Any:
    """spandrel's descriptor of the weights in `path`, served under the AI Horde name `name`."""
    spandrel = import_spandrel()
    with MODULE_BUILD_LOCK:
        try:
            return spandrel.ModelLoader(device=device).load_from_file(path)
        except Exception as error:
            raise PostProcessingError(f"{name}: cannot load {path}: {error}") from error


def weight_file(folder: Path, name: str) -> Path | None:
    """The file named after post-processor `name` in `folder` (RealESRGAN_x4plus.pth, GFPGAN.pth, ...)."""
    existing = [folder / f"{name}{suffix}" for suffix in WEIGHT_SUFFIXES if (folder / f"{name}{suffix}").is_file()]
    return existing[0] if existing else None


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
