"""What a job gives the pipeline: its shape checked, the pipeline kind and strength it needs, and the
image, mask and prompt arguments built from it (clip skip included)."""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageOps

from node.jobspec import SOURCE_PROCESSINGS, JobRejected, JobSpec, checked_strength
from node.pipelines import PipelineKind

DEFAULT_IMG2IMG_STRENGTH = 0.75


def check_shape(job: JobSpec) -> None:
    for label, size in (("width", job.width), ("height", job.height)):
        if size <= 0 or size % 8:
            raise JobRejected(f"{label} {size} is not a positive multiple of 8")
    if job.steps < 1:
        raise JobRejected(f"ddim_steps must be at least 1, not {job.steps}")
    if not job.seeds:
        raise JobRejected("the job asks for no images")
    if not math.isfinite(job.cfg_scale):
        raise JobRejected(f"cfg_scale {job.cfg_scale} is not a number")
    if any(not 0 <= seed < 2**64 for seed in job.seeds):
        raise JobRejected("seeds must be between 0 and 2**64 - 1")


def pipeline_kind(job: JobSpec) -> PipelineKind:
    processing = job.source_processing
    if processing not in SOURCE_PROCESSINGS:
        raise JobRejected(f"source_processing {processing!r} is not supported by this node")
    if processing == "txt2img":
        return "txt2img"
    if job.source_image is None:
        raise JobRejected(f"{processing} needs a source image")
    if processing == "img2img":
        return "img2img"
    if job.source_mask is None and "A" not in job.source_image.getbands():
        raise JobRejected(f"{processing} needs a source mask or a source image with transparency")
    return "inpaint"


def denoising_strength(job: JobSpec, kind: PipelineKind) -> float | None:
    if kind == "txt2img":
        return None
    default = DEFAULT_IMG2IMG_STRENGTH if kind == "img2img" else 1.0
    strength = default if job.denoising_strength is None else job.denoising_strength
    return checked_strength("denoising_strength", strength, job.steps)


def check_clip_skip(pipe: DiffusionPipeline, clip_skip: int) -> None:
    layers = pipe.text_encoder.config.num_hidden_layers
    if not 1 <= clip_skip <= layers:
        raise JobRejected(f"clip_skip {clip_skip} is outside 1..{layers} for this model")


def pipeline_inputs(job: JobSpec, kind: PipelineKind, strength: float | None) -> dict[str, Any]:
    size = (job.width, job.height)
    if kind == "txt2img":
        return {"width": job.width, "height": job.height}
    assert job.source_image is not None  # pipeline_kind guarantees it
    image = fit(job.source_image, size)
    if kind == "img2img":
        return {"image": image.convert("RGB"), "strength": strength}
    return {
        "image": image.convert("RGB"),
        "mask_image": repaint_mask(image, job.source_mask, size),
        "strength": strength,
        "width": job.width,
        "height": job.height,
    }


def prompt_inputs(pipe: DiffusionPipeline, job: JobSpec, baseline: str) -> dict[str, Any]:
    """The prompt arguments; AI Horde's clip_skip 1 means no skip, diffusers counts skipped layers."""
    skip = job.clip_skip - 1
    if skip == 0 or baseline == "stable_diffusion_xl":
        return {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "clip_skip": skip or None}
    # diffusers' SD 1/2 clip_skip path reads text_encoder.text_model, which transformers 5 removed
    # (diffusers issue #14124), so the skipped-layer embeddings are computed here the same way.
    return {
        "prompt_embeds": clip_skip_embeddings(pipe, job.prompt, skip),
        "negative_prompt_embeds": clip_skip_embeddings(pipe, job.negative_prompt or "", skip),
    }


@torch.no_grad()
def clip_skip_embeddings(pipe: DiffusionPipeline, text: str, skip: int) -> torch.Tensor:
    """CLIP hidden states `skip` layers before the last, through the final layer norm (as A1111 does)."""
    encoder = pipe.text_encoder
    # A multi-vector textual inversion's token stands for several: expanded as the pipeline's own path does.
    text = pipe.maybe_convert_prompt(text, pipe.tokenizer)
    tokens = pipe.tokenizer(
        text,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    mask = tokens.attention_mask.to(encoder.device) if getattr(encoder.config, "use_attention_mask", False) else None
    output = encoder(tokens.input_ids.to(encoder.device), attention_mask=mask, output_hidden_states=True)
    final_layer_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    return final_layer_norm(output.hidden_states[-(skip + 1)]).to(dtype=encoder.dtype)


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def repaint_mask(image: Image.Image, mask: Image.Image | None, size: tuple[int, int]) -> Image.Image:
    """White where the model repaints: the given mask, else the source's transparent pixels."""
    if mask is not None:
        return fit(mask.convert("L"), size)
    return ImageOps.invert(image.getchannel("A"))
