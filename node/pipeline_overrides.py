"""Per-job changes to a cached pipeline, each undone afterwards: the job's sampler, seamless tiling,
and LoRA adapters (loaded under the module build lock, weighted per component)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from node.jobspec import JobRejected, JobSpec, LoraSpec
from node.pipelines import MODULE_BUILD_LOCK
from node.samplers import make_scheduler


def load_lora(pipe: DiffusionPipeline, lora: LoraSpec, path: Path, adapter_name: str) -> None:
    try:
        with MODULE_BUILD_LOCK:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    except Exception as error:
        raise JobRejected(f"LoRA {lora.name!r} cannot be applied to this model: {error}") from error


def lora_weights(
    pipe: DiffusionPipeline, names: list[str], lora_files: list[tuple[LoraSpec, Path]]
) -> list[dict[str, float]]:
    # Per-component weights: the UNet takes the model strength, the text encoders the clip strength.
    components = pipe.get_list_adapters()
    weights = []
    for name, (lora, _) in zip(names, lora_files, strict=True):
        strengths = {}
        for component, adapters in components.items():
            if name in adapters:
                strengths[component] = lora.model_strength if component == "unet" else lora.clip_strength
        weights.append(strengths)
    return weights


@contextmanager
def job_sampler(pipe: DiffusionPipeline, job: JobSpec) -> Iterator[None]:
    """The job's sampler on the cached pipeline, then the model's own scheduler back.

    Schedulers are stateful, and every job's sampler is built from the model's original scheduler
    config, which must not pick up the previous job's overrides.
    """
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(job.sampler_name, job.karras, original.config)
    try:
        yield
    finally:
        pipe.scheduler = original


@contextmanager
def seamless(pipe: DiffusionPipeline, enabled: bool) -> Iterator[None]:
    """Circular padding in every convolution makes the image tile seamlessly; undone afterwards."""
    if not enabled:
        yield
        return
    convs = [
        module
        for component in (pipe.unet, pipe.vae)
        for module in component.modules()
        if isinstance(module, torch.nn.Conv2d)
    ]
    original = [conv.padding_mode for conv in convs]
    try:
        for conv in convs:
            conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in zip(convs, original, strict=True):
            conv.padding_mode = mode
