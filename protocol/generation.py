"""Requester-side models of the AI Horde v2 image API (`/v2/generate/async|check|status`).

Field names, defaults and bounds are AI Horde's, so existing clients work unchanged.
Unknown fields are ignored rather than rejected, as AI Horde does; `None` for an optional
field means "use the default", because clients such as horde_sdk send explicit nulls.
"""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.extensions import ours
from protocol.samplers import ControlType, PostProcessingOrder, PostProcessor, SamplerName, SourceProcessing
from protocol.seeds import seed_text

LENIENT = ConfigDict(extra="ignore", populate_by_name=True)

# Bounds on what one request may carry (docs/security.md, "Bounds on every input"). Every list and
# string has one: each is stored, copied into answers, or walked by a pop, and one anonymous request
# must cost a bounded number of bytes.
NAME_MAX = 100  # a worker, model or user name (AI Horde: worker and user names ≤ 100 characters)
REQUEST_MODELS_MAX = 32  # each is a queue row per image, so this times `n` rows at most
REQUEST_WORKERS_MAX = 20
LORA_NAME_MAX = 255  # AI Horde's
POST_PROCESSOR_NAME_MAX = 64  # AI Horde's names are under 30 characters
# No base64 image field is longer than the default body limit (20 MiB) could carry anyway.
BASE64_IMAGE_MAX = 20 * 1024 * 1024
METADATA_MAX = 32  # gen_metadata entries of one image (AI Horde: one per LoRA, TI, censorship, source)
METADATA_TEXT_MAX = 255  # AI Horde bounds `ref` at 255
WEBHOOK_URL_MAX = 1024  # AI Horde's

Name = Annotated[str, Field(max_length=NAME_MAX)]


class NullMeansDefault(BaseModel):
    """A request model whose `null` fields take their defaults: AI Horde's clients send `null` for
    "not given". `KEEP_NULLS` names the fields where null itself means something."""

    KEEP_NULLS: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None or key in cls.KEEP_NULLS}
        return data


class LoraEntry(BaseModel):
    model_config = LENIENT

    name: str = Field(min_length=1, max_length=LORA_NAME_MAX)
    model: float = Field(default=1.0, ge=-5, le=5)
    clip: float = Field(default=1.0, ge=-5, le=5)
    inject_trigger: str | None = Field(default=None, min_length=1, max_length=30)  # AI Horde's bounds
    is_version: bool = False  # `name` is a CivitAI model *version* id, not a model id


class TextualInversionEntry(BaseModel):
    """AI Horde's `ModelPayloadTextualInversionsStable`."""

    model_config = LENIENT

    name: str = Field(min_length=1, max_length=LORA_NAME_MAX)
    inject_ti: Literal["prompt", "negprompt"] | None = None
    strength: float = Field(default=1.0, ge=-5, le=5)


class GenerationParams(NullMeansDefault):
    model_config = LENIENT
    KEEP_NULLS = frozenset({"seed"})

    sampler_name: SamplerName = "k_euler_a"
    cfg_scale: float = Field(default=7.5, ge=0, le=100)
    denoising_strength: float = Field(default=0.75, ge=0.01, le=1)
    seed: str | None = Field(default=None, max_length=256)
    seed_variation: int | None = Field(default=None, ge=1, le=1000)
    width: int = Field(default=512, ge=64, le=3072, multiple_of=64)
    height: int = Field(default=512, ge=64, le=3072, multiple_of=64)
    steps: int = Field(default=30, ge=1, le=500, validation_alias=AliasChoices("steps", "ddim_steps"))
    n: int = Field(default=1, ge=1, le=20, validation_alias=AliasChoices("n", "n_iter"))
    karras: bool = False
    clip_skip: int = Field(default=1, ge=1, le=12)
    tiling: bool = False
    hires_fix: bool = False
    hires_fix_denoising_strength: float = Field(default=0.65, ge=0, le=1)
    loras: list[LoraEntry] = Field(default_factory=list, max_length=5)
    tis: list[TextualInversionEntry] = Field(default_factory=list, max_length=20)  # AI Horde's bound
    post_processing: list[PostProcessor] = Field(default_factory=list, max_length=10)
    post_processing_order: PostProcessingOrder = "facefixers_first"
    facefixer_strength: float = Field(default=0.75, ge=0, le=1)
    control_type: ControlType | None = None
    image_is_control: bool = False
    return_control_map: bool = False
    # Accepted so that they can be refused by name (coordinator/capabilities.py): no node honours them.
    workflow: str | None = Field(default=None, max_length=POST_PROCESSOR_NAME_MAX)
    transparent: bool = False
    extra_texts: list[dict[str, Any]] = Field(default_factory=list, max_length=10)
    special: dict[str, Any] = Field(default_factory=dict, max_length=10)

    seed_as_string = field_validator("seed", mode="before")(seed_text)


