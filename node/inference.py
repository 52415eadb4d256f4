"""The node's one inference entry point: an AI Horde job in, images (or a reason they're missing) out.

Pure: no HTTP and no coordinator knowledge. The daemon builds a JobSpec from a pop response, calls
Generator.run from a worker thread and submits what comes back. Three kinds of failure are kept apart:
JobRejected (the node can't honour the payload; raised before anything runs), InferenceFailed (it
broke while running, including out-of-memory) and InferenceAborted (should_abort asked it to stop).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import USE_PEFT_BACKEND
from PIL import Image, ImageOps

from node.catalog import ModelSpec, UnknownModel
from node.controlnet import check_control, control_map
from node.embeddings import inject, textual_inversions, ti_files
from node.features import Features
from node.hires import first_pass_size, hires_strength, native_size
from node.jobspec import (
    SOURCE_PROCESSINGS,
    GeneratedImage,
    InferenceAborted,
    InferenceFailed,
    JobRejected,
    JobSpec,
    LoraSpec,
    TiSpec,
    checked_strength,
)
from node.pipelines import MODULE_BUILD_LOCK, LeaseAbandoned, PipelineCache, PipelineKind
from node.safety import CENSORSHIP_METADATA, check_policy, placeholder
from node.samplers import UnsupportedSampler, check_sampler, make_scheduler

DEFAULT_IMG2IMG_STRENGTH = 0.75
StepCallback = Callable[[int, int], None]
AbortCheck = Callable[[], bool]
Tensors = dict[str, Any]


def encode_image(image: Image.Image, fmt: str = "webp", quality: int = 95, lossless: bool = False) -> bytes:
    """The image as `fmt` bytes (webp by default, as the AI Horde submits)."""
    fmt = fmt.upper()
    options: dict[str, Any] = {}
    if fmt == "WEBP":
        options = {"quality": quality, "lossless": lossless}
    elif fmt in ("JPEG", "JPG"):
        fmt, options, image = "JPEG", {"quality": quality}, image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Plan:
    """What a validated job resolves to, computed before anything runs."""

    spec: ModelSpec
    kind: PipelineKind
    strength: float | None
    lora_files: list[tuple[LoraSpec, Path]]
    censor: bool
    post_processing: list[str]
    hires_strength: float | None
    ti_files: list[tuple[TiSpec, Path]]
    control: str | None


@dataclass(frozen=True)
class _Hires:
    """The second pass of a hires-fix job: the img2img pipeline, the first pass's size, the strength."""

    pipe: DiffusionPipeline
    first_size: tuple[int, int]
    strength: float


