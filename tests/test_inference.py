"""The node's inference layer on a real (tiny, random-weight) Stable Diffusion pipeline."""

from __future__ import annotations

import importlib.util
import io
import threading
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

from node.catalog import BUILTIN_MODELS, Catalog, ModelSpec, UnknownModel
from node.devices import pick_device, pick_dtype
from node.inference import Generator, encode_image
from node.job_inputs import clip_skip_embeddings
from node.jobspec import (
    GeneratedImage,
    InferenceAborted,
    InferenceFailed,
    JobRejected,
    JobSpec,
    LoraSpec,
    split_prompt,
)
from node.pipelines import PipelineCache, load_pipeline, pipeline_bytes
from node.samplers import SAMPLERS, NumpyLMSDiscreteScheduler, UnsupportedSampler, make_scheduler
from node.tiny_model import TINY_MODEL_NAME
from protocol.samplers import SamplerName
from protocol.seeds import seed_number
from tests.fixtures_models import tiny_catalog, tiny_spec

PROMPT = "a photo of a cat sitting on a red chair, highly detailed"
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tiny_model_dir: Path) -> PipelineCache:
    return PipelineCache(tiny_catalog(tiny_model_dir), CPU)


@pytest.fixture(scope="module")
def generator(cache: PipelineCache) -> Generator:
    return Generator(cache, CPU)


@pytest.fixture(scope="module")
def source(generator: Generator) -> Image.Image:
    return generator.run(job(seed="7"))[0].image


def job(
    source_image: Image.Image | None = None,
    source_mask: Image.Image | None = None,
    source_processing: str = "txt2img",
    **overrides: Any,
) -> JobSpec:
    payload = {
        "prompt": PROMPT,
        "ddim_steps": 4,
        "width": 64,
        "height": 64,
        "seed": "1234",
        "n_iter": 1,
        "sampler_name": "k_euler_a",
        "cfg_scale": 7.0,
        "karras": False,
        "clip_skip": 1,
        **overrides,
    }
    return JobSpec.from_payload(TINY_MODEL_NAME, payload, source_image, source_mask, source_processing)


