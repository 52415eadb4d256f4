"""What a job demands of a node, and whether a node can honour it: ONE table, read three ways.

Each row pairs a queue column (the job's demand) with the `WorkerCaps` attribute that answers it.
From the same row come the Python predicate (wake-ups in coordinator/events.py, `skipped` and
`is_possible`) and the SQL filter of the pop query (coordinator/storage/sql.py), so the two cannot
drift apart: tests/test_capabilities.py checks them against each other over random jobs and nodes.

Kinds: `flag` (the job needs it; the node has it or not), `limit` (the job's number is at most the
node's), `member` (the job's value, unless '', is one of the node's list; None: the node takes any),
`subset` (the job's bitmask of names is within the node's; None: the node takes any).
`skip` is AI Horde's `skipped` key for a node that lacks the capability; what AI Horde has no key for
counts under `bridge_version`, AI Horde's key for "this worker's software cannot do what the job asks".

What a node can do with a job may depend on the baseline of the model it runs it on (a ControlNet or a
TI fits one baseline): every form reads the node's abilities through `on_model`, for the row's model.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from coordinator.errors import HordeError, bad_request
from coordinator.storage.records import WorkerCaps
from protocol.baselines import CASCADE, FLUX, SD1, SD2, SDXL, family, reference_family
from protocol.errors import RC
from protocol.generation import GenerationRequest
from protocol.jobs import PopRequest
from protocol.samplers import post_processor_mask

Kind = Literal["flag", "limit", "member", "subset"]


@dataclass(frozen=True)
class Capability:
    column: str  # the queue column (and QueueEntry field) holding the job's demand
    node: str  # the WorkerCaps attribute holding what the node can do
    kind: Kind
    skip: str  # AI Horde's `skipped` key
    words: str  # "No online node …" when none has it (`is_possible_reason`)

    def allows(self, caps: WorkerCaps, demand: Any) -> bool:
        have = getattr(caps, self.node)
        if self.kind == "flag":
            return not demand or bool(have)
        if self.kind == "limit":
            return bool(demand <= have)
        if self.kind == "subset":
            return have is None or demand | have == have
        return have is None or demand == "" or demand in have

    def sql(self, caps: WorkerCaps) -> tuple[str, list[Any]] | None:
        """The WHERE term (with its arguments) that keeps only jobs this node can honour; None: no filter."""
        have = getattr(caps, self.node)
        if self.kind == "flag":
            return None if have else (f"{self.column} = 0", [])
        if self.kind == "limit":
            return f"{self.column} <= ?", [have]
        if have is None:
            return None
        if self.kind == "subset":
            return f"({self.column} | ?) = ?", [have, have]
        marks = ", ".join("?" * len(have))
        return (f"({self.column} = '' OR {self.column} IN ({marks}))" if have else f"{self.column} = ''"), sorted(have)


# Order matters only for `skipped`: a job is counted under its first failing row, as AI Horde does.
CAPABILITIES: tuple[Capability, ...] = (
    Capability("pixels", "max_pixels", "limit", "max_pixels", "accepts images this large"),
    Capability("steps", "max_steps", "limit", "step_count", "accepts this many steps"),
    Capability("nsfw", "nsfw", "flag", "nsfw", "accepts NSFW requests"),
    Capability("img2img", "img2img", "flag", "img2img", "accepts img2img"),
    Capability("painting", "painting", "flag", "painting", "accepts inpainting"),
    Capability("lora", "lora", "flag", "lora", "accepts LoRAs"),
    Capability("lora_civitai", "lora_civitai", "flag", "lora", "finds LoRAs by CivitAI version or trigger"),
    # AI Horde gates TIs with allow_lora (`skip` lora).
    Capability("tis", "tis", "flag", "lora", "accepts textual inversions for these models"),
    Capability("post_processing", "post_processing", "flag", "post-processing", "accepts post-processing"),
    Capability("post_processors", "post_processors", "subset", "post-processing", "runs these post-processors"),
    Capability("controlnet", "controlnet", "flag", "controlnet", "accepts ControlNet for these models"),
    Capability("control_type", "control_types", "member", "controlnet", "runs this ControlNet type"),
    Capability("annotator", "annotators", "member", "controlnet", "makes this ControlNet type's map from an image"),
    Capability("hires_fix", "hires_fix", "flag", "bridge_version", "does hires fix"),
    Capability("censor", "censor", "flag", "bridge_version", "runs an NSFW censor"),
    Capability("sampler", "samplers", "member", "bridge_version", "runs this sampler"),
    Capability("trusted_only", "trusted", "flag", "untrusted", "is trusted"),
)
DEMAND_COLUMNS = tuple(capability.column for capability in CAPABILITIES)


def demands(body: GenerationRequest, sourced: bool) -> dict[str, Any]:
    """What a request's jobs demand, by queue column. `sourced`: the request has a source image (a
    stored request's body keeps no source, so the caller says; the body's field is not trusted)."""
    params = body.params
    processing = body.source_processing if sourced else "txt2img"
    return {
        "pixels": params.width * params.height,
        "steps": params.steps,
        "nsfw": body.nsfw,
        "img2img": processing == "img2img",
        "painting": processing in ("inpainting", "outpainting"),
        "lora": bool(params.loras),
        "lora_civitai": any(lora.is_version or lora.inject_trigger for lora in params.loras),
        "tis": bool(params.tis),
        "post_processing": bool(params.post_processing),
        "post_processors": post_processor_mask(params.post_processing),
        "controlnet": params.control_type is not None,
        "control_type": params.control_type or "",
        "annotator": "" if params.image_is_control else params.control_type or "",
        "hires_fix": params.hires_fix,
        "censor": body.censor_nsfw,
        "sampler": params.sampler_name.lower(),
        "trusted_only": body.trusted_workers,
    }


def row_demands(row: Mapping[str, Any]) -> dict[str, Any]:
    """A queue row's demands, typed as QueueEntry holds them (the engines return flags as 0/1)."""
    return {c.column: bool(row[c.column]) if c.kind == "flag" else row[c.column] for c in CAPABILITIES}


