"""What a job asks of the node: the JobSpec parsed from an AI Horde pop payload, and how a job can fail.

JobRejected: the node can't honour the payload (raised before anything runs); InferenceFailed: it broke
while running, including out-of-memory; InferenceAborted: should_abort asked it to stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from protocol.samplers import POST_PROCESSING_ORDERS
from protocol.seeds import SEED_SPACE, seed_number

SOURCE_PROCESSINGS: tuple[str, ...] = ("txt2img", "img2img", "inpainting", "outpainting")
NEGATIVE_SEPARATOR = "###"


class JobRejected(Exception):
    """The node cannot honour this payload; nothing was run. Submit the job as faulted with `.reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def checked_strength(field: str, strength: float, steps: int) -> float:
    """A denoising strength a pipeline can run: in (0, 1] and leaving at least one of `steps` to run."""
    if not 0.0 < strength <= 1.0:
        raise JobRejected(f"{field} {strength} is outside (0, 1]")
    if int(steps * strength) < 1:
        raise JobRejected(f"{steps} steps at {field} {strength} leave no step to run")
    return strength


class InferenceFailed(RuntimeError):
    """Inference started but broke (out of memory, a model error); `.reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InferenceAborted(Exception):
    """should_abort returned True (watchdog or shutdown); the partial job is discarded."""


@dataclass(frozen=True)
class LoraSpec:
    name: str
    model_strength: float = 1.0
    clip_strength: float = 1.0


@dataclass(frozen=True)
class TiSpec:
    """A textual inversion: AI Horde's name for it, where its token goes ("prompt", "negprompt" or None: the
    requester wrote `embedding:<name>` in the prompt) and how strongly."""

    name: str
    inject: str | None = None
    strength: float = 1.0


@dataclass
class JobSpec:
    """Everything one AI Horde image job asks for, already parsed and typed."""

    model: str
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    cfg_scale: float
    seeds: list[int]
    sampler_name: str = "k_euler"
    karras: bool = False
    clip_skip: int = 1
    denoising_strength: float | None = None
    source_image: Image.Image | None = None
    source_mask: Image.Image | None = None
    source_processing: str = "txt2img"
    loras: list[LoraSpec] = field(default_factory=list)
    tiling: bool = False
    censor_nsfw: bool = False
    post_processing: list[str] = field(default_factory=list)
    post_processing_order: str = "facefixers_first"
    facefixer_strength: float = 0.75
    hires_fix: bool = False
    hires_fix_denoising_strength: float | None = None
    tis: list[TiSpec] = field(default_factory=list)
    control_type: str | None = None
    image_is_control: bool = False
    return_control_map: bool = False

    @classmethod
    def from_payload(
        cls,
        model: str,
        payload: Mapping[str, Any],
        source_image: Image.Image | None = None,
        source_mask: Image.Image | None = None,
        source_processing: str = "txt2img",
    ) -> JobSpec:
        """Parse an AI Horde pop `payload` dict; malformed values raise JobRejected."""
        try:
            get = _Reader(payload)
            prompt, negative = split_prompt(str(get("prompt", "")), payload.get("negative_prompt"))
            return cls(
                model=model,
                prompt=prompt,
                negative_prompt=negative,
                width=int(get("width", 512)),
                height=int(get("height", 512)),
                steps=int(get("ddim_steps", 30)),
                cfg_scale=float(get("cfg_scale", 7.5)),
                seeds=_payload_seeds(get),
                sampler_name=str(get("sampler_name", "k_euler")),
                karras=bool(get("karras", False)),
                clip_skip=int(get("clip_skip", 1)),
                denoising_strength=_optional_float(payload.get("denoising_strength")),
                source_image=source_image,
                source_mask=source_mask,
                source_processing=source_processing or "txt2img",
                loras=[_lora(_Reader(entry)) for entry in get("loras", [])],
                tiling=bool(get("tiling", False)),
                censor_nsfw=bool(get("use_nsfw_censor", False)),
                post_processing=[str(name) for name in get("post_processing", [])],
                post_processing_order=_choice(get("post_processing_order", "facefixers_first"), POST_PROCESSING_ORDERS),
                facefixer_strength=_fraction(get("facefixer_strength", 0.75)),
                hires_fix=bool(get("hires_fix", False)),
                hires_fix_denoising_strength=_optional_float(payload.get("hires_fix_denoising_strength")),
                tis=[_ti(_Reader(entry)) for entry in get("tis", [])],
                control_type=None if payload.get("control_type") is None else str(payload["control_type"]),
                image_is_control=bool(get("image_is_control", False)),
                return_control_map=bool(get("return_control_map", False)),
            )
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise JobRejected(f"malformed payload: {error!r}") from error


class _Reader:
    """Payload values with defaults; an explicit null counts as absent, as the AI Horde sends them."""

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        self.mapping = mapping

    def __call__(self, key: str, default: Any) -> Any:
        value = self.mapping.get(key)
        return default if value is None else value

    def required(self, key: str) -> Any:
        value = self.mapping.get(key)
        if value is None:
            raise KeyError(key)
        return value


@dataclass
class GeneratedImage:
    """One image of a job: `image` is None when that image faulted, with `faulted_reason` saying why.

    `censored` images were replaced by a placeholder; `metadata` holds AI Horde gen_metadata entries."""

    image: Image.Image | None
    seed: int
    faulted_reason: str | None = None
    censored: bool = False
    metadata: list[dict[str, str]] = field(default_factory=list)


def split_prompt(prompt: str, negative_prompt: object = None) -> tuple[str, str | None]:
    """AI Horde prompts carry the negative after '###'; an explicit negative_prompt is appended to it."""
    positive, _, inline_negative = prompt.partition(NEGATIVE_SEPARATOR)
    parts = [inline_negative.strip(), str(negative_prompt or "").strip()]
    negative = ", ".join(part for part in parts if part)
    return positive.strip(), negative or None


def _payload_seeds(get: _Reader) -> list[int]:
    explicit = get.mapping.get("seeds")
    if explicit:
        return [seed_number(seed) for seed in explicit]
    base = seed_number(get.mapping.get("seed"))
    return [(base + i) % SEED_SPACE for i in range(int(get("n_iter", 1)))]


def _choice(value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return str(value)


def _fraction(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    if not 0 <= number <= 1:
        raise ValueError(f"{number} is not between 0 and 1")
    return number


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _ti(get: _Reader) -> TiSpec:
    inject = get.mapping.get("inject_ti")
    return TiSpec(
        name=str(get.required("name")),
        inject=None if inject is None else str(inject),
        strength=float(get("strength", 1.0)),
    )


def _lora(get: _Reader) -> LoraSpec:
    return LoraSpec(
        name=str(get.required("name")),
        model_strength=float(get("model", 1.0)),
        clip_strength=float(get("clip", 1.0)),
    )
