"""Accounts, kudos, workers and network status models of the API."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protocol.extensions import ours

LENIENT = ConfigDict(extra="ignore")
USERNAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,50}$"
PUBLIC_KEY_MAX = 200  # `ed25519:` and 43 base64url characters, with room for another algorithm's name


class AccountCreate(BaseModel):
    """`POST /v2/accounts`. With `public_key` the request must be signed by that key."""

    model_config = LENIENT

    username: str = Field(pattern=USERNAME_PATTERN)
    public_key: str | None = Field(default=None, max_length=PUBLIC_KEY_MAX)


class AccountCreated(BaseModel):
    id: int
    username: str
    apikey: str
    public_key: str | None = None


class UserKudosDetails(BaseModel):
    accumulated: float = 0.0
    gifted: float = 0.0
    donated: float = 0.0
    admin: float = 0.0
    received: float = 0.0
    recurring: float = 0.0
    awarded: float = 0.0
    styled: float = 0.0


class ContributionsDetails(BaseModel):
    megapixelsteps: float = 0.0
    fulfillments: int = 0


class UsageDetails(BaseModel):
    megapixelsteps: float = 0.0
    requests: int = 0


class UserDetails(BaseModel):
    """`GET /v2/find_user`, `/v2/users/{id}` and `/v2/users` (the fields of AI Horde's `UserDetails` that
    reGen and ArtBot read)."""

    username: str
    id: int
    kudos: float
    concurrency: int = 30
    worker_count: int = 0
    worker_ids: list[str] = Field(default_factory=list)
    trusted: bool = False
    moderator: bool = False
    flagged: bool = False
    suspicious: int = 0
    pseudonymous: bool = False
    worker_invited: int = 0
    account_age: int = 0
    kudos_details: UserKudosDetails = Field(default_factory=UserKudosDetails)
    contributions: ContributionsDetails = Field(default_factory=ContributionsDetails)
    usage: UsageDetails = Field(default_factory=UsageDetails)
    public_key: str | None = ours()
    records: dict[str, Any] = Field(default_factory=dict)
    # Kudos its nodes earned that are held in escrow until their verification window closes (not in `kudos`
    # yet), and when the soonest of them is due (docs/security.md, "Verified work").
    held_kudos: float = ours(0.0)
    held_until: float | None = ours()


class ModifyUser(BaseModel):
    """`PUT /v2/users/{id}` by a moderator: the fields of AI Horde's `ModifyUserInput` this network has.
    Any other field of AI Horde's is refused (400) rather than ignored."""

    model_config = ConfigDict(extra="forbid")

    kudos: float | None = Field(default=None, allow_inf_nan=False, ge=-1e9, le=1e9)  # added (or, negative, removed)
    trusted: bool | None = None


class ModifiedUser(BaseModel):
    """The answer to `PUT /v2/users/{id}`: the account's name and what changed."""

    username: str
    new_kudos: float | None = None
    trusted: bool | None = None


class KudosTransfer(BaseModel):
    model_config = LENIENT

    username: str = Field(min_length=1, max_length=100)  # a name, or AI Horde's `name#id`
    # A JSON number only: "5" and true are mistakes, not amounts (strict refuses both; lax mode took them).
    amount: float = Field(gt=0, strict=True, allow_inf_nan=False)


class KudosTransferred(BaseModel):
    transferred: float


class WorkerKudosDetails(BaseModel):
    generated: float = 0.0
    uptime: int = 0


class TeamLite(BaseModel):
    """AI Horde's teams; this network has none, so every node's team is empty."""

    name: str | None = None
    id: str | None = None


class WorkerDetails(BaseModel):
    id: str
    name: str
    type: str = "image"
    online: bool
    requests_fulfilled: int
    kudos_rewards: float
    kudos_details: WorkerKudosDetails = Field(default_factory=WorkerKudosDetails)
    performance: str
    threads: int
    uptime: int
    maintenance_mode: bool
    paused: bool = False
    info: str | None = None
    nsfw: bool
    trusted: bool
    flagged: bool = False
    suspicious: int = 0
    uncompleted_jobs: int = 0
    megapixelsteps_generated: int = 0
    team: TeamLite = Field(default_factory=TeamLite)
    post_processing: bool = False
    # Ours: why the node's rewards are withheld (its suspicion), or null when they are not.
    rewards_withheld: str | None = ours()
    models: list[str]
    max_pixels: int
    img2img: bool
    painting: bool
    lora: bool
    controlnet: bool = False
    sdxl_controlnet: bool = False
    owner: str | None = None
    public_key: str | None = ours()
    bridge_agent: str = ""


class WorkerUpdate(BaseModel):
    model_config = LENIENT

    maintenance: bool | None = None
    maintenance_msg: str | None = Field(default=None, max_length=1000)
    info: str | None = Field(default=None, max_length=1000)
    name: str | None = Field(default=None, min_length=1, max_length=100)


class ModelStatus(BaseModel):
    name: str
    count: int
    performance: float
    queued: float
    jobs: int
    eta: int
    type: str = "image"
    # Ours: measured service levels over the last 30 minutes, in seconds (None: no result yet).
    time_to_first_image_p50: float | None = ours()
    time_to_first_image_p95: float | None = ours()
    time_to_done_p50: float | None = ours()
    time_to_done_p95: float | None = ours()


class Heartbeat(BaseModel):
    message: str = "OK"
    version: str


class Performance(BaseModel):
    queued_requests: int
    queued_megapixelsteps: float
    past_minute_megapixelsteps: float
    worker_count: int
    thread_count: int
    # AI Horde's counters for what this network does not serve (text, interrogation): always 0.
    queued_text_requests: int = 0
    text_worker_count: int = 0
    text_thread_count: int = 0
    queued_tokens: float = 0.0
    past_minute_tokens: float = 0.0
    queued_forms: float = 0.0
    interrogator_count: int = 0
    interrogator_thread_count: int = 0
    # Ours: the online nodes' measured speed together, and when the queue is predicted to be empty.
    megapixelsteps_per_second: float = ours(0.0)
    eta: int = ours(0)


class PeriodTotals(BaseModel):
    images: int
    ps: int


class ImageTotals(BaseModel):
    minute: PeriodTotals
    hour: PeriodTotals
    day: PeriodTotals
    month: PeriodTotals
    total: PeriodTotals


class CoordinatorInfo(BaseModel):
    """`GET /v2/coordinator`: who this coordinator is (our extension)."""

    public_key: str
    version: str
    features: list[str]