def model_allows(caps: WorkerCaps, model: str) -> bool:
    """A queue row's model ('' for any) against the node's models."""
    return model == "" or model in caps.models


def any_model(caps: WorkerCaps) -> str:
    """The model a node runs a job that names none on (AI Horde's: its first, else stable_diffusion)."""
    return caps.models[0] if caps.models else "stable_diffusion"


def baseline_of(caps: WorkerCaps, model: str) -> str:
    """The family of the model the node would run a row of `model` ('' for any) on: its word, else the
    reference's (protocol/baselines.py)."""
    model = model or any_model(caps)
    return caps.baselines.get(model) or reference_family(model)


def on_model(caps: WorkerCaps, model: str) -> WorkerCaps:
    """The node's abilities for a job run on `model`: ControlNet on SD 2.x needs `sd2_controlnet`, on
    SDXL `allow_sdxl_controlnet`; TIs on SDXL need `sdxl_tis`; Stable Cascade and Flux take neither here
    (no node of this network has either for them, see `refusal`)."""
    baseline = baseline_of(caps, model)
    if baseline == SD1:
        return caps
    if baseline not in caps.by_family:
        controlnet = {SD2: caps.sd2_controlnet, SDXL: caps.sdxl_controlnet}.get(baseline, False)
        tis = {SD2: True, SDXL: caps.sdxl_tis}.get(baseline, False)
        caps.by_family[baseline] = replace(caps, controlnet=caps.controlnet and controlnet, tis=caps.tis and tis)
    return caps.by_family[baseline]


def first_unmet(caps: WorkerCaps, demand: Callable[[str], Any], model: str = "") -> Capability | None:
    """The first capability the job (`demand(column)`) needs and the node lacks on `model` ('' for the
    model it runs a job naming none on); None: it can honour all."""
    able = on_model(caps, model)
    return next((c for c in CAPABILITIES if not c.allows(able, demand(c.column))), None)


def row_skip_reason(row: Mapping[str, Any], caps: WorkerCaps) -> str | None:
    """Why a queue row is not for this node (AI Horde's `skipped` key), the model included; None: it is."""
    if not model_allows(caps, row["model"]):
        return "models"
    unmet = first_unmet(caps, row.__getitem__, row["model"])
    return None if unmet is None else unmet.skip


def sql_filters(caps: WorkerCaps, model: str = "") -> tuple[str, list[Any]]:
    """The pop query's WHERE clause for the rows of `model` (which it walks one by one), and its arguments."""
    able = on_model(caps, model)
    key = ("sql", baseline_of(caps, model))
    if key not in caps.by_family:
        terms, args = [], []
        for capability in CAPABILITIES:
            term = capability.sql(able)
            if term is not None:
                terms.append(term[0])
                args += term[1]
        caps.by_family[key] = (" AND ".join(terms) or "1 = 1", args)
    return caps.by_family[key]


# AI Horde's `limit_max_steps` keeps a worker to about the mean of its model's recommended steps; with no
# model reference here, this is the mean of the usual 20–40 (AI Horde's default range).
LIMITED_MAX_STEPS = 30
MAX_STEPS = 500  # a request's bound (protocol/generation.py)
# What reGen does, by AI Horde's flags (lora_civitai: it finds LoRAs by CivitAI version id and injects triggers).
# AI Horde gives an allow_controlnet worker ControlNet jobs on SD 2.x models (refusing only the types no SD 2.x
# ControlNet exists for, as `baseline_refusal` does) and an allow_lora worker TIs on any model, SDXL included.
AI_HORDE_WORKER_FEATURES = frozenset({"hires_fix", "censor_nsfw", "tis", "lora_civitai", "sd2_controlnet", "sdxl_tis"})


