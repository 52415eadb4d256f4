"""The shared parts every coordinator component works with, built once per process."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.config import CoordinatorConfig
from coordinator.events import EventHub
from coordinator.images import ImageStore
from coordinator.storage import Database
from coordinator.tokens import Tokens
from protocol.keys import Identity


@dataclass
class Services:
    config: CoordinatorConfig
    database: Database
    images: ImageStore
    identity: Identity
    tokens: Tokens
    hub: EventHub = field(default_factory=EventHub)
    clock: Callable[[], float] = time.time