def image_of(generator: Generator, spec: JobSpec) -> Image.Image:
    [result] = generator.run(spec)
    assert result.faulted_reason is None and result.image is not None
    return result.image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def half_mask(size: int = 64) -> Image.Image:
    """White (repaint) on the left half."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))
    return mask


# -- txt2img and determinism ---------------------------------------------------------------------


def test_txt2img_returns_an_image_of_the_requested_size(generator: Generator) -> None:
    results = generator.run(job(width=64, height=96))
    assert [type(result) for result in results] == [GeneratedImage]
    assert results[0].image is not None and results[0].image.size == (64, 96)
    assert results[0].seed == 1234 and results[0].faulted_reason is None


def test_same_seed_gives_identical_bytes(generator: Generator) -> None:
    first, second = image_of(generator, job()), image_of(generator, job())
    assert first.tobytes() == second.tobytes()


def test_different_seed_gives_different_pixels(generator: Generator) -> None:
    first, second = image_of(generator, job(seed="1")), image_of(generator, job(seed="2"))
    assert np.abs(pixels(first) - pixels(second)).mean() > 5


def test_a_batch_has_one_distinct_image_per_seed(generator: Generator) -> None:
    results = generator.run(job(seed="100", n_iter=4))
    assert [result.seed for result in results] == [100, 101, 102, 103]
    assert len({result.image.tobytes() for result in results if result.image}) == 4


def test_a_batch_image_matches_the_same_seed_run_alone(generator: Generator) -> None:
    batch = generator.run(job(seed="100", n_iter=3))
    alone = image_of(generator, job(seed="102"))
    assert batch[2].image is not None and batch[2].image.tobytes() == alone.tobytes()


def test_explicit_seeds_are_used_as_given(generator: Generator) -> None:
    results = generator.run(job(seeds=[5, 9]))
    assert [result.seed for result in results] == [5, 9]


# -- samplers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [*SAMPLERS, "DDIM"])
def test_every_horde_sampler_runs_or_is_rejected_with_a_reason(generator: Generator, sampler: str) -> None:
    spec = job(sampler_name=sampler, ddim_steps=2)
    recipe = SAMPLERS[sampler.lower()]
    if recipe.requires and importlib.util.find_spec(recipe.requires) is None:
        with pytest.raises(JobRejected, match=recipe.requires):
            generator.run(spec)
        return
    assert image_of(generator, spec).size == (64, 64)


def test_every_protocol_sampler_name_is_mapped() -> None:
    assert {name.lower() for name in get_args(SamplerName)} == set(SAMPLERS)


def test_karras_changes_the_sigma_schedule(generator: Generator) -> None:
    plain = image_of(generator, job(sampler_name="k_dpmpp_2m", karras=False, ddim_steps=6))
    karras = image_of(generator, job(sampler_name="k_dpmpp_2m", karras=True, ddim_steps=6))
    assert plain.tobytes() != karras.tobytes()


def test_karras_flag_reaches_the_scheduler(cache: PipelineCache, tiny_model_dir: Path) -> None:
    base = cache.get(tiny_spec(tiny_model_dir)).scheduler.config
    assert make_scheduler("k_euler", True, base).config.use_karras_sigmas is True
    assert make_scheduler("k_euler", False, {**base, "use_karras_sigmas": True}).config.use_karras_sigmas is False


def test_unknown_sampler_is_rejected(generator: Generator) -> None:
    with pytest.raises(JobRejected, match="unknown sampler"):
        generator.run(job(sampler_name="k_magic"))
    with pytest.raises(UnsupportedSampler):
        make_scheduler("k_magic", False, {})


def test_sampler_does_not_stick_to_the_cached_pipeline(generator: Generator, cache: PipelineCache) -> None:
    pipe = cache.get(cache.catalog.resolve(TINY_MODEL_NAME))
    original = pipe.scheduler
    generator.run(job(sampler_name="k_lms", karras=True))
    assert pipe.scheduler is original


def test_numpy_lms_coefficients_match_numerical_integration() -> None:
    scheduler = NumpyLMSDiscreteScheduler()
    scheduler.set_timesteps(10)
    sigmas = scheduler.sigmas.double().numpy()
    t, order = 5, 4
    for current in range(order):
        others = [sigmas[t - k] for k in range(order) if k != current]
        taus = np.linspace(sigmas[t], sigmas[t + 1], 20001)
        basis = np.prod([(taus - s) / (sigmas[t - current] - s) for s in others], axis=0)
        expected = np.sum((basis[1:] + basis[:-1]) / 2 * np.diff(taus))
        assert scheduler.get_lms_coefficient(order, t, current) == pytest.approx(expected, rel=1e-6)


# -- img2img, inpainting, clip skip, tiling ------------------------------------------------------


def test_img2img_changes_the_image_and_keeps_its_size(generator: Generator, source: Image.Image) -> None:
    result = image_of(generator, job(source, None, "img2img", denoising_strength=0.5, seed="3"))
    assert result.size == source.size
    assert np.abs(pixels(result) - pixels(source)).mean() > 1


def test_img2img_strength_scales_the_change(generator: Generator, source: Image.Image) -> None:
    def change(strength: float) -> float:
        spec = job(source, None, "img2img", denoising_strength=strength, ddim_steps=8, seed="3")
        return float(np.abs(pixels(image_of(generator, spec)) - pixels(source)).mean())

    assert change(0.25) < change(1.0)


def test_img2img_resizes_a_source_of_another_size(generator: Generator, source: Image.Image) -> None:
    big = source.resize((128, 96))
    assert image_of(generator, job(big, None, "img2img", denoising_strength=0.5)).size == (64, 64)


def test_inpainting_repaints_inside_the_mask_only(generator: Generator, source: Image.Image) -> None:
    result = image_of(generator, job(source, half_mask(), "inpainting", seed="11"))
    diff = np.abs(pixels(result) - pixels(source)).mean(axis=2)
    inside, outside = diff[:, :32].mean(), diff[:, 32:].mean()
    assert inside > 10 and inside > 10 * outside


def test_inpainting_takes_the_mask_from_transparency(generator: Generator, source: Image.Image) -> None:
    with_alpha = source.convert("RGBA")
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (0, 0, 32, 64))  # transparent left half: repaint it
    with_alpha.putalpha(alpha)
    result = image_of(generator, job(with_alpha, None, "outpainting", seed="11"))
    diff = np.abs(pixels(result) - pixels(source)).mean(axis=2)
    assert diff[:, :32].mean() > 10 * max(diff[:, 32:].mean(), 0.1)


def test_inpainting_without_any_mask_is_rejected(generator: Generator, source: Image.Image) -> None:
    with pytest.raises(JobRejected, match="mask"):
        generator.run(job(source.convert("RGB"), None, "inpainting"))


def test_img2img_without_a_source_is_rejected(generator: Generator) -> None:
    with pytest.raises(JobRejected, match="source image"):
        generator.run(job(None, None, "img2img"))


def test_too_few_steps_for_the_strength_is_rejected(generator: Generator, source: Image.Image) -> None:
    with pytest.raises(JobRejected, match="no step"):
        generator.run(job(source, None, "img2img", ddim_steps=2, denoising_strength=0.2))


def test_clip_skip_2_gives_a_different_image(generator: Generator) -> None:
    assert image_of(generator, job(clip_skip=1)).tobytes() != image_of(generator, job(clip_skip=2)).tobytes()


def test_clip_skip_embeddings_follow_the_pipeline_convention(cache: PipelineCache) -> None:
    # Skipping no layer must reproduce the pipeline's own prompt embeddings exactly.
    pipe = cache.get(cache.catalog.resolve(TINY_MODEL_NAME))
    expected, _ = pipe.encode_prompt(PROMPT, CPU, 1, False)
    assert torch.equal(clip_skip_embeddings(pipe, PROMPT, 0), expected)
    assert not torch.equal(clip_skip_embeddings(pipe, PROMPT, 1), expected)


def test_clip_skip_beyond_the_text_encoder_is_rejected(generator: Generator) -> None:
    with pytest.raises(JobRejected, match="clip_skip"):
        generator.run(job(clip_skip=99))


def test_tiling_runs_and_restores_the_convolutions(generator: Generator, cache: PipelineCache) -> None:
    plain = image_of(generator, job())
    tiled = image_of(generator, job(tiling=True))
    assert tiled.tobytes() != plain.tobytes()
    pipe = cache.get(cache.catalog.resolve(TINY_MODEL_NAME))
    modes = {m.padding_mode for m in pipe.unet.modules() if isinstance(m, torch.nn.Conv2d)}
    assert modes == {"zeros"}
    assert image_of(generator, job()).tobytes() == plain.tobytes()


# -- rejections, progress, aborts and failures ----------------------------------------------------


def test_unknown_model_is_rejected(generator: Generator) -> None:
    spec = job()
    spec.model = "no-such-model"
    with pytest.raises(JobRejected, match="no-such-model"):
        generator.run(spec)


@pytest.mark.parametrize("size", [(60, 64), (64, 100), (0, 64)])
def test_size_not_a_multiple_of_8_is_rejected(generator: Generator, size: tuple[int, int]) -> None:
    with pytest.raises(JobRejected, match="multiple of 8"):
        generator.run(job(width=size[0], height=size[1]))


def test_loras_are_rejected_when_not_allowed(cache: PipelineCache, tmp_path: Path) -> None:
    (tmp_path / "style.safetensors").write_bytes(b"")
    with pytest.raises(JobRejected, match="LoRA"):
        Generator(cache, CPU, tmp_path, allow_lora=False).run(job(loras=[{"name": "style"}]))


def test_missing_lora_is_rejected(cache: PipelineCache, tmp_path: Path) -> None:
    with pytest.raises(JobRejected, match="'missing'"):
        Generator(cache, CPU, tmp_path, allow_lora=True).run(job(loras=[{"name": "missing"}]))


def test_lora_names_cannot_leave_the_lora_folder(cache: PipelineCache, tmp_path: Path) -> None:
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    (tmp_path / "secret.safetensors").write_bytes(b"")
    with pytest.raises(JobRejected, match="not available"):
        Generator(cache, CPU, lora_dir, allow_lora=True).run(job(loras=[{"name": "../secret"}]))


def test_step_progress_counts_over_the_whole_job(generator: Generator) -> None:
    steps: list[tuple[int, int]] = []
    generator.run(job(n_iter=2, ddim_steps=3), on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(i, 6) for i in range(1, 7)]


def test_should_abort_stops_the_job_and_leaves_the_model_usable(generator: Generator, cache: PipelineCache) -> None:
    steps: list[int] = []
    with pytest.raises(InferenceAborted):
        generator.run(
            job(n_iter=3), on_step=lambda done, total: steps.append(done), should_abort=lambda: len(steps) >= 2
        )
    assert steps == [1, 2]
    assert image_of(generator, job()).size == (64, 64)


def test_a_job_waiting_for_a_busy_model_can_be_aborted(generator: Generator, cache: PipelineCache) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            generator.run(job(), should_abort=lambda: True)
        except BaseException as error:
            errors.append(error)

    with cache.lease(cache.catalog.resolve(TINY_MODEL_NAME)):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], InferenceAborted)


def test_out_of_memory_becomes_inference_failed(
    generator: Generator, cache: PipelineCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    pipe = cache.get(cache.catalog.resolve(TINY_MODEL_NAME))
    original = pipe.scheduler
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", out_of_memory)
    with pytest.raises(InferenceFailed, match="out of memory") as caught:
        generator.run(job())
    assert "out of memory" in caught.value.reason
    assert pipe.scheduler is original


@pytest.mark.parametrize("source", ["empty-folder", "horde-network-tests/no-such-model"])
def test_a_model_that_cannot_load_is_an_inference_failure(tmp_path: Path, source: str) -> None:
    folder_or_hub_id = str(tmp_path) if source == "empty-folder" else source
    catalog = Catalog({"broken": ModelSpec("broken", folder_or_hub_id, "stable_diffusion_1")})
    payload = {"prompt": "x", "width": 64, "height": 64, "ddim_steps": 1, "seed": "1"}
    with pytest.raises(InferenceFailed, match="could not load model 'broken'"):
        Generator(PipelineCache(catalog, CPU), CPU).run(JobSpec.from_payload("broken", payload))


# -- LoRAs (need peft) ----------------------------------------------------------------------------


def _write_tiny_lora(pipe: StableDiffusionPipeline, path: Path, rank: int = 2) -> None:
    """A random LoRA on every attention projection, in diffusers' peft key format."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for prefix, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and name.rsplit(".", 1)[-1] in {"to_q", "to_v", "q_proj", "v_proj"}:
                down = torch.randn(rank, layer.in_features, generator=generator) * 0.5
                up = torch.randn(layer.out_features, rank, generator=generator) * 0.5
                tensors[f"{prefix}.{name}.lora_A.weight"] = down
                tensors[f"{prefix}.{name}.lora_B.weight"] = up
    save_file(tensors, str(path))


