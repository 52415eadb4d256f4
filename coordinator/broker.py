"""The broker: one object that holds the coordinator's components, built from its services.

Handlers talk to these components; the components talk to storage. Nothing else does.
"""

from dataclasses import dataclass

from coordinator.auth import Authenticator
from coordinator.bank import Bank
from coordinator.dispatch import Dispatcher
from coordinator.ratelimit import RateLimiter
from coordinator.requesting import RequestDesk
from coordinator.results import ResultIntake
from coordinator.roster import Roster
from coordinator.services import Services
from coordinator.upkeep import Upkeep


@dataclass
class Broker:
    services: Services
    auth: Authenticator
    limiter: RateLimiter
    registration_limiter: RateLimiter
    roster: Roster
    requests: RequestDesk
    dispatcher: Dispatcher
    results: ResultIntake
    bank: Bank
    upkeep: Upkeep

    @classmethod
    def build(cls, services: Services) -> "Broker":
        config = services.config
        roster = Roster(services)
        return cls(
            services=services,
            auth=Authenticator(services.database, services.tokens, config.public_url),
            limiter=RateLimiter(config.rate_limits, config.rate_limiting),
            registration_limiter=RateLimiter({"register": config.registration_limit}, config.rate_limiting),
            roster=roster,
            requests=RequestDesk(services, roster),
            dispatcher=Dispatcher(services, roster),
            results=ResultIntake(services),
            bank=Bank(services),
            upkeep=Upkeep(services),
        )
