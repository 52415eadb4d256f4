"""Who is trusted, and who may say so. The operator (`horde-coordinator`, never over HTTP) names
moderators and trusts workers; moderators edit other accounts (`PUT /v2/users/{id}`), as AI Horde's
moderators do. What they may change is `ModifyUser`'s fields: kudos (through the ledger, as an
operator grant is) and the trusted flag."""

from coordinator.auth import Caller, require_account
from coordinator.errors import HordeError, not_found
from coordinator.services import Services
from coordinator.storage.records import Worker
from protocol.accounts import ModifiedUser, ModifyUser
from protocol.errors import RC


class Moderation:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def set_moderator(self, account_id: int, moderator: bool) -> None:
        """The operator's word (the CLI): never reachable over HTTP."""
        async with self.services.database.transaction() as tx:
            await tx.set_account_moderator(account_id, moderator)

    async def trust_worker(self, name: str, trusted: bool) -> Worker | None:
        """The operator's word on a worker (by name, any case); None if there is none of that name.
        Trusting it clears its suspicion, so its withheld rewards resume (coordinator/economy.py), and lifts a
        suspension for failed spot checks (coordinator/verification.py)."""
        async with self.services.database.transaction() as tx:
            worker = await tx.worker_by("name", name)
            if worker is None:
                return None
            worker.trusted = trusted
            if trusted:
                worker.suspicion = 0
                worker.suspended = None
            await tx.save_worker(worker)
        return worker

    async def modify_user(self, caller: Caller, account_id: int, change: ModifyUser) -> ModifiedUser:
        editor = require_account(caller)
        if not editor.moderator:
            raise HordeError(403, RC.NOT_MODERATOR, "Only a moderator may change another account.")
        async with self.services.database.transaction() as tx:
            account = await tx.account_by("id", account_id)
            if account is None:
                raise not_found("user", RC.USER_NOT_FOUND)
            answer = ModifiedUser(username=account.display_name)
            if change.kudos:
                source, target = (None, account_id) if change.kudos > 0 else (account_id, None)
                reference = f"moderator {editor.display_name}"
                await tx.move_kudos("admin", source, target, abs(change.kudos), reference, self.services.clock())
                answer.new_kudos = round(account.kudos + change.kudos, 2)
            if change.trusted is not None:
                await tx.set_account_trusted(account_id, change.trusted)
                answer.trusted = change.trusted
        return answer