def test_lora_changes_the_image_and_is_unloaded_after(cache: PipelineCache, tmp_path: Path) -> None:
    pytest.importorskip("peft", reason="peft is not installed; LoRA loading needs it")
    _write_tiny_lora(cache.get(cache.catalog.resolve(TINY_MODEL_NAME)), tmp_path / "tiny-lora.safetensors")
    lora_generator = Generator(cache, CPU, tmp_path, allow_lora=True)
    plain = image_of(lora_generator, job())
    with_lora = image_of(lora_generator, job(loras=[{"name": "tiny-lora", "model": 1.0, "clip": 1.0}]))
    zero_strength = image_of(lora_generator, job(loras=[{"name": "tiny-lora", "model": 0.0, "clip": 0.0}]))
    assert with_lora.tobytes() != plain.tobytes()
    assert np.abs(pixels(zero_strength) - pixels(plain)).max() <= 1
    assert image_of(lora_generator, job()).tobytes() == plain.tobytes()


# -- the pipeline cache ---------------------------------------------------------------------------


class CountingLoader:
    def __init__(self) -> None:
        self.loads: list[str] = []

    def __call__(self, spec: ModelSpec, dtype: torch.dtype) -> StableDiffusionPipeline:
        self.loads.append(spec.name)
        return load_pipeline(spec, dtype)


