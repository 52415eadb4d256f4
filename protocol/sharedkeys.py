"""Shared keys (`/v2/sharedkeys`): AI Horde's `SharedKeyInput` and `SharedKeyDetails`.

A shared key is an apikey its owner hands to someone else: requests sent with it spend the owner's
kudos, within the key's limits (a kudos total, an expiry, the largest image and step count per image).
Field names, bounds and defaults are AI Horde's; -1 means "no limit" as there.
"""

from pydantic import BaseModel, ConfigDict, Field

from protocol.generation import NullMeansDefault

NAME_MAX = 255  # AI Horde's
KUDOS_MAX = 50_000_000  # AI Horde's bound on a key's kudos limit
UNLIMITED = -1


class SharedKeyInput(NullMeansDefault):
    """`PUT /v2/sharedkeys` (create) and `PATCH /v2/sharedkeys/{id}` (only the fields sent change)."""

    model_config = ConfigDict(extra="ignore")

    kudos: int = Field(default=5000, ge=UNLIMITED, le=KUDOS_MAX)
    expiry: int = Field(default=UNLIMITED, ge=UNLIMITED, le=36500)  # days from now; -1: never
    name: str | None = Field(default=None, max_length=NAME_MAX)
    max_image_pixels: int = Field(default=UNLIMITED, ge=UNLIMITED, le=3072 * 3072)
    max_image_steps: int = Field(default=UNLIMITED, ge=UNLIMITED, le=500)
    max_text_tokens: int = Field(default=UNLIMITED, ge=UNLIMITED, le=500_000)  # this network makes no text


class SharedKeyDetails(BaseModel):
    """What `GET`, `PUT` and `PATCH` answer. `expiry` is the moment it expires (ISO 8601, UTC), or null."""

    id: str
    username: str
    name: str | None = None
    kudos: int
    expiry: str | None = None
    utilized: int
    max_image_pixels: int
    max_image_steps: int
    max_text_tokens: int


class SimpleResponse(BaseModel):
    """AI Horde's `SimpleResponse`: the answer to a deletion."""

    message: str = "OK"