class Generator:
    """Runs JobSpecs on pipelines from a PipelineCache.

    Several Generators (one per worker thread) may share one cache: a job leases its model for its
    whole run, since its sampler, LoRAs and seamless tiling patch the cached modules in place.
    """

    def __init__(
        self,
        cache: PipelineCache,
        device: torch.device,
        lora_dir: Path | None = None,
        allow_lora: bool = False,
        features: Features | None = None,
    ) -> None:
        self.cache = cache
        self.device = device
        self.lora_dir = lora_dir
        self.allow_lora = allow_lora
        self.features = features or Features()

    def run(
        self,
        job: JobSpec,
        on_step: StepCallback | None = None,
        should_abort: AbortCheck | None = None,
    ) -> list[GeneratedImage]:
        """Generate one image per seed. `on_step(done, total)` counts denoising steps over the whole job."""
        plan = self._plan(job)
        try:
            # Extra models load (or download) on first use, before step 1, under the first step's longer watchdog.
            self.features.postprocessors.load(job.post_processing)
            if plan.censor:
                self.features.safety.load()  # type: ignore[union-attr]
            if plan.control:
                self.features.controlnets.load(plan.control)
            with self.cache.lease(plan.spec, plan.kind, should_abort) as pipe:
                return self._leased(pipe, job, plan, on_step, should_abort)
        except (InferenceAborted, JobRejected):
            raise
        except LeaseAbandoned as error:
            raise InferenceAborted(str(error)) from error
        except torch.OutOfMemoryError as error:
            self._free_device_memory()
            raise InferenceFailed(f"out of memory on {self.device}: {error}") from error
        except Exception as error:
            raise InferenceFailed(f"{type(error).__name__}: {error}") from error

    def _leased(
        self,
        pipe: DiffusionPipeline,
        job: JobSpec,
        plan: _Plan,
        on_step: StepCallback | None,
        should_abort: AbortCheck | None,
    ) -> list[GeneratedImage]:
        """The job on its leased pipeline, patched for it (sampler, LoRAs, TIs, tiling) and restored after."""
        _check_clip_skip(pipe, job.clip_skip)
        hires = self._hires(pipe, job, plan)
        with ExitStack() as patches:
            patches.enter_context(_sampler(pipe, job))
            if hires is not None:
                patches.enter_context(_sampler(hires.pipe, job))
            patches.enter_context(self._loras(pipe, plan.lora_files))
            patches.enter_context(textual_inversions(pipe, plan.ti_files))
            patches.enter_context(_seamless(pipe, job.tiling))
            prompt, negative = inject(job.prompt, job.negative_prompt, job.tis)
            job = replace(job, prompt=prompt, negative_prompt=negative)
            if plan.control:
                # Built per job from the patched pipeline's modules and scheduler: nothing to restore after it.
                pipe = self.features.controlnets.pipeline(pipe, plan.control)
            return self._images(pipe, job, plan, hires, on_step, should_abort)

    def _plan(self, job: JobSpec) -> _Plan:
        try:
            spec = self.cache.catalog.resolve(job.model)
        except UnknownModel:
            raise JobRejected(f"model {job.model!r} is not served by this node") from None
        _check_shape(job)
        try:
            check_sampler(job.sampler_name)
        except UnsupportedSampler as error:
            raise JobRejected(str(error)) from None
        control = check_control(job, spec.baseline, self.features.controlnets)
        # A ControlNet job's source is its control map, not an image to start from.
        kind: PipelineKind = "txt2img" if control else _pipeline_kind(job)
        strength = _strength(job, kind)
        lora_files = self._lora_files(job.loras)
        missing = self.features.postprocessors.missing(job.post_processing)
        if missing:
            raise JobRejected(f"post-processing {', '.join(missing)} is not served by this node")
        censor = check_policy(job, self.features.policy, has_checker=self.features.safety is not None)
        return _Plan(
            spec=spec,
            kind=kind,
            strength=strength,
            lora_files=lora_files,
            censor=censor,
            post_processing=job.post_processing,
            hires_strength=hires_strength(job, kind),
            ti_files=ti_files(self.features.ti_dir, job.tis),
            control=control,
        )

    def _lora_files(self, loras: list[LoraSpec]) -> list[tuple[LoraSpec, Path]]:
        if not loras:
            return []
        if not self.allow_lora or self.lora_dir is None:
            raise JobRejected("this node does not serve LoRAs")
        files = []
        root = self.lora_dir.resolve()
        for lora in loras:
            path = (root / f"{lora.name}.safetensors").resolve()
            # The name comes from the network: it must not climb out of the LoRA folder.
            if path.parent != root or not path.is_file():
                raise JobRejected(f"LoRA {lora.name!r} is not available on this node")
            files.append((lora, path))
        if not USE_PEFT_BACKEND:
            raise JobRejected("this node cannot apply LoRAs: a recent peft package is not installed")
        return files

    def _hires(self, pipe: DiffusionPipeline, job: JobSpec, plan: _Plan) -> _Hires | None:
        """The hires fix's second pass, when the job asks for it and the image is larger than native."""
        if plan.hires_strength is None:
            return None
        first_size = first_pass_size(job.width, job.height, native_size(pipe))
        if first_size is None:
            return None
        # Built from the leased pipeline's modules (no extra memory), under the lease already held.
        return _Hires(self.cache.get(plan.spec, "img2img"), first_size, plan.hires_strength)

    def _images(
        self,
        pipe: DiffusionPipeline,
        job: JobSpec,
        plan: _Plan,
        hires: _Hires | None,
        on_step: StepCallback | None,
        should_abort: AbortCheck | None,
    ) -> list[GeneratedImage]:
        inputs = {**_pipeline_inputs(job, plan), **_prompt_inputs(pipe, job, plan)}
        if hires is not None:
            inputs.update(width=hires.first_size[0], height=hires.first_size[1])
        if plan.control:
            assert job.source_image is not None  # _control guarantees it
            inputs["image"] = control_map(job.source_image, plan.control, job.image_is_control, (job.width, job.height))
            if job.return_control_map:
                # AI Horde's return_control_map: the map is the result, nothing is generated.
                return [self._finished(GeneratedImage(inputs["image"], seed), plan) for seed in job.seeds]
        results = []
        for index, seed in enumerate(job.seeds):
            if should_abort and should_abort():
                raise InferenceAborted(f"aborted before image {index + 1} of {len(job.seeds)}")
            callback = _step_callback(index, len(job.seeds), on_step, should_abort)
            results.append(self._finished(self._image(pipe, job, inputs, seed, callback, hires), plan))
        return results

    def _finished(self, generated: GeneratedImage, plan: _Plan) -> GeneratedImage:
        """The image as it leaves the node: post-processed, then censored (AI Horde's way) if flagged."""
        if generated.image is None:
            return generated
        image = self.features.postprocessors.apply(generated.image, plan.post_processing)
        generated = GeneratedImage(image, generated.seed, metadata=generated.metadata)
        if not plan.censor:
            return generated
        assert self.features.safety is not None  # _censors guarantees it
        if not self.features.safety.flags([image])[0]:
            return generated
        metadata = [*generated.metadata, dict(CENSORSHIP_METADATA)]
        return GeneratedImage(placeholder(image.size), generated.seed, censored=True, metadata=metadata)

    def _image(
        self,
        pipe: DiffusionPipeline,
        job: JobSpec,
        inputs: dict[str, Any],
        seed: int,
        callback: Callable[..., Tensors],
        hires: _Hires | None = None,
    ) -> GeneratedImage:
        # A CPU generator draws the same noise on every device, so a seed reproduces across GPUs, MPS and CPU.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        pixels = _denoise(pipe, job, inputs, generator, callback)
        if hires is not None and np.isfinite(pixels).all():
            first = pipe.numpy_to_pil(pixels[None])[0].resize((job.width, job.height), Image.Resampling.LANCZOS)
            second = {key: value for key, value in inputs.items() if key not in ("width", "height")}
            pixels = _denoise(hires.pipe, job, {**second, "image": first, "strength": hires.strength}, generator,
                              callback)  # fmt: skip
        if not np.isfinite(pixels).all():
            return GeneratedImage(None, seed, "the model produced NaN values (try another sampler or model)")
        image = pipe.numpy_to_pil(pixels[None])[0]
        if "mask_image" in inputs:
            # The VAE round trip blurs what should stay untouched: paste the original back outside the mask.
            image = pipe.image_processor.apply_overlay(inputs["mask_image"], inputs["image"], image)
        return GeneratedImage(image, seed)

    @contextmanager
    def _loras(self, pipe: DiffusionPipeline, lora_files: list[tuple[LoraSpec, Path]]) -> Iterator[None]:
        if not lora_files:
            yield
            return
        names = [f"horde_lora_{i}" for i in range(len(lora_files))]
        try:
            for name, (lora, path) in zip(names, lora_files, strict=True):
                _load_lora(pipe, lora, path, name)
            pipe.set_adapters(names, adapter_weights=_lora_weights(pipe, names, lora_files))
            yield
        finally:
            # The modules are shared with the cache: the next job must see the model without this job's LoRAs.
            pipe.unload_lora_weights()

    def _free_device_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _denoise(
    pipe: DiffusionPipeline,
    job: JobSpec,
    inputs: dict[str, Any],
    generator: torch.Generator,
    callback: Callable[..., Tensors],
) -> np.ndarray:
    output = pipe(
        num_inference_steps=job.steps,
        guidance_scale=job.cfg_scale,
        generator=generator,
        output_type="np",
        callback_on_step_end=callback,
        **inputs,
    )
    return np.asarray(output.images[0])


