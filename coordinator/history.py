"""The network's last day, minute by minute: images, megapixelsteps and faults (the status page's charts)."""

from coordinator.services import Services
from protocol.history import HISTORY_MINUTES, MinuteStats, NetworkHistory


class History:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def last_day(self) -> NetworkHistory:
        now_minute = int(self.services.clock() // 60)
        async with self.services.database.reader() as tx:
            made, faulted = await tx.minutes_since(now_minute - HISTORY_MINUTES + 1)
        minutes: dict[int, MinuteStats] = {}
        for row in made:
            minutes[row["minute"]] = MinuteStats(
                minute=row["minute"], images=int(row["images"]), megapixelsteps=round(float(row["ps"]), 3), faults=0
            )
        for row in faulted:
            entry = minutes.setdefault(
                row["minute"], MinuteStats(minute=row["minute"], images=0, megapixelsteps=0, faults=0)
            )
            entry.faults = int(row["faults"])
        return NetworkHistory(now_minute=now_minute, minutes=[minutes[m] for m in sorted(minutes)])
