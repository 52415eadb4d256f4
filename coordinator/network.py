"""The network's state as anyone may read it: the coordinator's identity and modes, the models online
nodes serve, queue and throughput, and images made per period and per model. Every figure is measured
(stats rows written as results are stored, the online nodes' own speeds; coordinator/outlook.py holds
the predictions)."""

from coordinator.errors import bad_request
from coordinator.outlook import Outlooks
from coordinator.roster import Roster
from coordinator.services import Services
from protocol.accounts import CoordinatorInfo, Heartbeat, ImageTotals, ModelStatus, Performance, PeriodTotals
from protocol.errors import RC
from protocol.notices import HordeModes, ImageModelStats

FEATURES = [
    "long-poll-pop",
    "long-poll-check",
    "signed-requests",
    "signed-jobs",
    "signed-results",
    "signed-ledger-head",
    "uploads",
    "progress-stream",
    "step-progress",
    "signed-webhooks",
    "metrics",
]
PERIOD_MINUTES = {"minute": 1, "hour": 60, "day": 60 * 24, "month": 60 * 24 * 30, "total": 10**9}
PERIOD_DAYS = {"day": 1, "month": 30, "total": 10**6}
MODEL_KINDS = ("image", "all")  # AI Horde's `type` of model; text models: none here
# With no model reference here every model is `known`, so `custom` lists none.
MODEL_STATES = ("known", "custom", "all")
DAY_SECONDS = 86400


class Network:
    def __init__(self, services: Services, roster: Roster, outlooks: Outlooks) -> None:
        self.services = services
        self.roster = roster
        self.outlooks = outlooks

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(version=self.services.config.version)

    def coordinator(self) -> CoordinatorInfo:
        """Who this coordinator is: the key it signs jobs and the ledger head with, and what it offers."""
        return CoordinatorInfo(
            public_key=self.services.identity.public_key.text(), version=self.services.config.version, features=FEATURES
        )

    def modes(self) -> HordeModes:
        return HordeModes(invite_only_mode=not self.services.config.open_registration)

    async def models(self, kind: str = "image", least: int = 0, most: int = 10**6) -> list[ModelStatus]:
        """AI Horde's filters: `kind` of model, and the number of online nodes serving it (`least` to `most`)."""
        if kind not in MODEL_KINDS:
            return []
        return [model for model in await self.outlooks.model_statuses() if least <= model.count <= most]

    async def model(self, name: str) -> list[ModelStatus]:
        """One model's status, as AI Horde's list of 0 or 1."""
        return [model for model in await self.outlooks.model_statuses() if model.name == name]

    async def performance(self) -> Performance:
        workers = await self.roster.online()
        now_minute = int(self.services.clock() // 60)
        async with self.services.database.reader() as tx:
            queued_requests = await tx.queued_requests()
            pixelsteps = await tx.queued_pixelsteps()
            _, past_minute = await tx.stats_since(now_minute - 1)
        speed, eta = await self.outlooks.network()
        return Performance(
            queued_requests=queued_requests,
            queued_megapixelsteps=round(pixelsteps / 1e6, 2),
            past_minute_megapixelsteps=round(past_minute, 2),
            worker_count=len(workers),
            thread_count=sum(w.threads for w in workers),
            megapixelsteps_per_second=speed,
            eta=eta,
        )

    async def totals(self) -> ImageTotals:
        """Images and pixelsteps (AI Horde's unit) made in each period up to now."""
        now_minute = int(self.services.clock() // 60)
        periods = {}
        async with self.services.database.reader() as tx:
            for name, minutes in PERIOD_MINUTES.items():
                images, ps = await tx.stats_since(now_minute - minutes + 1)
                periods[name] = PeriodTotals(images=images, ps=int(ps * 1_000_000))
        return ImageTotals(**periods)

    async def model_images(self, state: str = "known") -> ImageModelStats:
        """Images finished per model: the past day, the past 30 days, and ever."""
        if state not in MODEL_STATES:
            raise bad_request(RC.VALIDATION, "model_state must be known, custom or all.", {"model_state": "unknown"})
        today = int(self.services.clock() // DAY_SECONDS)
        async with self.services.database.reader() as tx:
            periods = {name: await tx.model_stats_since(today - days + 1) for name, days in PERIOD_DAYS.items()}
        if state == "custom":
            periods = {name: {} for name in periods}
        return ImageModelStats(**periods)
