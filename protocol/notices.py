"""Models of AI Horde's informational endpoints: news, modes, documents, per-model statistics."""

from pydantic import BaseModel, Field


class Newspiece(BaseModel):
    date_published: str
    newspiece: str
    importance: str = "Information"
    tags: list[str] = Field(default_factory=list)
    title: str | None = None
    more_info_urls: list[str] = Field(default_factory=list)


class HordeModes(BaseModel):
    """`GET /v2/status/modes`. Without an operator's apikey AI Horde shows the same three flags."""

    maintenance_mode: bool = False
    invite_only_mode: bool = False
    raid_mode: bool = False


class HordeDocument(BaseModel):
    """`GET /v2/documents/{terms,privacy,sponsors}`: the text in the format asked for."""

    html: str | None = None
    markdown: str | None = None


class ImageModelStats(BaseModel):
    """`GET /v2/stats/img/models`: images made per model, per period."""

    day: dict[str, int]
    month: dict[str, int]
    total: dict[str, int]
