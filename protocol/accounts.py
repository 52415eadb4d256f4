"""Accounts, kudos, workers and network status models of the API."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class UserDetails(BaseModel):
    """`GET /v2/find_user` and `/v2/users/{id}` (a subset of AI Horde's `UserDetails`)."""

    username: str
    id: int
    kudos: float
    concurrency: int = 30
    worker_count: int = 0
    worker_ids: list[str] = Field(default_factory=list)
    trusted: bool = False
    public_key: str | None = None
    records: dict[str, Any] = Field(default_factory=dict)


class KudosTransfer(BaseModel):
    model_config = LENIENT

    username: str = Field(min_length=1, max_length=100)  # a name, or AI Horde's `name#id`
    # A JSON number only: "5" and true are mistakes, not amounts (strict refuses both; lax mode took them).
    amount: float = Field(gt=0, strict=True, allow_inf_nan=False)


class KudosTransferred(BaseModel):
    transferred: float


class WorkerDetails(BaseModel):
    id: str
    name: str
    type: str = "image"
    online: bool
    requests_fulfilled: int
    kudos_rewards: float
    performance: str
    threads: int
    uptime: int
    maintenance_mode: bool
    info: str | None = None
    nsfw: bool
    trusted: bool
    flagged: bool = False
    suspicious: int = 0
    # Ours: why the node's rewards are withheld (its suspicion), or null when they are not.
    rewards_withheld: str | None = None
    models: list[str]
    max_pixels: int
    img2img: bool
    painting: bool
    lora: bool
    owner: str | None = None
    public_key: str | None = None
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


class Heartbeat(BaseModel):
    message: str = "OK"
    version: str


class Performance(BaseModel):
    queued_requests: int
    queued_megapixelsteps: float
    past_minute_megapixelsteps: float
    worker_count: int
    thread_count: int


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
