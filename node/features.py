"""What this node can do beyond plain generation, from its configuration: the content policy and the
safety checker, post-processors, ControlNets. One place both builds them for the generator and says
what the node declares in its pops, so a node never declares what it cannot run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from node.catalog import Catalog
from node.config import NodeConfig
from node.controlnet import ControlNets, declared_types
from node.devices import configured_dtype, hardware_class, pick_device, torch_threads
from node.postprocess import PostProcessors, available
from node.safety import ContentPolicy, SafetyChecker

# Our extension to AI Horde's pop: names of the optional abilities a node has (AI Horde's own pop
# flags, like allow_post_processing, are declared beside them).
CENSOR_NSFW = "censor_nsfw"
HIRES_FIX = "hires_fix"
TIS = "tis"


@dataclass
class Features:
    """The optional abilities one node process shares between its inference threads."""

    policy: ContentPolicy = field(default_factory=ContentPolicy)
    safety: SafetyChecker | None = None
    postprocessors: PostProcessors = field(default_factory=lambda: PostProcessors({}, torch.device("cpu")))
    ti_dir: Path | None = None  # None: no textual inversions
    controlnets: ControlNets = field(default_factory=lambda: ControlNets(None, torch.device("cpu")))

    @classmethod
    def from_config(cls, config: NodeConfig, device: torch.device) -> Features:
        checker = config.safety_checker_source
        return cls(
            policy=ContentPolicy(nsfw=config.nsfw, blacklist=tuple(config.blacklist)),
            safety=SafetyChecker(checker, device) if checker else None,
            postprocessors=PostProcessors(available(config.post_processor_path), device),
            ti_dir=config.ti_path if serves_tis(config) else None,
            controlnets=ControlNets(config.controlnet_path, device),
        )


def declared(config: NodeConfig) -> dict[str, Any]:
    """The pop fields that say what this node can honour, from its configuration alone."""
    features = [HIRES_FIX] + ([CENSOR_NSFW] if config.safety_checker_source else [])
    features += [TIS] if serves_tis(config) else []
    upscalers = sorted(available(config.post_processor_path))
    control_types, annotated = declared_types(config.controlnet_path)
    return {
        "blacklist": list(config.blacklist),
        "features": features,
        "allow_post_processing": bool(upscalers),
        "post_processors": upscalers,  # ours: which of AI Horde's post-processors, by name
        # SD 1.x ControlNets only: no SD 2.x (feature sd2_controlnet) or SDXL ones (allow_sdxl_controlnet).
        "allow_controlnet": bool(control_types),
        "control_types": control_types,  # ours: which of AI Horde's control types, with image_is_control
        "annotators": annotated,  # ours: those whose map it makes from a plain image
        "model_baselines": model_baselines(config),  # ours: so ControlNet and TI jobs go to models they fit
        "hardware": declared_hardware(config),  # ours: what spot checks compare its images by
    }


def model_baselines(config: NodeConfig) -> dict[str, str]:
    """The baseline of each model the node serves, from its catalog (the pipeline family it loads)."""
    catalog = Catalog.from_config(config.catalog_table())
    return {name: catalog[name].baseline for name in config.models if name in catalog}


def declared_hardware(config: NodeConfig) -> str:
    device = pick_device(None if config.device == "auto" else config.device)
    encoding = (
        "webp-lossless"
        if config.image_format == "webp" and config.image_lossless
        else (f"{config.image_format}-{config.image_quality}")
    )
    threads = torch_threads(device, config.torch_threads)
    return hardware_class(device, configured_dtype(device, config.dtype), threads, encoding)


def serves_tis(config: NodeConfig) -> bool:
    """TIs are downloaded networks like LoRAs: the same switch allows both, as on AI Horde."""
    return config.allow_lora and config.ti_path.is_dir()


class SharedFeatures:
    """One Features per node process, built on first use (it needs the device the cache picked)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._features: Features | None = None
        self._lock = threading.Lock()

    def get(self, device: torch.device) -> Features:
        with self._lock:
            if self._features is None:
                self._features = Features.from_config(self.config, device)
            return self._features
