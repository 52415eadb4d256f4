"""The rows the broker works with, independent of the engine that stores them."""

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, get_args

from protocol.generation import GenerationRequest
from protocol.samplers import GenerationState, post_processor_mask

# The states of a request and of each of its jobs (one per image), the only values those columns hold:
# mypy refuses any other assigned or compared with `==` (strict_equality); tests/test_states.py checks
# what it can't see: the states in `in (...)` tuples and in the SQL.
RequestState = Literal["active", "done", "faulted", "cancelled"]
JobState = Literal["waiting", "processing", "done", "faulted", "cancelled"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
# A held reward (coordinator/escrow.py), and a spot check while it waits (coordinator/verification.py; once
# closed, its state says how, in words: "passed", "disputed", "no image to compare"…).
HoldState = Literal["held", "released", "forfeited"]
CheckWaiting = Literal["pending"]


@dataclass
class Account:
    id: int
    username: str
    public_key: str | None
    kudos: float
    trusted: bool
    created: float
    moderator: bool = False

    @property
    def display_name(self) -> str:
        return f"{self.username}#{self.id}"


@dataclass
class Worker:
    id: str
    name: str
    owner_id: int
    public_key: str | None
    models: list[str]
    max_pixels: int
    nsfw: bool
    threads: int
    img2img: bool
    painting: bool
    lora: bool
    post_processing: bool
    bridge_agent: str
    created: float
    last_seen: float
    maintenance: bool = False
    maintenance_msg: str | None = None
    info: str | None = None
    trusted: bool = False
    suspicion: int = 0
    missed_deadlines: int = 0
    requests_fulfilled: int = 0
    kudos_rewards: float = 0.0
    megapixelsteps: float = 0.0
    uptime: int = 0
    last_uptime_award: float = 0.0
    # The volunteer allowance (coordinator/economy.py): kudos it may still be minted for unfunded images,
    # as of `volunteer_at` (0: since the node registered, with nothing).
    volunteer_credit: float = 0.0
    volunteer_at: float = 0.0
    # Automatic maintenance (coordinator/roster.py): when it lifts (None: set by the owner, never lifts
    # by itself), and when the last missed deadline was counted (a crash's other jobs count with it).
    maintenance_until: float | None = None
    last_missed_at: float = 0.0
    # Measured speed (coordinator/estimates.py): per model, [megapixelsteps, seconds, results] decayed
    # sums of its own finished jobs; and when it last delivered, where its next job's work began at the earliest.
    speeds: dict[str, list[float]] = field(default_factory=dict)
    last_result_at: float = 0.0
    # What else the node declared in its pop (coordinator/capabilities.py): AI Horde's flags, then ours.
    controlnet: bool = False
    sdxl_controlnet: bool = False
    max_steps: int = 500
    lora_civitai: bool = False
    tis: bool = False
    hires_fix: bool = False
    censor: bool = False
    samplers: list[str] | None = None  # None: every AI Horde sampler
    approximate_samplers: dict[str, str] = field(default_factory=dict)  # name → what runs instead
    post_processors: list[str] | None = None  # None: every one (with post_processing)
    control_types: list[str] | None = None  # None: every one (with controlnet)
    annotators: list[str] | None = None  # control types it maps from a plain image (None: all it runs)
    sd2_controlnet: bool = False
    sdxl_tis: bool = False
    model_baselines: dict[str, str] = field(default_factory=dict)  # model → family (protocol/baselines.py)
    allow_unsafe_ip: bool = True  # its pop's allow_unsafe_ipaddr (coordinator/preferences.py)
    # Verified work (coordinator/verification.py): the hardware class it declares, and its record of checks.
    hardware: str = ""
    checks_passed: int = 0
    checks_failed: int = 0
    passes_since_failure: int = 0
    suspended: str | None = None  # why spot checks suspended it; only an operator lifts it (`trust`)
    last_canary: float = 0.0  # when it was last given a known-answer job (coordinator/canaries.py)

    @classmethod
    def new(cls, id: str, name: str, owner_id: int, now: float) -> "Worker":
        """A node as it first registers: it can do nothing until its pops declare what."""
        return cls(
            id=id,
            name=name,
            owner_id=owner_id,
            public_key=None,
            models=[],
            max_pixels=0,
            nsfw=False,
            threads=1,
            img2img=False,
            painting=False,
            lora=False,
            post_processing=False,
            bridge_agent="",
            created=now,
            last_seen=now,
        )


@dataclass
class QueueEntry:
    """What a waiting job demands of a node: the columns the pop query filters on."""

    job_id: str
    request_id: str
    models: list[str]
    tier: int
    rank: float
    pixels: int
    steps: int
    nsfw: bool
    img2img: bool
    painting: bool
    lora: bool
    post_processing: bool
    trusted_only: bool
    lora_civitai: bool = False  # a LoRA by CivitAI version id, or with a trigger to inject
    tis: bool = False
    controlnet: bool = False
    hires_fix: bool = False
    censor: bool = False
    sampler: str = "k_euler_a"  # lower case, as nodes declare them
    post_processors: int = 0  # a bit per AI Horde post-processor name (coordinator/capabilities.py)
    control_type: str = ""  # '' for none
    annotator: str = ""  # the control type whose map the node must make ('' with image_is_control, or none)
    workers: list[str] = field(default_factory=list)
    worker_blacklist: bool = False
    # Not stored: the nodes a requeued job failed on, so its wake-up goes to a node that may take it
    # (the pop itself checks the job's `previous_workers`).
    excluded: list[str] = field(default_factory=list)


@dataclass
class RequestRecord:
    id: str
    account_id: int
    created: float
    updated: float
    state: RequestState
    n: int
    kudos_per_image: float
    body: dict[str, Any]  # the GenerationRequest, without the source images
    source_image: str | None = None  # file name in the image store
    source_mask: str | None = None
    source_image_sha256: str | None = None
    source_mask_sha256: str | None = None
    client_agent: str = ""
    message: str | None = None
    tier: int = 1
    rank: float = 0.0
    remote: str = ""  # the requester's address, to pay nothing for a node's requests to itself
    webhook_sent: list[str] = field(default_factory=list)  # job ids (and "end") whose webhook POST was claimed
    sharedkey: str | None = None  # the hash of the shared key it spends through (coordinator/sharing.py)
    unsafe_ip: bool = False  # sent from an unsafe address by an untrusted requester (coordinator/preferences.py)
    purpose: str = ""  # "check": a spot check's re-run (coordinator/verification.py), never told to its node

    @cached_property
    def generation(self) -> GenerationRequest:
        """`body` parsed once per loaded record (a pop or a check would otherwise parse it again and again)."""
        return GenerationRequest.model_validate(self.body)


@dataclass
class JobRecord:
    id: str
    request_id: str
    index: int
    seed: str
    state: JobState
    model: str | None = None
    worker_id: str | None = None
    assigned_at: float | None = None
    deadline: float | None = None
    faults: int = 0
    restarts: int = 0
    image: str | None = None  # file name in the image store
    image_sha256: str | None = None
    result_state: GenerationState | None = None
    censored: bool = False
    gen_metadata: list[dict[str, Any]] = field(default_factory=list)
    signature: str | None = None
    worker_key: str | None = None
    job_document: dict[str, Any] | None = None
    job_signature: str | None = None
    reward: float = 0.0
    finished_at: float | None = None
    worker_name: str | None = None
    previous_workers: list[str] = field(default_factory=list)
    # Who asked ("account:ID" or "ip:ADDRESS"), and the kudos reserved for this image at submit: its price
    # when the requester's available balance funded it, else 0. Unfinished jobs are the reservations.
    requester: str = ""
    charge: float = 0.0


@dataclass
class WorkerCaps:
    """What a popping node can do, as the queue query needs it."""

    worker_id: str
    models: list[str]
    max_pixels: int
    nsfw: bool
    img2img: bool
    painting: bool
    lora: bool
    post_processing: bool
    trusted: bool
    blacklist: list[str] = field(default_factory=list)
    worker_name: str = ""
    require_upfront_kudos: bool = False  # only requests whose requester can pay now
    extra_slow: bool = False  # never given requests that asked for no slow workers
    max_steps: int = 500
    lora_civitai: bool = False
    tis: bool = False
    controlnet: bool = False
    hires_fix: bool = False
    censor: bool = False
    samplers: frozenset[str] | None = None  # None: any sampler
    post_processors: int | None = None  # a bit per post-processor it runs (None: any)
    control_types: frozenset[str] | None = None  # None: any
    annotators: frozenset[str] | None = None  # None: any
    # What depends on the baseline of the model a job runs on (coordinator/capabilities.py, `on_model`).
    sdxl_controlnet: bool = False
    sd2_controlnet: bool = False
    sdxl_tis: bool = False
    baselines: dict[str, str] = field(default_factory=dict)  # declared model → family
    # `on_model`'s answers by family, so a pop over hundreds of models derives each variant once.
    by_family: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    # The pop's preferences (coordinator/preferences.py): requests from unsafe addresses, and the requesters
    # ("account:ID") it serves first.
    allow_unsafe_ip: bool = True
    priority: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        worker: Worker,
        blacklist: list[str] | None = None,
        require_upfront_kudos: bool = False,
        extra_slow: bool = False,
    ) -> "WorkerCaps":
        return cls(
            worker_id=worker.id,
            worker_name=worker.name,
            models=worker.models,
            max_pixels=worker.max_pixels,
            nsfw=worker.nsfw,
            img2img=worker.img2img,
            painting=worker.painting,
            lora=worker.lora,
            post_processing=worker.post_processing,
            trusted=worker.trusted,
            allow_unsafe_ip=worker.allow_unsafe_ip,
            blacklist=[word.lower() for word in blacklist or []],
            require_upfront_kudos=require_upfront_kudos,
            extra_slow=extra_slow,
            max_steps=worker.max_steps,
            lora_civitai=worker.lora_civitai,
            tis=worker.tis,
            controlnet=worker.controlnet,
            hires_fix=worker.hires_fix,
            censor=worker.censor,
            samplers=None if worker.samplers is None else frozenset(worker.samplers),
            post_processors=None if worker.post_processors is None else post_processor_mask(worker.post_processors),
            control_types=None if worker.control_types is None else frozenset(worker.control_types),
            annotators=None if worker.annotators is None else frozenset(worker.annotators),
            sdxl_controlnet=worker.sdxl_controlnet,
            sd2_controlnet=worker.sd2_controlnet,
            sdxl_tis=worker.sdxl_tis,
            baselines=worker.model_baselines,
        )
