"""The broker: one object that holds the coordinator's components, built from its services.

Handlers talk to these components; the components talk to storage. Nothing else does.
"""

from dataclasses import dataclass

from coordinator.auth import Authenticator
from coordinator.bank import Bank
from coordinator.dispatch import Dispatcher
from coordinator.gallery import Gallery
from coordinator.history import History
from coordinator.moderation import Moderation
from coordinator.network import Network
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
from coordinator.users import Users
from coordinator.webhooks import Webhooks
from coordinator.workers import WorkerDesk


@dataclass
class Broker:
    services: Services
    auth: Authenticator
    limiter: RateLimiter
    roster: Roster
    workers: WorkerDesk
    outlooks: Outlooks
    network: Network
    requests: RequestDesk
    dispatcher: Dispatcher
    results: ResultIntake
    bank: Bank
    users: Users
    moderation: Moderation
    upkeep: Upkeep
    live: LiveProgress
    webhooks: Webhooks
    history: History
    gallery: Gallery
    sharedkeys: SharedKeys
    styles: Styles

    @classmethod
    def build(cls, services: Services) -> "Broker":
        config = services.config
        roster = Roster(services)
        outlooks = Outlooks(services, roster)
        requests = RequestDesk(services, roster, outlooks)
        bank = Bank(services)
        registrations = RateLimiter({"register": config.registration_limit}, config.rate_limiting)
        return cls(
            services=services,
            auth=Authenticator(services.database, services.tokens, config.public_url),
            limiter=RateLimiter(config.rate_limits, config.rate_limiting),
            roster=roster,
            workers=WorkerDesk(services),
            outlooks=outlooks,
            network=Network(services, roster, outlooks),
            requests=requests,
            dispatcher=Dispatcher(services, roster),
            results=ResultIntake(services, outlooks.service_levels),
            bank=bank,
            users=Users(services, bank, roster, registrations),
            moderation=Moderation(services),
            upkeep=Upkeep(services),
            live=LiveProgress(services, requests, ProgressBoard()),
            webhooks=Webhooks(services, requests),
            history=History(services),
            gallery=Gallery(services),
            sharedkeys=requests.sharing,
            styles=requests.styles,
        )