def declared(pop: PopRequest) -> dict[str, Any]:
    """The Worker fields a pop declares. A pop without our extensions is an AI Horde worker's: it runs
    every sampler, hires fix and the censor, and TIs when it takes LoRAs (AI Horde's rule)."""
    features = AI_HORDE_WORKER_FEATURES if pop.features is None else frozenset(pop.features)
    max_steps = pop.max_steps or MAX_STEPS
    return {
        "controlnet": pop.allow_controlnet,
        "sdxl_controlnet": pop.allow_sdxl_controlnet,
        "max_steps": min(max_steps, LIMITED_MAX_STEPS) if pop.limit_max_steps else max_steps,
        "tis": "tis" in features and pop.allow_lora,
        "lora_civitai": "lora_civitai" in features and pop.allow_lora,
        "hires_fix": "hires_fix" in features,
        "censor": "censor_nsfw" in features,
        "samplers": None if pop.samplers is None else sorted({name.lower() for name in pop.samplers}),
        "post_processors": None if pop.post_processors is None else sorted(set(pop.post_processors)),
        "control_types": None if pop.control_types is None else sorted(set(pop.control_types)),
        "annotators": None if pop.annotators is None else sorted(set(pop.annotators)),
        "sd2_controlnet": "sd2_controlnet" in features,
        "sdxl_tis": "sdxl_tis" in features,
        "model_baselines": {model: family(name) for model, name in pop.model_baselines.items() if model in pop.models},
        "approximate_samplers": {name.lower(): note for name, note in pop.approximate_samplers.items()},
        "hardware": pop.hardware or "",
        "allow_unsafe_ip": pop.allow_unsafe_ipaddr,
    }


# What no node of this network honours: refused at submit, before it costs anything, never dropped.
UNSUPPORTED_PARAMS = {
    "workflow": "custom ComfyUI workflows",
    "transparent": "transparent images (LayerDiffuse)",
    "extra_texts": "extra workflow texts",
    "special": "workflow-specific payloads",
}


def refusal(body: GenerationRequest, *, shared_key: bool = False) -> HordeError | None:
    """Why a request cannot be accepted as asked, whatever nodes are online; None: it can. `allow_downgrade`
    is honoured only for a shared key's request (coordinator/sharing.py)."""
    params = body.params
    for name, what in UNSUPPORTED_PARAMS.items():
        if getattr(params, name):
            return bad_request(RC.UNSUPPORTED_PARAMETER, f"params.{name}: no node of this network does {what}.")
    if body.allow_downgrade and not shared_key:
        return bad_request(
            RC.UNSUPPORTED_PARAMETER,
            "allow_downgrade: this network never shrinks a request; it applies only to a shared key's request.",
        )
    if body.shared:
        return bad_request(
            RC.UNSUPPORTED_PARAMETER,
            "shared: this network shares no images with LAION or any dataset; leave shared out or send false.",
        )
    if body.validated_backends:
        return bad_request(
            RC.UNSUPPORTED_PARAMETER,
            "validated_backends: this network vouches for no node's backend (a node's bridge_agent is its own "
            "word); leave it out or send false.",
        )
    if body.proxied_account is not None:
        return bad_request(RC.UNSUPPORTED_PARAMETER, "proxied_account: this network has no proxy accounts.")
    if body.extra_source_images:
        return bad_request(
            RC.UNSUPPORTED_PARAMETER, "extra_source_images: no node of this network does remix or multi-image jobs."
        )
    if params.control_type is not None and body.source_image is None:
        return bad_request(RC.CONTROLNET_SOURCE_MISSING, "ControlNet (params.control_type) needs a source_image.")
    if (params.image_is_control or params.return_control_map) and params.control_type is None:
        return bad_request(RC.VALIDATION, "image_is_control and return_control_map need params.control_type.")
    if (refused := baseline_refusal(body)) is not None:
        return refused
    return None


# Control types AI Horde has no SD 2.x ControlNet for (it refuses them on SD 2.x with this rc).
NO_SD2_CONTROLNET = frozenset({"normal", "hough"})


def baseline_refusal(body: GenerationRequest) -> HordeError | None:
    """ControlNet or TIs asked of models whose baseline no node here can do them on (by the reference:
    a node's own word about a model counts only for what that node is sent). A request naming no model
    may run on any, so it is routed."""
    params, models = body.params, body.models
    baselines = {reference_family(model) for model in models}
    if params.control_type is not None and models:
        if SD2 in baselines and params.control_type in NO_SD2_CONTROLNET:
            return bad_request(
                RC.CONTROLNET_UNSUPPORTED, f"No SD 2.x ControlNet exists for control_type {params.control_type!r}."
            )
        if baselines <= {CASCADE, FLUX}:
            return bad_request(RC.CONTROLNET_MISMATCH, "ControlNet does not work with Stable Cascade or Flux models.")
    if params.tis and models and baselines <= {CASCADE, FLUX}:
        return bad_request(RC.UNSUPPORTED_PARAMETER, "params.tis: textual inversions do not work with these models.")
    return None