def _check_shape(job: JobSpec) -> None:
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


def _pipeline_kind(job: JobSpec) -> PipelineKind:
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


def _strength(job: JobSpec, kind: PipelineKind) -> float | None:
    if kind == "txt2img":
        return None
    default = DEFAULT_IMG2IMG_STRENGTH if kind == "img2img" else 1.0
    strength = default if job.denoising_strength is None else job.denoising_strength
    return checked_strength("denoising_strength", strength, job.steps)


def _check_clip_skip(pipe: DiffusionPipeline, clip_skip: int) -> None:
    layers = pipe.text_encoder.config.num_hidden_layers
    if not 1 <= clip_skip <= layers:
        raise JobRejected(f"clip_skip {clip_skip} is outside 1..{layers} for this model")


def _pipeline_inputs(job: JobSpec, plan: _Plan) -> dict[str, Any]:
    size = (job.width, job.height)
    if plan.kind == "txt2img":
        return {"width": job.width, "height": job.height}
    assert job.source_image is not None  # _pipeline_kind guarantees it
    image = _fit(job.source_image, size)
    if plan.kind == "img2img":
        return {"image": image.convert("RGB"), "strength": plan.strength}
    return {
        "image": image.convert("RGB"),
        "mask_image": _repaint_mask(image, job.source_mask, size),
        "strength": plan.strength,
        "width": job.width,
        "height": job.height,
    }


