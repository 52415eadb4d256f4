"""The node's one inference entry point: an AI Horde job in, images (or a reason they're missing) out.

Pure: no HTTP and no coordinator knowledge. The daemon builds a JobSpec from a pop response, calls
Generator.run from a worker thread and submits what comes back. Three kinds of failure are kept apart:
JobRejected (the node can't honour the payload; raised before anything runs), InferenceFailed (it
broke while running, including out-of-memory) and InferenceAborted (should_abort asked it to stop).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import USE_PEFT_BACKEND
from PIL import Image

from node.catalog import ModelSpec, UnknownModel
from node.controlnet import check_control, control_map
from node.embeddings import inject, textual_inversions, ti_files
from node.features import Features
from node.hires import first_pass_size, hires_strength, native_size
from node.job_inputs import (
    check_clip_skip,
    check_shape,
    denoising_strength,
    pipeline_inputs,
    pipeline_kind,
    prompt_inputs,
)
from node.jobspec import (
    GeneratedImage,
    InferenceAborted,
    InferenceFailed,
    JobRejected,
    JobSpec,
    LoraSpec,
    TiSpec,
)
from node.pipeline_overrides import job_sampler, load_lora, lora_weights, seamless
from node.pipelines import LeaseAbandoned, PipelineCache, PipelineKind
from node.safety import CENSORSHIP_METADATA, check_policy, placeholder
from node.samplers import UnsupportedSampler, check_sampler

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
    post_processing_order: str
    facefixer_strength: float
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
        check_clip_skip(pipe, job.clip_skip)
        hires = self._hires(pipe, job, plan)
        with ExitStack() as patches:
            patches.enter_context(job_sampler(pipe, job))
            if hires is not None:
                patches.enter_context(job_sampler(hires.pipe, job))
            patches.enter_context(self._loras(pipe, plan.lora_files))
            patches.enter_context(textual_inversions(pipe, plan.ti_files))
            patches.enter_context(seamless(pipe, job.tiling))
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
        check_shape(job)
        try:
            check_sampler(job.sampler_name)
        except UnsupportedSampler as error:
            raise JobRejected(str(error)) from None
        control = check_control(job, spec.baseline, self.features.controlnets)
        # A ControlNet job's source is its control map, not an image to start from.
        kind: PipelineKind = "txt2img" if control else pipeline_kind(job)
        strength = denoising_strength(job, kind)
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
            post_processing_order=job.post_processing_order,
            facefixer_strength=job.facefixer_strength,
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
        inputs = {**pipeline_inputs(job, plan.kind, plan.strength), **prompt_inputs(pipe, job, plan.spec.baseline)}
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
        image, notes = self.features.postprocessors.apply(
            generated.image, plan.post_processing, plan.post_processing_order, plan.facefixer_strength
        )
        generated = GeneratedImage(image, generated.seed, metadata=[*generated.metadata, *notes])
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
            pixels = _denoise(
                hires.pipe, job, {**second, "image": first, "strength": hires.strength}, generator, callback
            )
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
                load_lora(pipe, lora, path, name)
            pipe.set_adapters(names, adapter_weights=lora_weights(pipe, names, lora_files))
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
