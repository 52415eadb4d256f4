"""Live progress (our extension): a node's step report, and the events of a request's stream.

`POST /v2/generate/progress` is optional and rate-limited: AI Horde workers never send it and lose
nothing. `GET /v2/generate/stream/{id}` is a server-sent-events stream; each event's `data` is one
JSON object:

| event      | data                                                     |
| ---------- | -------------------------------------------------------- |
| `check`    | a `RequestCheck`, whenever anything `check` shows changed |
| `progress` | a `StepProgress`: a job's step as its node last reported  |
| `image`    | a `Generation`, once per image as it finishes             |
| `end`      | the final `RequestCheck`; the stream then closes          |
"""

from pydantic import BaseModel, ConfigDict, Field

LENIENT = ConfigDict(extra="ignore")
MAX_STEPS = 10_000  # far past any request's steps (hires fix doubles them); a bound on what is stored


class ProgressReport(BaseModel):
    """`POST /v2/generate/progress` body: the node is at `step` of `total` on job `id`."""

    model_config = LENIENT

    id: str = Field(min_length=1, max_length=128)
    step: int = Field(ge=0, le=MAX_STEPS)
    total: int = Field(ge=1, le=MAX_STEPS)


class ProgressAccepted(BaseModel):
    """`accepted` is false when the report came sooner than the coordinator keeps them (it is dropped)."""

    accepted: bool


class StepProgress(BaseModel):
    job: str
    index: int
    step: int
    total: int


STREAM_EVENTS = ("check", "progress", "image", "end")