def _prompt_inputs(pipe: DiffusionPipeline, job: JobSpec, plan: _Plan) -> dict[str, Any]:
    """The prompt arguments; AI Horde's clip_skip 1 means no skip, diffusers counts skipped layers."""
    skip = job.clip_skip - 1
    if skip == 0 or plan.spec.baseline == "stable_diffusion_xl":
        return {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "clip_skip": skip or None}
    # diffusers' SD 1/2 clip_skip path reads text_encoder.text_model, which transformers 5 removed
    # (diffusers issue #14124), so the skipped-layer embeddings are computed here the same way.
    return {
        "prompt_embeds": _clip_skip_embeddings(pipe, job.prompt, skip),
        "negative_prompt_embeds": _clip_skip_embeddings(pipe, job.negative_prompt or "", skip),
    }


@torch.no_grad()
def _clip_skip_embeddings(pipe: DiffusionPipeline, text: str, skip: int) -> torch.Tensor:
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


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def _repaint_mask(image: Image.Image, mask: Image.Image | None, size: tuple[int, int]) -> Image.Image:
    """White where the model repaints: the given mask, else the source's transparent pixels."""
    if mask is not None:
        return _fit(mask.convert("L"), size)
    return ImageOps.invert(image.getchannel("A"))


def _step_callback(
    index: int, count: int, on_step: StepCallback | None, should_abort: AbortCheck | None
) -> Callable[..., Tensors]:
    def callback(pipe: DiffusionPipeline, step: int, timestep: Any, tensors: Tensors) -> Tensors:
        if should_abort and should_abort():
            raise InferenceAborted(f"aborted at step {step + 1} of image {index + 1}")
        if on_step:
            # num_timesteps counts model evaluations, which second-order samplers double.
            per_image = pipe.num_timesteps
            on_step(index * per_image + step + 1, count * per_image)
        return tensors

    return callback


def _load_lora(pipe: DiffusionPipeline, lora: LoraSpec, path: Path, adapter_name: str) -> None:
    try:
        with MODULE_BUILD_LOCK:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    except Exception as error:
        raise JobRejected(f"LoRA {lora.name!r} cannot be applied to this model: {error}") from error


def _lora_weights(
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
def _sampler(pipe: DiffusionPipeline, job: JobSpec) -> Iterator[None]:
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
def _seamless(pipe: DiffusionPipeline, enabled: bool) -> Iterator[None]:
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
