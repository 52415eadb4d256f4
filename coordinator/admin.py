"""The operator's administration commands (`horde-coordinator init|user|grant|trust|moderator|audit`): each
calls the components that hold the rules (the bank, moderation), never the database. `cli.py` parses them."""

import argparse
import sys
from collections.abc import Awaitable, Callable

from coordinator.app import open_services
from coordinator.bank import Bank
from coordinator.config import CoordinatorConfig
from coordinator.moderation import Moderation
from coordinator.services import Services


class NoData(Exception):
    """An administration command pointed at a data directory that does not exist."""


def require_data(config: CoordinatorConfig) -> None:
    # Creating a fresh directory here would mint new keys and an empty database that the running
    # coordinator never reads: an apikey printed from it would be refused.
    if not config.secret_path.exists():
        raise NoData(
            f"no coordinator data in {config.data_dir} (no {config.secret_path.name}); point at the folder "
            f"`serve` uses with --data-dir or HORDE_DATA_DIR, or create one with `horde-coordinator init`"
        )


async def admin(args: argparse.Namespace, config: CoordinatorConfig) -> int:
    """One administration command: it calls the components that hold the rules, never the database."""
    if args.command != "init":
        require_data(config)
    services = await open_services(config)
    try:
        return await ADMIN_COMMANDS[args.command](args, services)
    finally:
        await services.close()


async def init_data(args: argparse.Namespace, services: Services) -> int:
    print(f"data directory {services.config.data_dir}: coordinator key {services.identity.public_key.text()}")
    return await audit(args, services)


async def add_user(args: argparse.Namespace, services: Services) -> int:
    bank = Bank(services)
    account, apikey = await bank.open_account(args.name)
    if args.kudos:
        await bank.grant(account.id, args.kudos)
    print(f"created {account.display_name}\napikey: {apikey}")
    return 0


async def grant(args: argparse.Namespace, services: Services) -> int:
    bank = Bank(services)
    account = await bank.find("username", username(args.user))
    entry = await bank.grant(account.id, args.amount)
    print(f"ledger entry {entry.seq}: {args.amount:+} kudos for {account.display_name}")
    return 0


async def trust(args: argparse.Namespace, services: Services) -> int:
    worker = await Moderation(services).trust_worker(args.worker, not args.revoke)
    if worker is None:
        print(f"error: no worker named {args.worker}", file=sys.stderr)
        return 1
    print(f"worker {args.worker} is {'trusted' if worker.trusted else 'not trusted'}")
    return 0


async def moderator(args: argparse.Namespace, services: Services) -> int:
    account = await Bank(services).find("username", username(args.user))
    await Moderation(services).set_moderator(account.id, not args.revoke)
    print(f"{account.display_name} is {'no longer ' if args.revoke else ''}a moderator")
    return 0


async def audit(args: argparse.Namespace, services: Services) -> int:
    report = await Bank(services).audit()
    print(f"checked {report.entries} ledger entries; head {report.head_seq} {report.head_hash}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print("ledger OK" if report.ok else "ledger FAILED")
    return 0 if report.ok else 1


def username(text: str) -> str:
    """An account named as the API shows it (`name#id`) or by its name alone."""
    return text.split("#", 1)[0]


ADMIN_COMMANDS: dict[str, Callable[[argparse.Namespace, Services], Awaitable[int]]] = {
    "init": init_data,
    "user": add_user,
    "grant": grant,
    "trust": trust,
    "moderator": moderator,
    "audit": audit,
}
