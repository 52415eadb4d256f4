"""The network's recent history (`GET /v2/status/history`, ours): what the status page charts."""

from pydantic import BaseModel

HISTORY_MINUTES = 24 * 60


class MinuteStats(BaseModel):
    minute: int  # Unix time // 60
    images: int
    megapixelsteps: float
    faults: int


class NetworkHistory(BaseModel):
    """Minutes of the last day with any activity, oldest first (a minute left out had none)."""

    now_minute: int
    minutes: list[MinuteStats]
