"""Accounts as the API shows them (`/v2/users`, `/v2/find_user`) and who may open one
(`POST /v2/accounts`). Their kudos, transfers and ledger are the bank's (coordinator/bank.py)."""

from coordinator.auth import Caller
from coordinator.bank import Bank
from coordinator.errors import HordeError, bad_request, unauthorized
from coordinator.ratelimit import RateLimiter
from coordinator.roster import Roster
from coordinator.services import Services
from coordinator.storage.records import Account
from protocol.accounts import AccountCreate, AccountCreated, ContributionsDetails, UserDetails
from protocol.errors import RC

USERS_PAGE = 25  # AI Horde's page size for GET /v2/users
USER_ORDERS = ("kudos", "age")


class Users:
    def __init__(self, services: Services, bank: Bank, roster: Roster, limiter: RateLimiter) -> None:
        self.services = services
        self.bank = bank
        self.roster = roster
        self.limiter = limiter  # registrations per address

    def check_open(self) -> None:
        """Refuse before anything else is read when the operator closed registration."""
        if not self.services.config.open_registration:
            raise HordeError(403, RC.REGISTRATION_CLOSED, "Open registration is switched off on this coordinator.")

    async def register(self, caller: Caller, body: AccountCreate, address: str) -> AccountCreated:
        """A new account (and its apikey, shown once). A public key is registered only with proof that the
        caller holds it: the request signed with that very key."""
        if body.public_key is not None and caller.key_text != body.public_key:
            raise unauthorized(
                "KeyNotProven", "Registering a public key needs a request signed with that key (proof of possession)."
            )
        self.limiter.check("register", address)
        account, apikey = await self.bank.open_account(body.username, body.public_key)
        return AccountCreated(
            id=account.id, username=account.display_name, apikey=apikey, public_key=account.public_key
        )

    async def details(self, account: Account) -> UserDetails:
        """What AI Horde shows of an account, with its online workers' contributions. Who is online is the
        roster's word; their counters are read fresh (the roster's entries change only when a node pops, so
        the image a node submitted since its last pop would be missing)."""
        online = {worker.id for worker in await self.roster.online() if worker.owner_id == account.id}
        async with self.services.database.reader() as tx:
            workers = [worker for worker in await tx.list_workers(account.id) if worker.id in online] if online else []
        held = await self.bank.held(account.id)
        contributions = ContributionsDetails(
            megapixelsteps=round(sum(w.megapixelsteps for w in workers), 2),
            fulfillments=sum(w.requests_fulfilled for w in workers),
        )
        return UserDetails(
            username=account.display_name,
            id=account.id,
            kudos=account.kudos,
            worker_count=len(workers),
            worker_ids=[w.id for w in workers],
            trusted=account.trusted,
            public_key=account.public_key,
            concurrency=self.services.config.concurrency,
            moderator=account.moderator,
            account_age=max(int(self.services.clock() - account.created), 0),
            contributions=contributions,
            held_kudos=held.amount,
            held_until=held.next_release,
        )

    async def by_id(self, account_id: int) -> UserDetails:
        return await self.details(await self.bank.find("id", account_id))

    async def page(self, number: int, order: str) -> list[UserDetails]:
        """AI Horde's `page` (from 1, USERS_PAGE accounts each) by `order`: kudos (the most first) or age
        (the oldest first)."""
        if order not in USER_ORDERS:
            raise bad_request(RC.VALIDATION, "sort must be kudos or age.", {"sort": "kudos or age"})
        async with self.services.database.reader() as tx:
            accounts = await tx.list_accounts((number - 1) * USERS_PAGE, USERS_PAGE, order)
        return [await self.details(account) for account in accounts]
