"""The shared parts every coordinator component works with, built once per process."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.config import CoordinatorConfig
from coordinator.events import EventHub
from coordinator.images import Images
from coordinator.storage import Database
from coordinator.tokens import Tokens
from protocol.keys import Identity


@dataclass
class Services:
    config: CoordinatorConfig
    database: Database
    images: Images
    identity: Identity
    tokens: Tokens
    hub: EventHub = field(default_factory=EventHub)
    clock: Callable[[], float] = time.time

    async def close(self) -> None:
        try:
            await self.images.close()
        finally:
            await self.database.close()