def test_cache_loads_a_model_once(tiny_model_dir: Path) -> None:
    loader = CountingLoader()
    cache = PipelineCache(tiny_catalog(tiny_model_dir), CPU, loader=loader)
    spec = tiny_spec(tiny_model_dir)
    first = cache.get(spec)
    assert cache.get(spec) is first
    assert loader.loads == [TINY_MODEL_NAME]
    assert first.safety_checker is None and first.dtype == torch.float32


def test_img2img_and_inpaint_share_the_loaded_weights(tiny_model_dir: Path) -> None:
    loader = CountingLoader()
    cache = PipelineCache(tiny_catalog(tiny_model_dir), CPU, loader=loader)
    spec = tiny_spec(tiny_model_dir)
    txt2img, img2img, inpaint = (cache.get(spec, kind) for kind in ("txt2img", "img2img", "inpaint"))
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert img2img.unet is txt2img.unet and inpaint.vae is txt2img.vae
    assert cache.get(spec, "img2img") is img2img
    assert loader.loads == [TINY_MODEL_NAME]


def test_cache_evicts_when_the_budget_is_tiny(tiny_model_dir: Path) -> None:
    loader = CountingLoader()
    cache = PipelineCache(tiny_catalog(tiny_model_dir, "alias"), CPU, budget_bytes=1, loader=loader)
    first = cache.get(cache.catalog.resolve(TINY_MODEL_NAME))
    cache.get(cache.catalog.resolve("alias"))
    assert cache.loaded() == ["alias"]
    assert cache.get(cache.catalog.resolve(TINY_MODEL_NAME)) is not first
    assert loader.loads == [TINY_MODEL_NAME, "alias", TINY_MODEL_NAME]


