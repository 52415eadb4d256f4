"""The broker: one object that holds the coordinator's components, built from its services.

Handlers talk to these components; the components talk to storage. Nothing else does.
"""

from dataclasses import dataclass

from coordinator.auth import Authenticator
from coordinator.bank import Bank
from coordinator.dispatch import Dispatcher
from coordinator.history import History
from coordinator.moderation import Moderation
from coordinator.outlook import Outlooks
from coordinator.ratelimit import RateLimiter
from coordinator.requesting import RequestDesk
from coordinator.results import ResultIntake
from coordinator.roster import Roster
from coordinator.services import Services
from coordinator.sharing import SharedKeys
from coordinator.stream import LiveProgress, ProgressBoard
from coordinator.styling import Styles
from coordinator.upkeep import Upkeep
from coordinator.webhooks import Webhooks


@dataclass
class Broker:
    services: Services
    auth: Authenticator
    limiter: RateLimiter
    registration_limiter: RateLimiter
    roster: Roster
    outlooks: Outlooks
    requests: RequestDesk
    dispatcher: Dispatcher
    results: ResultIntake
    bank: Bank
    moderation: Moderation
    upkeep: Upkeep
    live: LiveProgress
    webhooks: Webhooks
    history: History
    sharedkeys: SharedKeys
    styles: Styles

    @classmethod
    def build(cls, services: Services) -> "Broker":
        config = services.config
        roster = Roster(services)
        outlooks = Outlooks(services, roster)
        requests = RequestDesk(services, roster, outlooks)
        return cls(
            services=services,
            auth=Authenticator(services.database, services.tokens, config.public_url),
            limiter=RateLimiter(config.rate_limits, config.rate_limiting),
            registration_limiter=RateLimiter({"register": config.registration_limit}, config.rate_limiting),
            roster=roster,
            outlooks=outlooks,
            requests=requests,
            dispatcher=Dispatcher(services, roster),
            results=ResultIntake(services, outlooks.service_levels),
            bank=Bank(services),
            moderation=Moderation(services),
            upkeep=Upkeep(services),
            live=LiveProgress(services, requests, ProgressBoard()),
            webhooks=Webhooks(services, requests),
            history=History(services),
            sharedkeys=requests.sharing,
            styles=requests.styles,
        )