class GenerationRequest(NullMeansDefault):
    """`POST /v2/generate/async` body (AI Horde's `GenerationInputStable`)."""

    model_config = LENIENT

    prompt: str = Field(min_length=1, max_length=20000)
    params: GenerationParams = Field(default_factory=GenerationParams)
    models: list[Name] = Field(default_factory=list, max_length=REQUEST_MODELS_MAX)
    nsfw: bool = False
    censor_nsfw: bool = False
    trusted_workers: bool = False
    slow_workers: bool = True
    extra_slow_workers: bool | None = None  # explicit false: never an extra-slow node (None: as slow_workers)
    disable_batching: bool = False  # one image per pop, so each image's seed runs alone
    # Accepted so that they can be refused by name when set (coordinator/capabilities.py).
    allow_downgrade: bool = False
    proxied_account: str | None = Field(default=None, max_length=NAME_MAX)
    workers: list[Name] = Field(default_factory=list, max_length=REQUEST_WORKERS_MAX)
    worker_blacklist: bool = False
    source_image: str | None = Field(default=None, max_length=BASE64_IMAGE_MAX)
    source_processing: SourceProcessing = "img2img"
    source_mask: str | None = Field(default=None, max_length=BASE64_IMAGE_MAX)
    extra_source_images: list[dict[str, Any]] = Field(default_factory=list, max_length=5)
    style: str | None = Field(default=None, max_length=NAME_MAX)
    r2: bool = True
    shared: bool = False  # refused when true: this network gives images to no dataset (coordinator/capabilities.py)
    # AI Horde's: sanitize a prompt its filter would refuse instead of refusing it. Met either way here: the
    # coordinator neither refuses nor rewrites a prompt for its words (docs/api.md).
    replacement_filter: bool = True
    validated_backends: bool | None = None  # refused when true: no backend is vouched for (capabilities.py)
    dry_run: bool = False
    # AI Horde's: a URL POSTed each finished image and the completion, signed by the coordinator (RFC 9421).
    webhook: str | None = Field(default=None, min_length=10, max_length=WEBHOOK_URL_MAX, pattern=r"^https?://[^\s]+$")

    @property
    def positive_prompt(self) -> str:
        return self.prompt.split("###", 1)[0].strip()

    @property
    def negative_prompt(self) -> str | None:
        parts = self.prompt.split("###", 1)
        return parts[1].strip() if len(parts) == 2 and parts[1].strip() else None

    @property
    def is_img2img(self) -> bool:
        return self.source_image is not None and self.source_processing == "img2img"

    @property
    def is_painting(self) -> bool:
        return self.source_image is not None and self.source_processing in ("inpainting", "outpainting")


class RequestWarning(BaseModel):
    code: str
    message: str


class RequestAccepted(BaseModel):
    """202 answer to `POST /v2/generate/async`."""

    id: str
    kudos: float
    message: str = ""  # a string, never null: horde_sdk's RequestAsync model rejects null
    warnings: list[RequestWarning] = Field(default_factory=list)


class DryRunResult(BaseModel):
    kudos: float


class RequestCheck(BaseModel):
    """`GET /v2/generate/check/{id}`: progress without the images."""

    finished: int
    processing: int
    restarted: int
    waiting: int
    done: bool
    faulted: bool
    wait_time: int
    queue_position: int
    kudos: float
    is_possible: bool
    # Ours: when `is_possible` is false, why (which requirement no online node meets).
    is_possible_reason: str | None = ours()
    # Ours: the requester cancelled it (`done` is then true once nothing is still being made).
    cancelled: bool = ours(False)


class GenMetadataEntry(BaseModel):
    model_config = LENIENT

    type: str = Field(max_length=METADATA_TEXT_MAX)
    value: str = Field(max_length=METADATA_TEXT_MAX)
    ref: str | None = Field(default=None, max_length=METADATA_TEXT_MAX)


class Generation(BaseModel):
    """One delivered image, with the signatures that prove where it came from (our extension)."""

    id: str
    img: str
    seed: str
    worker_id: str
    worker_name: str
    model: str
    state: str
    censored: bool
    gen_metadata: list[GenMetadataEntry] = Field(default_factory=list)
    # Provenance (ours): sent only to clients that ask for it (protocol/extensions.py).
    worker_key: str | None = ours()
    signature: str | None = ours()
    image_sha256: str | None = ours()
    job: dict[str, Any] | None = ours()
    job_signature: str | None = ours()


class RequestStatus(RequestCheck):
    """`GET|DELETE /v2/generate/status/{id}`: progress plus the images made so far."""

    generations: list[Generation] = Field(default_factory=list)
    shared: bool = False