def test_cache_evicts_the_least_recently_used(tiny_model_dir: Path) -> None:
    catalog = tiny_catalog(tiny_model_dir, "b", "c")
    size = pipeline_bytes(load_pipeline(catalog.resolve(TINY_MODEL_NAME), torch.float32))
    cache = PipelineCache(catalog, CPU, budget_bytes=2 * size + size // 2)
    for name in (TINY_MODEL_NAME, "b", TINY_MODEL_NAME, "c"):
        cache.get(catalog.resolve(name))
    assert cache.loaded() == [TINY_MODEL_NAME, "c"]
    assert cache.used_bytes() == 2 * size


def test_models_load_safely_on_several_threads_at_once(tiny_model_dir: Path) -> None:
    # Unguarded, parallel from_pretrained calls leave modules on the meta device, for good.
    caches = [PipelineCache(tiny_catalog(tiny_model_dir), CPU) for _ in range(3)]
    failures: list[dict[str, str]] = []
    threads = [threading.Thread(target=lambda c=c: failures.append(c.preload([TINY_MODEL_NAME]))) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == [{}, {}, {}]
    assert torch.nn.Linear(2, 2).weight.device == CPU


def test_preload_reports_progress_and_failures(tiny_model_dir: Path) -> None:
    cache = PipelineCache(tiny_catalog(tiny_model_dir), CPU)
    seen: list[tuple[str, float]] = []
    failed = cache.preload([TINY_MODEL_NAME, "nope"], lambda name, fraction: seen.append((name, fraction)))
    assert seen == [(TINY_MODEL_NAME, 0.0), (TINY_MODEL_NAME, 1.0), ("nope", 0.0), ("nope", 1.0)]
    assert set(failed) == {"nope"} and cache.loaded() == [TINY_MODEL_NAME]


# -- payload parsing ------------------------------------------------------------------------------


def test_from_payload_reads_an_ai_horde_payload() -> None:
    spec = JobSpec.from_payload(
        "stable_diffusion",
        {
            "prompt": "a castle ### blurry, lowres",
            "ddim_steps": 25,
            "n_iter": 2,
            "width": 512,
            "height": 768,
            "seed": "42",
            "sampler_name": "k_dpmpp_2m",
            "cfg_scale": 6.5,
            "karras": True,
            "denoising_strength": 0.6,
            "clip_skip": 2,
            "tiling": True,
            "loras": [{"name": "style", "model": 0.8, "clip": 0.5}, {"name": "other"}],
        },
    )
    assert (spec.prompt, spec.negative_prompt) == ("a castle", "blurry, lowres")
    assert (spec.steps, spec.width, spec.height, spec.seeds) == (25, 512, 768, [42, 43])
    assert (spec.sampler_name, spec.cfg_scale, spec.karras, spec.clip_skip) == ("k_dpmpp_2m", 6.5, True, 2)
    assert spec.denoising_strength == 0.6 and spec.tiling and spec.source_processing == "txt2img"
    assert spec.loras == [LoraSpec("style", 0.8, 0.5), LoraSpec("other", 1.0, 1.0)]


def test_explicit_negative_prompt_joins_the_inline_one() -> None:
    assert split_prompt("cat ### dog", "ugly") == ("cat", "dog, ugly")
    assert split_prompt("cat", None) == ("cat", None)
    assert split_prompt("cat###", "") == ("cat", None)


def test_seeds_from_strings() -> None:
    assert seed_number("123") == 123
    assert seed_number(str(2**32 + 5)) == 5
    assert seed_number("hello") == seed_number("hello") != seed_number("hullo")
    assert 0 <= seed_number("hello") < 2**32
    assert 0 <= seed_number("") < 2**32
    spec = JobSpec.from_payload("m", {"prompt": "x", "seed": str(2**32 - 1), "n_iter": 2})
    assert spec.seeds == [2**32 - 1, 0]


@pytest.mark.parametrize("payload", [{"width": "wide"}, {"loras": [{"model": 1.0}]}, {"loras": "style"}])
def test_malformed_payload_is_rejected(payload: dict[str, Any]) -> None:
    with pytest.raises(JobRejected, match="malformed"):
        JobSpec.from_payload("m", {"prompt": "x", **payload})


def test_explicit_nulls_take_the_defaults() -> None:
    nulls = {"prompt": "x", "seed": "3", "clip_skip": None, "n_iter": None, "karras": None, "loras": None}
    spec = JobSpec.from_payload("m", nulls)
    assert (spec.clip_skip, spec.seeds, spec.karras, spec.loras) == (1, [3], False, [])


# -- catalog, devices, encoding -------------------------------------------------------------------


def test_catalog_resolves_builtin_and_configured_models(tiny_model_dir: Path) -> None:
    catalog = Catalog.from_config(
        {
            "mine": {"source": str(tiny_model_dir), "baseline": "stable_diffusion_1"},
            "sd-turbo": {"source": "/models/turbo.safetensors", "baseline": "stable_diffusion_2"},
        }
    )
    assert catalog.resolve("stable_diffusion").source == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert catalog.resolve("SDXL 1.0").baseline == "stable_diffusion_xl"
    assert catalog.resolve("mine").is_local and not catalog.resolve("mine").is_single_file
    assert catalog.resolve("sd-turbo").is_single_file  # configured entries override built-ins
    assert "sd-turbo" in BUILTIN_MODELS and BUILTIN_MODELS["sd-turbo"].baseline == "stable_diffusion_2"
    with pytest.raises(UnknownModel):
        catalog.resolve("nope")
    with pytest.raises(KeyError):
        catalog["nope"]


@pytest.mark.parametrize(
    "entry", [{"source": "x"}, {"source": "x", "baseline": "flux"}, {"baseline": "stable_diffusion_1"}]
)
def test_catalog_rejects_bad_entries(entry: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="bad"):
        Catalog.from_config({"bad": entry})


def test_devices() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("cuda:1") == torch.device("cuda:1")
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert pick_device(None) == CPU
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(CPU) == torch.float32


def test_encode_image_webp_round_trips(source: Image.Image) -> None:
    lossless = Image.open(io.BytesIO(encode_image(source, lossless=True)))
    assert lossless.format == "WEBP" and lossless.convert("RGB").tobytes() == source.tobytes()
    lossy = Image.open(io.BytesIO(encode_image(source, quality=90)))
    assert lossy.size == source.size and np.abs(pixels(lossy) - pixels(source)).mean() < 20
    assert Image.open(io.BytesIO(encode_image(source, fmt="png"))).tobytes() == source.tobytes()
    assert Image.open(io.BytesIO(encode_image(source.convert("RGBA"), fmt="jpeg"))).format == "JPEG"
